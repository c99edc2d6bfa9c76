"""The stages of a transfer: one table, one function per stage.

    source_adapter   train θs on the task data (only when no source adapter is given)
    discriminator    train the yes/no adapter on real inputs vs source-generated ones (only when none is given)
    synthesis        generate -> filter until `num_samples` are accepted
    labels           the teacher (source base + θs) answers every accepted input
    target_adapter   distil into a fresh θt on the target base
    evaluation       source+θs / target / target+θt on held-out data

Each row of `STAGES` says when the stage runs, which artifacts and inputs it reads, which settings its result
depends on (its fingerprint, see `pipeline`), which bases it uses, and what a change of those settings does: the
data owner's adapters (source adapter, discriminator) are kept, as a given adapter would be, with a line naming the
change; the data stages (synthesis, labels) are never redone silently: the run stops; the distillation and the
evaluation are redone. Settings
that change only speed (inference batch of the filter, `keep_models_loaded`, logging) are in no fingerprint; the
candidate budget is not either, since a finished stage did not run out of it.

A body `fn(run, out)` reads through `run` (the `Transfer`: its config, run directory, model pool and seeds) and
writes its artifacts into the folder `out` — on the main process only; every process runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from . import rundir
from .config import TransferConfig
from .data import load_examples, task_prompt
from .distillation import LINEAGE_FILE
from .distributed import is_main_process, map_across_processes, wait_for_everyone
from .errors import UserError
from .modeling import peft_config_from
from .rundir import read_json, write_json
from .tracking import prefix_trainer_logs, run_name

logger = logging.getLogger(__name__)


# -- the bodies -----------------------------------------------------------------------------------------------------

def _train(run, out: str, trainer, stage: str) -> None:
    """Train, resuming from the last checkpoint in the stage's folder when a killed run left one; its logs reach the
    trackers under the stage's name (`tracking`).

    The Trainer prints its closing summary (`{'train_runtime': ...}`) through its progress or printer callback; the
    stage's own line says what a user needs, so that dict is dropped (loss logs every `logging_steps` stay).
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    for kind in (ProgressCallback, PrinterCallback):
        if any(type(c) is kind for c in trainer.callback_handler.callbacks):
            trainer.remove_callback(kind)
            trainer.add_callback(_without_summary(kind)())
    prefix_trainer_logs(trainer, stage, run.dirs.tracking)
    folder = rundir.RunDir.trainer(out)
    last = get_last_checkpoint(folder) if os.path.isdir(folder) else None
    if last and is_main_process():
        logger.info("  resuming training from %s", os.path.relpath(last, run.config.output_dir))
    trainer.train(resume_from_checkpoint=last)


def _without_summary(kind):
    class WithoutSummary(kind):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "train_runtime" not in logs:
                super().on_log(args, state, control, logs=logs, **kwargs)

    return WithoutSummary


def source_adapter(run, out: str) -> None:
    from datasets import Dataset

    from .distillation import DistillationTrainer

    cfg = run.config
    args = training_args(cfg, rundir.RunDir.trainer(out), show_progress=run.show_progress,
                         learning_rate=cfg.source_learning_rate, num_train_epochs=cfg.source_epochs)
    peft_config = peft_config_from(cfg, cfg.source_model, peft_type=cfg.source_peft_type)
    with run.pool.lease(cfg.source_model) as lease:
        rows = [{"prompt": task_prompt(lease.tokenizer, e["input"], cfg.prompt_template), "completion": " " + e["target"]}
                for e in load_examples(cfg.train_file, require_target=True, what="train_file")]
        trainer = DistillationTrainer(model=lease.model, args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=lease.tokenizer, peft_config=peft_config)
        lease.model = trainer.model
        _train(run, out, trainer, "source_adapter")
        if is_main_process():
            trainer.model.save_pretrained(out)
            shutil.rmtree(rundir.RunDir.trainer(out), ignore_errors=True)
        del trainer


