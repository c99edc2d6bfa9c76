"""The stages of a transfer: one table here, one module per stage (its `body`, and the line it prints).

    source_adapter   train θs on the task data (only when no source adapter is given)
    discriminator    train the yes/no adapter on real inputs vs source-generated ones (only when none is given)
    synthesis        generate -> filter until `num_samples` are accepted
    labels           the teacher (source base + θs) answers every accepted input
    target_adapter   distil into a fresh θt on the target base
    evaluation       source+θs / target / target+θt on held-out data

Each row of `STAGES` says when the stage runs, which artifacts and inputs it reads, which settings its result
depends on (its fingerprint, see `pipeline`), which bases it uses, and what a change of those settings does: the
data owner's adapters (source adapter, discriminator) are kept, as a given adapter would be, with a line naming the
change; the data stages (synthesis, labels) are never redone silently: the run stops (a change of the labels'
selection alone makes the selection again from the stored answers); the distillation and the evaluation are
redone. Settings that change only speed (inference batch of the filter, `keep_models_loaded`, logging) are in no
fingerprint; the candidate budget is not either, since a finished stage did not run out of it.

A stage module's `body(run, out)` reads through `run` (the `Transfer`: its config, run directory, model pool and seeds) and
writes its artifacts into the folder `out` — on the main process only; every process runs it. Its `summary(dirs)`,
where it has one, is the line printed when it finishes. What the stages share (a training that resumes, the
`DistillationConfig` every training starts from, the model a generating stage leases) is in `common`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import rundir
from ..config import TransferConfig
from . import discriminator, evaluation, labels, source_adapter, synthesis, target_adapter
from .common import training_args

__all__ = ["STAGES", "STAGE_NAMES", "Stage", "stage", "training_args"]


# -- the table ------------------------------------------------------------------------------------------------------

_SEED = ("dtype", "seed")
_ADAPTER = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "num_virtual_tokens",
            "prompt_tuning_init_text")
_TRAINING = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length")


def _training_kwargs(c: TransferConfig) -> tuple[str, ...]:
    """The user's further training fields are part of what made a training (left out when there are none)."""
    return ("training_kwargs",) if c.training_kwargs else ()
_SAMPLING = ("num_seeds", "generation_batch_size", "max_candidate_tokens", "max_candidate_chars", "do_sample",
             "temperature", "top_p", "top_k")


def _backend(c: TransferConfig) -> tuple[str, ...]:
    """The generation backend is part of what made a stage's output (other sampling streams) where it is not HF."""
    return ("generation_backend",) if c.generation_backend != "hf" else ()


@dataclass
class Stage:
    name: str
    body: Callable  # body(run, out)
    needed: Callable[[TransferConfig], bool]  # False: the user gave its artifact, or the run does not need it
    reads: Callable[[TransferConfig], tuple[str, ...]]  # artifacts of other stages (or the user's, when given)
    inputs: tuple[str, ...]  # files and seeds it reads: keys of `Transfer.input_hashes`
    settings: Callable[[TransferConfig], tuple[str, ...]]  # what its result depends on: TransferConfig names
    bases: Callable[[TransferConfig], set[str]]
    on_change: str  # when its settings changed: "keep" it (and say so), "redo" it, or "stop" the run before work
    resumable: bool = False  # keeps its `.incomplete` folder (training checkpoints) for the next start
    # Settings that only choose among what the stage stores before choosing (`rundir.LABELLED`): a stage made
    # otherwise but for them is made again from that store, not from the start (`Transfer.plan`).
    selection: tuple[str, ...] = ()
    summary: Callable[[rundir.RunDir], str] | None = None


