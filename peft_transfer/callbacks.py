"""`SyntheticFilterCallback`: the generate → filter → label loop of Trans-LoRA inside any `transformers.Trainer`.

A user who already has a training script adds one callback: it fills the training set with inputs written by the
generator from the seeds, kept by the discriminator and answered by the teacher, and refreshes that set between
epochs (or every k optimizer steps) with freshly accepted samples. What it did (acceptance rate, candidates spent,
duplicates and seed leaks dropped, diversity) goes through `Trainer.log`, hence into `state.log_history` and every
`report_to` integration.

How the data reaches the trainer, and why this way (read in and tested against transformers 5.23):
- `Trainer._inner_training_loop` builds the train dataloader ONCE, before `on_train_begin`, and only calls
  `iter(train_dataloader)` at the start of each epoch. Assigning a new `trainer.train_dataset` between epochs does
  nothing, and a `datasets.Dataset` is copied by `_remove_unused_columns` before the dataloader sees it. What does
  take effect is changing the contents of the very `torch.utils.data.Dataset` object inside the dataloader:
  the sampler and `__getitem__` read it afresh. So the trainer is given `callback.dataset`, a `SyntheticDataset`
  whose rows the callback swaps in place.
- The number of rows never changes (`num_samples`): `len(dataloader)`, hence `max_steps` and the learning-rate
  schedule, are computed once from it, and indices drawn by a sampler before a mid-epoch swap stay valid.
- With `dataloader_num_workers > 0` each epoch forks its workers at `iter()`, so a refresh made every k steps shows up
  at the next epoch; persistent workers would never see one, so they are refused.
- `group_by_length` samplers measure the rows once when the dataloader is built (before the first fill): refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from typing import Callable

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, default_data_collator
from trl.data_utils import common_prefix_length
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from .config import TransferConfig
from .data import task_prompt
from .labelling import keep_agreed, keep_surest, label, surest_count
from .metrics import distinct_n
from .synthesis import SynthesisError, SynthesisSettings, synthesize

logger = logging.getLogger(__name__)

LOG_PREFIX = "synthetic/"


class SyntheticDataset(torch.utils.data.Dataset):
    """A fixed-size training set whose rows `SyntheticFilterCallback` replaces in place.

    Args:
        size (`int`): the number of rows, fixed for the whole training run (the scheduler's step count depends on it).
    """

    def __init__(self, size: int):
        self.size = size
        self.rows: list[dict] | None = None  # tokenised features, what the collator receives
        self.examples: list[dict] | None = None  # the text rows behind them: input, prompt, completion, answer
        self.version = 0  # how many times the rows were replaced

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if self.rows is None:
            raise RuntimeError(
                "The synthetic training set is still empty: attach the callback with `callback.attach(trainer)` "
                "(it fills the set when training begins), or call `callback.refresh()` first."
            )
        # Copies: collators pad lists in place, which would corrupt the stored row for the next epoch.
        return {k: list(v) if isinstance(v, list) else v for k, v in self.rows[index].items()}

    def replace(self, rows: list[dict], examples: list[dict]) -> None:
        if len(rows) != self.size or len(examples) != self.size:
            raise ValueError(f"A refresh must keep the size of the set: got {len(rows)} rows for {self.size}.")
        self.rows, self.examples = list(rows), list(examples)
        self.version += 1


def tokenize_completion(tokenizer, prompt: str, completion: str, max_length: int | None = None) -> dict:
    """One prompt/completion row as `SFTTrainer` trains on it (`completion_only_loss`): the completion gets the EOS
    token appended, the loss falls on the completion only (labels -100 on the prompt), right truncation.

    The completion starts where the tokenised prompt and prompt+completion diverge, as in TRL, because tokens can
    merge across the boundary.
    """
    if tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
        completion = completion + tokenizer.eos_token
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion)["input_ids"]
    start = common_prefix_length(prompt_ids, ids)
    labels = [-100] * start + ids[start:]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


@contextlib.contextmanager
def _preserved_rng():
    """Synthesis seeds torch's global generator; restore every generator afterwards, so that the trainer's own random
    stream (dropout, shuffling) is the same whether or not refreshes happen in between."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SyntheticFilterCallback(TrainerCallback):
    r"""
    Trains on a synthetic set made by generate → filter → label, refreshed between epochs or every k steps.

    Example:

    ```python
    callback = SyntheticFilterCallback(
        seeds=seeds, generator=target_base, generator_tokenizer=target_tok,
        discriminator=disc, discriminator_tokenizer=disc_tok, teacher=teacher, teacher_tokenizer=source_tok,
        student_tokenizer=target_tok, task_name="sort_letters", num_samples=250,
    )
    trainer = Trainer(model=student, args=args, train_dataset=callback.dataset, data_collator=callback.data_collator)
    callback.attach(trainer)  # registers the callback and lets it log through trainer.log
    trainer.train()
    ```

    The models are passed in loaded (once) and are only run in inference; keep the generator a separate copy from the
    student (a PEFT student wraps its base in place).

    Args:
        seeds (`list[str]`): the seed inputs D̄ shown to the generator. The privacy guard of `synthesize` drops and
            counts candidates whose character n-gram overlap with a seed (or a `references` input) reaches
            `leak_threshold` (a `TransferConfig` field, 0.8 by default), so no real input is trained on as synthetic.
        generator, generator_tokenizer: the model that writes candidate inputs (the paper: the target base).
        teacher, teacher_tokenizer: the source base + adapter that answers the accepted inputs.
        discriminator, discriminator_tokenizer (*optional*): the filter; required unless `filter_mode="none"`.
        student_tokenizer (*optional*): tokenises `task_prompt(input) + completion` for the trainer, with the loss on
            the completion only (what `DistillationTrainer`/`SFTTrainer` train on). Required unless `formatting`.
        formatting (`Callable[[dict], dict]`, *optional*): turns one text row (`input`, `prompt`, `completion`,
            `answer`) into the features your collator expects; replaces the default tokenisation. `prompt` is
            rendered with `student_tokenizer` when one is given, else with `teacher_tokenizer`.
        config (`TransferConfig`, *optional*): settings to start from (sampling, filter, labelling, `num_samples`,
            `candidate_budget` per refresh, `seed`, `max_length`); defaults to `TransferConfig`'s defaults. The
            labels are kept as the labels stage keeps them: with `label_votes` > 1 those below `label_min_agreement`
            are dropped, and with `label_selection_ratio` < 1 the set holds that share of the `num_samples` accepted
            inputs, those whose answers the teacher is surest of.
        refresh_steps (`int`, *optional*): refresh every this many optimizer steps; by default at every epoch start.
        min_fresh (`float`, *optional*, defaults to `0.0`): fraction of the set a refresh must fill to be
            used at all; below it the previous set is kept whole (with a warning). Otherwise a short refresh is
            topped up with rows of the previous set.
        references (`list[str]`, *optional*): more real inputs (e.g. held-out data) that no sample may reproduce.
        **settings: any `TransferConfig` field, overriding `config` (e.g. `num_samples=64, filter_margin=0.5`).

    Under several processes every process runs each refresh and then takes the main process's rows (broadcast), so
    that all hold the same set and the distributed sampler gives each a different part of it. Where synthesis and
    labelling split their work across processes the refresh is shared; otherwise each process repeats it (no
    slower, only redundant). A refresh must finish within the process group's timeout. Not yet run on >1 process.
    """

    def __init__(self, *, seeds: list[str], generator, generator_tokenizer, teacher, teacher_tokenizer,
                 discriminator=None, discriminator_tokenizer=None, student_tokenizer=None,
                 formatting: Callable[[dict], dict] | None = None, config: TransferConfig | None = None,
                 refresh_steps: int | None = None, min_fresh: float = 0.0, references: list[str] | None = None,
                 **settings):
        self.settings = SynthesisSettings.from_config(config, **settings)
        if self.settings.filter_mode == "discriminator" and (discriminator is None or discriminator_tokenizer is None):
            raise ValueError("Pass `discriminator` and `discriminator_tokenizer`, or `filter_mode='none'` to train on "
                             "unfiltered candidates (the paper's ablation).")
        if formatting is None and student_tokenizer is None:
            raise ValueError("Pass `student_tokenizer` (the trained model's tokenizer), or a `formatting` function.")
        if refresh_steps is not None and refresh_steps < 1:
            raise ValueError(f"refresh_steps must be at least 1 (got {refresh_steps}), or None to refresh every epoch.")
        if not 0.0 <= min_fresh <= 1.0:
            raise ValueError(f"min_fresh must lie in [0, 1] (got {min_fresh}).")
        if not seeds:
            raise ValueError("`seeds` is empty: the generator needs a few real inputs to imitate.")
        self.seeds = list(seeds)
        self.generator, self.generator_tokenizer = generator, generator_tokenizer
        self.discriminator = discriminator if self.settings.filter_mode == "discriminator" else None
        self.discriminator_tokenizer = discriminator_tokenizer
        self.teacher, self.teacher_tokenizer = teacher, teacher_tokenizer
        self.student_tokenizer, self.formatting = student_tokenizer, formatting
        self.refresh_steps, self.min_fresh = refresh_steps, min_fresh
        self.references = list(dict.fromkeys([*self.seeds, *(references or [])]))
        # With `label_selection_ratio` < 1 each refresh accepts `num_samples` inputs and trains on that share of them.
        self.dataset = SyntheticDataset(surest_count(self.settings.label_selection_ratio, self.settings.num_samples))
        self.data_collator = None
        if formatting is None:
            pad = student_tokenizer.pad_token_id
            # SFTTrainer's own collator: right-pads input_ids, labels (-100) and the attention mask.
            self.data_collator = DataCollatorForLanguageModeling(pad if pad is not None else student_tokenizer.eos_token_id)
        self.history: list[dict] = []  # one entry per refresh: the logged metrics, the step and the accepted inputs
        self.candidates_total = 0
        self._trainer = None
        self._refreshed_at: int | None = None  # global step of the last refresh
        self._pending_logs: list[dict] = []  # metrics of refreshes made before a trainer was attached

    # -- wiring ----------------------------------------------------------------------------------------------------

    def attach(self, trainer: Trainer) -> Trainer:
        """Registers the callback with `trainer` (if it is not already) and keeps a reference to log through it.

        A reference is needed because callbacks receive no trainer: `TrainerCallback.on_log` only sees a copy of
        what `Trainer.log` already appended to `log_history`, so metrics reach `report_to` only via `Trainer.log`.
        """
        if trainer.train_dataset is not self.dataset:
            raise ValueError("The trainer must train on `callback.dataset`: pass `train_dataset=callback.dataset` "
                             "(the callback swaps that object's rows; another dataset would never change).")
        collator = trainer.data_collator
        if self.formatting is None and (collator is default_data_collator or isinstance(collator, DataCollatorWithPadding)):
            raise ValueError("Pass `data_collator=callback.data_collator` to the trainer: the default collator cannot "
                             "pad the `labels` of prompt/completion rows.")
        if not any(cb is self for cb in trainer.callback_handler.callbacks):
            trainer.add_callback(self)
        self._trainer = trainer
        return trainer

    # -- trainer events --------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if self._trainer is None:
            raise RuntimeError("Call `callback.attach(trainer)` before `trainer.train()`: the callback logs its metrics "
                               "through the trainer.")
        if train_dataloader is not None and getattr(train_dataloader, "dataset", self.dataset) is not self.dataset:
            raise ValueError("The trainer's dataloader does not read `callback.dataset`: pass "
                             "`train_dataset=callback.dataset` and do not override `get_train_dataloader`.")
        if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
            raise ValueError("dataloader_persistent_workers=True keeps copies of the training set in the workers, "
                             "which would never see a refresh: set it to False.")
        if getattr(args, "group_by_length", False) or getattr(args, "train_sampling_strategy", None) == "group_by_length":
            raise ValueError("group_by_length measures the rows once, before the synthetic set exists: turn it off.")
        if self.refresh_steps and args.dataloader_num_workers > 0:
            logger.warning("With dataloader_num_workers > 0, a refresh every %d steps reaches the batches only at "
                           "the next epoch (workers hold the rows of the epoch they started in).", self.refresh_steps)
        for metrics in self._pending_logs:
            Trainer.log(self._trainer, dict(metrics))
        self._pending_logs.clear()
        if self.dataset.rows is None or self._refreshed_at != state.global_step:
            self.refresh(state.global_step)

    def on_epoch_begin(self, args, state, control, **kwargs):
        # The first epoch (and the epoch a resumed run continues) trains on the set made in `on_train_begin`.
        if self.refresh_steps is None and state.global_step != self._refreshed_at:
            self.refresh(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if (self.refresh_steps and state.global_step % self.refresh_steps == 0
                and state.global_step < state.max_steps and state.global_step != self._refreshed_at):
            self.refresh(state.global_step)

    # -- the loop --------------------------------------------------------------------------------------------------

    def refresh(self, step: int = 0) -> dict:
        """Generate, filter and label a new set and swap it into `self.dataset`; returns the logged metrics.

        Sampling is seeded by (`seed`, `step`), so a run repeats itself refresh by refresh, and every generator is
        restored afterwards. Never raises once a set exists: when too few candidates are accepted (or the budget
        runs out) the set is topped up with, or kept as, the previous rows and a warning is logged.

        Args:
            step (`int`, *optional*, defaults to `0`): the global step the set is made at (its sampling seed).
        """
        start = time.perf_counter()
        need = self.dataset.size
        trainer = self._trainer
        accelerator = getattr(trainer, "accelerator", None)
        distributed = accelerator is not None and accelerator.num_processes > 1
        # Every process runs the refresh (synthesis and labelling may be collective: each process then does its share
        # of the candidates), then all take the main process's rows, so that every rank holds the same set.
        payload = self._make(step)
        if distributed:
            from accelerate.utils import broadcast_object_list

            box = [payload]
            broadcast_object_list(box, from_process=0)
            payload = box[0]
        fresh, counts = payload["rows"], payload["counts"]

        previous = self.dataset.examples
        if previous is None and not fresh:
            raise SynthesisError(
                f"No synthetic sample was accepted for the first training set ({counts['scored']} scored of "
                f"{counts['candidates']} candidates): raise `candidate_budget`, lower `filter_margin`, or check the "
                "generator and discriminator."
            )
        rng = random.Random(f"{self.settings.seed}:{step}")
        if previous is not None and len(fresh) < self.min_fresh * need:
            logger.warning("Refresh at step %d accepted %d of %d samples (min_fresh=%.2f): the previous set is kept.",
                           step, len(fresh), need, self.min_fresh)
            examples, reused = list(previous), need
        else:
            examples = fresh[:need]
            reused = need - len(examples)
            if reused:
                pool = previous if previous is not None else fresh  # the first set can only repeat its own rows
                fill = rng.sample(pool, reused) if reused <= len(pool) else [rng.choice(pool) for _ in range(reused)]
                examples = examples + fill
                logger.warning("Refresh at step %d accepted %d of %d samples: %d rows %s.", step, len(fresh), need,
                               reused, "reused from the previous set" if previous is not None else "repeated")
        rows = [self._features(e) for e in examples]
        before = {e["input"] for e in previous} if previous is not None else set()
        self.dataset.replace(rows, examples)
        self._refreshed_at = step
        self.candidates_total += counts["candidates"]

        inputs = [e["input"] for e in examples]
        metrics = {
            "refreshes": self.dataset.version,
            "candidates": counts["candidates"],
            "candidates_total": self.candidates_total,
            "scored": counts["scored"],
            "accepted": counts["labelled"],
            "labels_kept": len(fresh),
            "labels_dropped_disagreeing": counts["dropped_disagreeing"],
            "labels_dropped_unsure": counts["dropped_unsure"],
            "acceptance_rate": counts["acceptance_rate"],
            "duplicates_dropped": counts["duplicates"],
            "leaks_dropped": counts["leaks"],
            "unparsable": counts["unparsable"],
            "reused_rows": reused,
            "changed_rows": sum(1 for x in inputs if x not in before),
            "distinct_1": distinct_n(inputs, 1),
            "distinct_2": distinct_n(inputs, 2),
            "refresh_seconds": time.perf_counter() - start,
        }
        metrics = {LOG_PREFIX + k: float(v) for k, v in metrics.items()}
        self.history.append({"step": step, **metrics, "inputs": inputs})
        if trainer is not None:
            Trainer.log(trainer, dict(metrics))
        else:
            self._pending_logs.append(metrics)
        return metrics

    def _make(self, step: int) -> dict:
        """Candidates → leak guard → filter → accepted → teacher labels (those agreed on, or surest, when asked), with
        the counts to log."""
        seed = int(np.random.SeedSequence([self.settings.seed, step]).generate_state(1)[0])
        cfg = dataclasses.replace(self.settings, seed=seed)
        with _preserved_rng():
            torch.manual_seed(seed)
            try:
                rows, stats = synthesize(cfg, self.generator, self.generator_tokenizer, self.seeds,
                                         discriminator=self.discriminator,
                                         discriminator_tokenizer=self.discriminator_tokenizer,
                                         num_samples=cfg.num_samples,
                                         references=self.references, show_progress=False)
            except SynthesisError as error:
                # Never stop training for a short refresh: keep what was accepted and let `refresh` top it up.
                logger.warning("Refresh at step %d: %s", step, error)
                rows, stats = error.rows, error.stats
            stats = stats.to_dict()
            kept = [r["input"] for r in rows if r["accepted"]]
            torch.manual_seed(seed)  # for label_do_sample
            labelled = label(cfg, self.teacher, self.teacher_tokenizer, kept, show_progress=False) if kept else []
            labelled, agreed = keep_agreed(cfg, labelled)
            labelled, selected = keep_surest(cfg, self.teacher, self.teacher_tokenizer, labelled)
        prompt_tokenizer = self.student_tokenizer or self.teacher_tokenizer
        for row in labelled:
            row["prompt"] = task_prompt(prompt_tokenizer, row["input"], self.settings.prompt_template)
        counts = {
            "candidates": stats["candidates"],
            "scored": stats["scored"],
            "acceptance_rate": stats["acceptance_rate"],
            "duplicates": stats["duplicates"] + stats["seed_copies"],
            "unparsable": stats["unparsable"],
            "leaks": stats["leaks"],
            "labelled": len(kept),
            "dropped_disagreeing": agreed.get("dropped", 0),
            "dropped_unsure": selected.get("dropped_unsure", 0),
        }
        return {"rows": labelled, "counts": counts}

    def _features(self, example: dict) -> dict:
        if self.formatting is not None:
            return self.formatting(example)
        return tokenize_completion(self.student_tokenizer, example["prompt"], example["completion"],
                                   self.settings.max_length)