def discriminator(run, out: str) -> None:
    from .discriminator import score, train_discriminator
    from .metrics import discriminator_report, roc_auc
    from .synthesis import synthesize

    cfg = run.config
    real = list(dict.fromkeys(e["input"] for e in load_examples(cfg.train_file, what="train_file")))
    random.Random(cfg.seed).shuffle(real)
    # Negatives: what the source base makes of the stage-3 prompt, seeded with random real inputs, and (a setting)
    # real train inputs perturbed in format.
    n_neg = cfg.discriminator_negatives or len(real)
    n_format = round(cfg.discriminator_format_negatives * n_neg)
    n_pos_held = max(1, len(real) // 5)  # a fifth of both sides is held out, to measure on data it has not seen
    held_pos, train_pos = real[:n_pos_held], real[n_pos_held:]
    kinds: dict[str, list[str]] = {"imitation": []}
    if n_neg > n_format:
        with run.pool.lease(cfg.source_model) as lease:
            rows, _ = synthesize(cfg, lease.model, lease.tokenizer, real, num_samples=n_neg - n_format,
                                 candidate_budget=max(cfg.candidate_budget, 4 * n_neg), show_progress=run.show_progress)
        real_set = set(real)
        kinds["imitation"] = [r["input"] for r in rows if r["accepted"] and r["input"] not in real_set]
    from .negatives import format_negatives

    for kind, text in format_negatives(train_pos, n_format, seed=cfg.seed):  # from the train side only
        kinds.setdefault(kind, []).append(text)
    held_by_kind, train_neg = {}, []
    for kind, texts in kinds.items():
        if texts:
            n_held = max(1, len(texts) // 5)
            held_by_kind[kind] = texts[:n_held]
            train_neg += texts[n_held:]
    held_neg = [x for texts in held_by_kind.values() for x in texts]
    peft_config = peft_config_from(cfg, cfg.discriminator_base, peft_type="lora")
    args = training_args(cfg, rundir.RunDir.trainer(out), show_progress=run.show_progress,
                         learning_rate=cfg.discriminator_learning_rate, num_train_epochs=cfg.discriminator_epochs,
                         max_length=None)
    with run.pool.lease(cfg.discriminator_base) as lease:
        lease.model = model = train_discriminator(lease.model, lease.tokenizer, train_pos, train_neg,
                                                  task_name=cfg.task_name, args=args, peft_config=peft_config,
                                                  train=lambda trainer: _train(run, out, trainer, "discriminator"))
        pos_scores = score(model, lease.tokenizer, held_pos, cfg.task_name, batch_size=cfg.filter_batch_size)
        neg_scores = score(model, lease.tokenizer, held_neg, cfg.task_name, batch_size=cfg.filter_batch_size)
        if is_main_process():
            model.save_pretrained(out)
        del model
    metrics = discriminator_report(pos_scores, neg_scores, margin=cfg.filter_margin)
    if len(held_by_kind) > 1:  # the held-out ROC-AUC against each kind of negative
        by_kind = np.split(neg_scores, np.cumsum([len(v) for v in held_by_kind.values()])[:-1])
        metrics["roc_auc_by_negative_kind"] = {k: roc_auc(pos_scores, v) for k, v in zip(held_by_kind, by_kind)}
    metrics.update(num_positives=len(train_pos), num_negatives=len(train_neg), task_name=cfg.task_name,
                   negatives_by_kind={k: len(v) for k, v in kinds.items()},
                   base_model=cfg.discriminator_base,
                   held_out_negative_scores=[round(float(x), 4) for x in neg_scores],  # numbers only, no text
                   held_out_positive_scores=[round(float(x), 4) for x in pos_scores])
    if metrics.get("near_chance"):
        logger.warning("The discriminator is near chance on held-out data (ROC-AUC %.3f): the filter will barely "
                       "help. Train it longer or on more data.", metrics["roc_auc"])
    if is_main_process():
        shutil.rmtree(rundir.RunDir.trainer(out), ignore_errors=True)
        write_json(os.path.join(out, rundir.METRICS), metrics)


def synthesis(run, out: str) -> None:
    from datasets import Dataset

    from .metrics import calibrate_margin
    from .synthesis import synthesize

    cfg = run.config
    if cfg.target_false_accept_rate is not None:
        negatives = read_json(run.dirs.discriminator_metrics).get("held_out_negative_scores") or []
        if not negatives:
            raise ValueError("target_false_accept_rate needs the held-out negative scores in "
                             f"{run.dirs.discriminator_metrics}: train the discriminator in this run.")
        margin = calibrate_margin(negatives, cfg.target_false_accept_rate)
        logger.info("filter margin %.4f lets at most %.1f%% of %d held-out negatives through", margin,
                    100 * cfg.target_false_accept_rate, len(negatives))
        cfg = dataclasses.replace(cfg, filter_margin=margin)
    use_filter = cfg.filter_mode == "discriminator"
    with contextlib.ExitStack() as stack:
        generator = stack.enter_context(_generation_lease(
            run, "synthesis", cfg.generator, run.source_adapter if cfg.generate_with_source_adapter else None))
        disc = stack.enter_context(run.pool.lease(cfg.discriminator_base, run.discriminator_adapter)) if use_filter \
            else SimpleNamespace(model=None, tokenizer=None)
        rows, stats = synthesize(cfg, generator.model, generator.tokenizer, run.seeds, discriminator=disc.model,
                                 discriminator_tokenizer=disc.tokenizer, references=run.real_inputs(),
                                 progress_path=run.dirs.progress, progress_key=run.progress_key(),
                                 fresh=cfg.overwrite,
                                 show_progress=run.show_progress)
        if is_main_process():
            Dataset.from_list(rows).save_to_disk(os.path.join(out, rundir.CANDIDATES))
            Dataset.from_list([r for r in rows if r["accepted"]]).save_to_disk(os.path.join(out, rundir.ACCEPTED))
            write_json(os.path.join(out, rundir.STATS), {**stats.to_dict(), "filter_margin": cfg.filter_margin,
                                                          **_backend_stats(generator)})
        if cfg.compute_mmd and cfg.generation_backend == "vllm" and not cfg.embedding_model:
            generator.model.server.stop()  # the embeddings come from the generator's hidden states: the HF model's
            with run.pool.lease(cfg.generator) as hf:
                diagnostics = _diagnostics(run, rows, hf.model, hf.tokenizer, out)
        elif cfg.compute_mmd:
            diagnostics = _diagnostics(run, rows, generator.model, generator.tokenizer, out)
        if cfg.compute_mmd and is_main_process():
            write_json(os.path.join(out, rundir.DIAGNOSTICS), diagnostics)
    wait_for_everyone()
    if is_main_process() and os.path.exists(run.dirs.progress):
        os.remove(run.dirs.progress)


def _generation_lease(run, stage_name: str, ref: str, adapter: str | None = None):
    """The model a generating stage writes with: a pooled HF model, or a vLLM server for `ref` (and `adapter`)
    that lives as long as the block (`generation_backend`)."""
    cfg = run.config
    if cfg.generation_backend != "vllm":
        return run.pool.lease(ref, adapter)
    from .vllm_server import serve

    return serve(ref, adapter, python=cfg.vllm_python, dtype=cfg.dtype, kv_cache_gb=cfg.vllm_kv_cache_gb,
                 token=cfg.hub_token, log_path=run.dirs(f"vllm-{stage_name}.log"))


def _backend_stats(lease) -> dict:
    server = getattr(lease.model, "server", None)
    return {} if server is None else {"generation_backend": "vllm",
                                      "vllm_startup_seconds": round(server.startup_seconds or 0.0, 1)}


def _diagnostics(run, rows: list[dict], model, tokenizer, out: str) -> dict:
    """Paper Table 9: MMD to real inputs of the accepted and of the unfiltered candidates (same bandwidth)."""
    from .metrics import distinct_n, embed_texts, median_heuristic_bandwidth, mmd2, pca_2d, plot_projection

    cfg = run.config
    rng = random.Random(cfg.seed)
    real = run.real_inputs()
    real = rng.sample(real, min(len(real), 500))
    accepted = [r["input"] for r in rows if r["accepted"]]
    unfiltered = [r["input"] for r in rows]
    unfiltered = rng.sample(unfiltered, min(len(unfiltered), max(len(accepted), 500)))
    rejected = [r["input"] for r in rows if not r["passed"]][:300]
    embed = dict(sentence_model=cfg.embedding_model, model=None if cfg.embedding_model else model,
                 tokenizer=None if cfg.embedding_model else tokenizer, batch_size=cfg.filter_batch_size)

    def embed_all(texts):  # each process embeds a shard (pooling is padding-invariant, so shards agree)
        return np.asarray(map_across_processes(lambda shard: list(embed_texts(shard, **embed)), texts))

    real_e, acc_e, unf_e = (embed_all(t) for t in (real, accepted, unfiltered))
    bandwidth = median_heuristic_bandwidth(np.concatenate([real_e, unf_e]))
    result = {
        "num_real": len(real),
        "embedding": cfg.embedding_model or f"mean-pooled hidden states of {cfg.generator}",
        "bandwidth": bandwidth,
        "mmd_accepted": mmd2(acc_e, real_e, bandwidth=bandwidth) if len(real) > 1 and len(accepted) > 1 else None,
        "mmd_unfiltered": mmd2(unf_e, real_e, bandwidth=bandwidth) if len(real) > 1 else None,
        "distinct_2_accepted": distinct_n(accepted, 2),
        "distinct_2_unfiltered": distinct_n(unfiltered, 2),
    }
    if len(real) < 20:
        result["note"] = "few real inputs (give eval_file): the MMD estimates are noisy"
    rejected_e = embed_all(rejected) if rejected else np.zeros((0, real_e.shape[1]))
    # The report's Fig. 7, numbers only: up to 300 points of each group in two principal components.
    groups = {k: v[:300] for k, v in (("real", real_e), ("accepted", acc_e), ("rejected", rejected_e)) if len(v)}
    result["projection_2d"] = {k: np.round(p, 4).tolist() for k, p in zip(groups, pca_2d(list(groups.values())))} \
        if groups else {}
    if cfg.plot_projection and rejected:
        plot_projection(real_e, acc_e, rejected_e, os.path.join(out, rundir.PROJECTION),
                        title=f"{cfg.task_name}: real vs accepted vs rejected")
    return result


def labels(run, out: str) -> None:
    from datasets import Dataset, load_from_disk

    from .synthesis import label

    cfg = run.config
    accepted = load_from_disk(run.dirs.accepted)["input"]
    with _generation_lease(run, "labels", cfg.source_model, run.source_adapter) as teacher:
        rows = label(cfg, teacher.model, teacher.tokenizer, list(accepted), show_progress=run.show_progress)
        backend = _backend_stats(teacher)
    empty = sum(1 for r in rows if not r["answer"])
    if empty:
        logger.warning("%d of %d teacher answers are empty; they are kept as the teacher's behaviour.", empty, len(rows))
    stats = {"votes": cfg.label_votes, "labelled": len(rows), **backend}
    if cfg.label_votes > 1:
        kept = [r for r in rows if r["agreement"] >= cfg.label_min_agreement]
        stats.update(agreement=sum(r["agreement"] for r in rows) / len(rows), unanimous=sum(
            r["agreement"] == 1.0 for r in rows) / len(rows), dropped=len(rows) - len(kept))
        if not kept:
            raise UserError(f"label_min_agreement={cfg.label_min_agreement} dropped all {len(rows)} inputs (the "
                            f"teacher's mean agreement is {stats['agreement']:.0%}): lower it.")
        rows = kept
    if is_main_process():
        Dataset.from_list(rows).save_to_disk(out)
        write_json(os.path.join(out, rundir.LABEL_STATS), stats)


def target_adapter(run, out: str) -> None:
    from datasets import Dataset, load_from_disk

    from .distillation import DistillationTrainer

    cfg = run.config
    data = load_from_disk(run.dirs.labels)
    args = training_args(cfg, rundir.RunDir.trainer(out), show_progress=run.show_progress, kd_loss=cfg.kd_loss,
                         sequence_weight=cfg.sequence_weight if cfg.kd_loss != "sequence" else 0.0,
                         beta=cfg.beta, kd_temperature=cfg.kd_temperature)
    token_kd = cfg.kd_loss in _TOKEN_KD  # token-level KD runs the teacher during training
    with contextlib.ExitStack() as stack:
        student = stack.enter_context(run.pool.lease(cfg.target_model))
        teacher = stack.enter_context(run.pool.lease(cfg.source_model, run.source_adapter)) \
            if _distillation_reads_teacher(cfg) else None
        rows = [{"prompt": task_prompt(student.tokenizer, x, cfg.prompt_template), "completion": c}
                for x, c in zip(data["input"], data["completion"])]
        if cfg.token_selection_ratio < 1:
            rows = _selected_rows(cfg, rows, data["input"], student.tokenizer, teacher, out)
        trainer = DistillationTrainer(model=student.model, teacher_model=teacher.model if token_kd else None,
                                      args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=student.tokenizer,
                                      peft_config=peft_config_from(cfg, cfg.target_model),
                                      teacher_processing_class=teacher.tokenizer if token_kd else None,
                                      lineage=run.lineage())
        student.model = trainer.model
        _train(run, out, trainer, "target_adapter")
        if is_main_process():
            trainer.model.save_pretrained(out)
            shutil.rmtree(rundir.RunDir.trainer(out), ignore_errors=True)
            write_json(os.path.join(out, LINEAGE_FILE), run.lineage())
        del trainer


def _selected_rows(cfg, rows: list[dict], inputs: list[str], tokenizer, teacher, out: str) -> list[dict]:
    """The training rows tokenized, with the loss on the completion tokens where the source adapter matters most
    (`selection.py`); how many tokens kept the loss goes to `selection.json`."""
    from .selection import selected_row, token_excess

    completions = [r["completion"] for r in rows]
    prompts = [task_prompt(teacher.tokenizer, x, cfg.prompt_template) for x in inputs]
    spans = token_excess(teacher.model, teacher.tokenizer, prompts, completions,
                         batch_size=cfg.per_device_train_batch_size)
    selected = [selected_row(tokenizer, r["prompt"], r["completion"], s, cfg.token_selection_ratio)
                for r, s in zip(rows, spans)]
    if is_main_process():
        excess = [x for s in spans for _, _, x in s]
        write_json(os.path.join(out, rundir.SELECTION), {
            "token_selection_ratio": cfg.token_selection_ratio,
            "tokens_with_loss": sum(t != -100 for r in selected for t in r["labels"]),
            "mean_teacher_excess": float(np.mean(excess)) if excess else None})
    return selected


def evaluation(run, out: str) -> None:
    lm_eval = run.config.evaluation_backend == "lm_eval"
    if lm_eval and not is_main_process():  # lm-eval evaluates a loaded model in one process
        return
    results = run.evaluate_lm_eval(folder=out) if lm_eval else run.evaluate()
    summary = {k: v["accuracy"] for k, v in results.items() if v["accuracy"] is not None}
    if summary:
        summary["num_samples"] = next(iter(results.values()))["num_samples"]
    if is_main_process():
        if summary:
            write_json(os.path.join(out, rundir.EVALUATION), summary)
            write_json(os.path.join(out, rundir.PREDICTIONS), {k: v["predictions"] for k, v in results.items()})
        if lm_eval:
            write_json(os.path.join(out, rundir.LM_EVAL), {k: v["lm_eval"] for k, v in results.items()})
            with open(os.path.join(out, rundir.LM_EVAL_TABLE), "w", encoding="utf-8") as f:
                f.write("".join(f"## {k}\n\n{v['table']}\n" for k, v in results.items()))


def training_args(config: TransferConfig, output_dir: str, *, show_progress: bool = True, **overrides):
    """The `DistillationConfig` every training stage starts from: the paper's optimiser settings (AdamW without
    weight decay, linear schedule without warm-up), the config's batch, length and logging, then the user's
    `training_kwargs`; `overrides` (the stage's own learning rate, epochs and loss) win."""
    from .distillation import DistillationConfig

    kwargs = dict(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_length=config.max_length,
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        report_to=list(config.report_to),
        run_name=run_name(config),
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=1,  # the last checkpoint is all a resume needs
        seed=config.seed,
        bf16=torch.cuda.is_available() and config.dtype in ("auto", "bfloat16"),
        use_cpu=not torch.cuda.is_available(),  # also what makes CPU-only processes form a gloo group
        disable_tqdm=not show_progress,
    )
    kwargs.update(config.training_kwargs)  # the user's own TrainingArguments fields win over the paper's optimiser
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


# -- one line per finished stage ------------------------------------------------------------------------------------

def _synthesis_summary(dirs: rundir.RunDir) -> str:
    stats = read_json(dirs.synthesis_stats)
    return (f"accepted {stats.get('accepted', 0)} of {stats.get('candidates', 0)} candidates "
            f"(filter passed {stats.get('acceptance_rate', 0):.0%})")


def _labels_summary(dirs: rundir.RunDir) -> str:
    from .synthesis import describe_votes

    return describe_votes(read_json(dirs.label_stats))


def _discriminator_summary(dirs: rundir.RunDir) -> str:
    return f"held-out ROC-AUC {read_json(dirs.discriminator_metrics).get('roc_auc', float('nan')):.3f}"


def _evaluation_summary(dirs: rundir.RunDir) -> str:
    summary = ", ".join(f"{k} {v:.1%}" for k, v in read_json(dirs.evaluation).items() if k != "num_samples")
    if os.path.exists(dirs.lm_eval):
        summary += (", " if summary else "") + "lm-eval tables in evaluation/lm_eval.md"
    return summary


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
_TOKEN_KD = ("forward_kl", "reverse_kl", "jsd")


def _backend(c: TransferConfig) -> tuple[str, ...]:
    """The generation backend is part of what made a stage's output (other sampling streams) where it is not HF."""
    return ("generation_backend",) if c.generation_backend != "hf" else ()


def _distillation_reads_teacher(c: TransferConfig) -> bool:
    """Token-level KD and token selection run the teacher (source base + adapter) in the target_adapter stage."""
    return c.kd_loss in _TOKEN_KD or c.token_selection_ratio < 1


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
    summary: Callable[[rundir.RunDir], str] | None = None


STAGES: tuple[Stage, ...] = (
    Stage("source_adapter", source_adapter,
          needed=lambda c: not c.source_adapter,
          reads=lambda c: (),
          inputs=("train_file",),
          settings=lambda c: ("source_model", "prompt_template", "source_peft_type", *_ADAPTER, "source_learning_rate",
                              "source_epochs", *_TRAINING, *_training_kwargs(c), *_SEED),
          bases=lambda c: {c.source_model},
          on_change="keep", resumable=True),
    Stage("discriminator", discriminator,
          needed=lambda c: c.filter_mode == "discriminator" and not c.discriminator_adapter,
          reads=lambda c: (),
          inputs=("train_file",),
          settings=lambda c: ("source_model", "discriminator_base", "task_name", *_SAMPLING, "discriminator_negatives",
                              *(("discriminator_format_negatives",) if c.discriminator_format_negatives else ()),
                              *_ADAPTER[:4], "discriminator_learning_rate", "discriminator_epochs", *_TRAINING[:2],
                              *_training_kwargs(c), *_SEED),
          bases=lambda c: {c.source_model, c.discriminator_base},
          on_change="keep", resumable=True, summary=_discriminator_summary),
    Stage("synthesis", synthesis,
          needed=lambda c: True,
          reads=lambda c: (("discriminator",) if c.filter_mode == "discriminator" else ())
          + (("source_adapter",) if c.generate_with_source_adapter else ()),
          inputs=("seeds", "eval_file"),
          settings=lambda c: ("generator", "filter_mode", "task_name", "filter_margin", "target_false_accept_rate",
                              "num_samples", *_SAMPLING, "leak_threshold",
                              *(("generate_with_source_adapter",) if c.generate_with_source_adapter else ()),
                              *(("discriminator_base",) if c.filter_mode == "discriminator" else ()),
                              "compute_mmd", "embedding_model", "plot_projection", *_SEED, *_backend(c)),
          bases=lambda c: {c.generator} | ({c.discriminator_base} if c.filter_mode == "discriminator" else set()),
          on_change="stop", summary=_synthesis_summary),
    Stage("labels", labels,
          needed=lambda c: True,
          reads=lambda c: ("synthesis", "source_adapter"),
          inputs=(),
          settings=lambda c: ("source_model", "prompt_template", "label_max_new_tokens", "label_do_sample",
                              "answer_stop", "generation_batch_size", *_SEED, *_backend(c))
          + (("label_votes", "label_temperature", "label_min_agreement") if c.label_votes > 1 else ()),
          bases=lambda c: {c.source_model},
          on_change="stop", summary=_labels_summary),
    Stage("target_adapter", target_adapter,
          needed=lambda c: True,
          reads=lambda c: ("labels",) + (("source_adapter",) if _distillation_reads_teacher(c) else ()),
          inputs=(),
          settings=lambda c: ("target_model", "prompt_template", "peft_type", *_ADAPTER, "kd_loss", "learning_rate",
                              "num_train_epochs", *_TRAINING, *_training_kwargs(c), *_SEED)
          + (("source_model", "sequence_weight", "beta", "kd_temperature") if c.kd_loss in _TOKEN_KD else ())
          + (("source_model", "token_selection_ratio") if c.token_selection_ratio < 1 else ()),
          bases=lambda c: {c.target_model} | ({c.source_model} if _distillation_reads_teacher(c) else set()),
          on_change="redo", resumable=True),
    Stage("evaluation", evaluation,
          needed=lambda c: bool(c.eval_file) or bool(c.evaluation_backend == "lm_eval" and c.lm_eval_tasks),
          reads=lambda c: ("target_adapter", "source_adapter"),
          inputs=("eval_file",),
          settings=lambda c: ("source_model", "target_model", "prompt_template", "answer_stop", "label_max_new_tokens",
                              "generation_batch_size", "max_eval_samples", "dtype")
          + (("evaluation_backend", "lm_eval_tasks", "lm_eval_include_path", "lm_eval_num_fewshot", "lm_eval_limit")
             if c.evaluation_backend == "lm_eval" else ()),
          bases=lambda c: {c.source_model, c.target_model},
          on_change="redo", summary=_evaluation_summary),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"Unknown stage {name!r}: use one of {STAGE_NAMES}.")