STAGES: tuple[Stage, ...] = (
    Stage("source_adapter", source_adapter.body,
          needed=lambda c: not c.source_adapter,
          reads=lambda c: (),
          inputs=("train_file",),
          settings=lambda c: ("source_model", "prompt_template", "source_peft_type", *_ADAPTER, "source_learning_rate",
                              "source_epochs", *_TRAINING, *_training_kwargs(c), *_SEED),
          bases=lambda c: {c.source_model},
          on_change="keep", resumable=True),
    Stage("discriminator", discriminator.body,
          needed=lambda c: c.filter_mode == "discriminator" and not c.discriminator_adapter,
          reads=lambda c: (),
          inputs=("train_file",),
          settings=lambda c: ("source_model", "discriminator_base", "task_name", *_SAMPLING, "discriminator_negatives",
                              *(("discriminator_format_negatives",) if c.discriminator_format_negatives else ()),
                              *_ADAPTER[:4], "discriminator_learning_rate", "discriminator_epochs", *_TRAINING[:2],
                              *_training_kwargs(c), *_SEED),
          bases=lambda c: {c.source_model, c.discriminator_base},
          on_change="keep", resumable=True, summary=discriminator.summary),
    Stage("synthesis", synthesis.body,
          needed=lambda c: True,
          reads=lambda c: (("discriminator",) if c.filter_mode == "discriminator" else ())
          + (("source_adapter",) if c.generate_with_source_adapter else ()),
          inputs=("seeds", "eval_file"),
          settings=lambda c: ("generator", "filter_mode", "task_name", "filter_margin", "target_false_accept_rate",
                              "num_samples", *_SAMPLING, "leak_threshold",
                              *(("near_duplicate_similarity",) if c.near_duplicate_similarity is not None else ()),
                              *(("generate_with_source_adapter",) if c.generate_with_source_adapter else ()),
                              *(("discriminator_base",) if c.filter_mode == "discriminator" else ()),
                              "compute_mmd", "embedding_model", "plot_projection", *_SEED, *_backend(c)),
          bases=lambda c: {c.generator} | ({c.discriminator_base} if c.filter_mode == "discriminator" else set()),
          on_change="stop", summary=synthesis.summary),
    Stage("labels", labels.body,
          needed=lambda c: True,
          reads=lambda c: ("synthesis", "source_adapter"),
          inputs=(),
          settings=lambda c: ("source_model", "prompt_template", "label_max_new_tokens", "label_do_sample",
                              "answer_stop", "generation_batch_size", *_SEED, *_backend(c))
          + (("label_votes", "label_temperature", "label_min_agreement") if c.label_votes > 1 else ())
          + (("label_selection_ratio",) if c.label_selection_ratio < 1 else ())
          + (("label_selection_strata",) if c.label_selection_ratio < 1 and c.label_selection_strata > 1 else ()),
          bases=lambda c: {c.source_model},
          on_change="stop", selection=labels.SELECTION, summary=labels.summary),
    Stage("target_adapter", target_adapter.body,
          needed=lambda c: True,
          reads=lambda c: ("labels",) + (("source_adapter",) if target_adapter.reads_teacher(c) else ()),
          inputs=(),
          settings=lambda c: ("target_model", "prompt_template", "peft_type", *_ADAPTER, "kd_loss", "learning_rate",
                              "num_train_epochs", *_TRAINING, *_training_kwargs(c), *_SEED)
          + (("source_model", "sequence_weight", "beta", "kd_temperature") if c.kd_loss in target_adapter.TOKEN_KD else ())
          + (("source_model", "token_selection_ratio") if c.token_selection_ratio < 1 else ()),
          bases=lambda c: {c.target_model} | ({c.source_model} if target_adapter.reads_teacher(c) else set()),
          on_change="redo", resumable=True),
    Stage("evaluation", evaluation.body,
          needed=lambda c: bool(c.eval_file) or bool(c.evaluation_backend == "lm_eval" and c.lm_eval_tasks),
          reads=lambda c: ("target_adapter", "source_adapter"),
          inputs=("eval_file",),
          settings=lambda c: ("source_model", "target_model", "prompt_template", "answer_stop", "label_max_new_tokens",
                              "generation_batch_size", "max_eval_samples", "dtype")
          + (("evaluation_backend", "lm_eval_tasks", "lm_eval_include_path", "lm_eval_num_fewshot", "lm_eval_limit")
             if c.evaluation_backend == "lm_eval" else ()),
          bases=lambda c: {c.source_model, c.target_model},
          on_change="redo", summary=evaluation.summary),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"Unknown stage {name!r}: use one of {STAGE_NAMES}.")
