"""The stages of a transfer, in order, over a run directory — with resume.

Each stage reads named artifacts and writes its own into `output_dir/<stage>/`: it is written under a temporary
name and renamed when complete, so a folder that exists is a finished stage, and a run that dies is started again
with the same command and goes on from the first unfinished stage (`overwrite=True` redoes them all). Generation in
the synthesis stage also keeps a progress file, so even that stage resumes mid-way.

    source_adapter   train θs on the task data (only when no source adapter is given)
    discriminator    train the yes/no adapter on real inputs vs source-generated ones (only when none is given)
    synthesis        generate -> filter until `num_samples` are accepted
    labels           the teacher (source base + θs) answers every accepted input
    target_adapter   distil into a fresh θt on the target base
    evaluation       source+θs / target / target+θt on held-out data; report.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import random
import shutil
import time
from types import SimpleNamespace

import numpy as np
import torch

from .config import LINEAGE_FILE, TransferConfig
from .data import load_examples, load_seeds, task_prompt
from .distributed import is_main_process, map_across_processes, state, wait_for_everyone
from .evaluation import evaluate, format_report, write_json
from .modeling import load_adapter, load_base, load_tokenizer, peft_config_from, split_revision

logger = logging.getLogger(__name__)

STAGES = ("source_adapter", "discriminator", "synthesis", "labels", "target_adapter", "evaluation")


class Transfer:
    """One transfer over its run directory. `Transfer(config).run()` does every stage that is not done yet."""

    def __init__(self, config: TransferConfig, *, show_progress: bool = True):
        self.config = config
        self.show_progress = show_progress
        self.timings: dict[str, dict] = {}
        # Under DeepSpeed, training partitions a model's weights in place: a base cannot be reused after it.
        self._pool_enabled = config.keep_models_loaded and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true"
        self._pool: dict[str, tuple] = {}
        self._lent: set[str] = set()
        if config.demo:
            self._fill_demo_settings()
        os.makedirs(config.output_dir, exist_ok=True)

    # -- the run ---------------------------------------------------------------------------------------------------

    def run(self, stages: tuple[str, ...] | None = None) -> dict:
        cfg = self.config
        st = state()
        if st.is_main_process:
            logger.info("transfer over %d process%s (%s)", st.num_processes, "es" if st.num_processes > 1 else "",
                        st.distributed_type.value if hasattr(st.distributed_type, "value") else st.distributed_type)
        self._check_inputs()
        if is_main_process():
            write_json(cfg.path("config.json"), cfg.to_dict())
        todo = list(stages or STAGES)
        for name in todo:
            if name not in STAGES:
                raise ValueError(f"Unknown stage {name!r}: use one of {STAGES}.")
        todo = [name for name in todo if self._needed(name)]
        for i, name in enumerate(todo):
            # Keep only the bases that this and the later stages use.
            self._evict(set().union(*(self._bases_for(n) for n in todo[i:])))
            self._stage(name, getattr(self, f"_{name}"))
        self._evict(set())
        if stages is None and (cfg.push_to_hub or cfg.hub_discriminator_id or cfg.hub_dataset_id) and is_main_process():
            self.push()
        wait_for_everyone()
        report = self.report()
        if is_main_process():
            write_json(cfg.path("report.json"), report)
        return report

    def _needed(self, name: str) -> bool:
        cfg = self.config
        if name == "source_adapter":
            return not cfg.source_adapter
        if name == "discriminator":
            return cfg.filter_mode == "discriminator" and not cfg.discriminator_adapter
        if name == "evaluation":
            return bool(cfg.eval_file)
        return True

    def _stage(self, name: str, fn) -> None:
        """Run one stage into `<name>.incomplete/` and rename it to `<name>/` when complete (main process only
        touches the folders; every process runs `fn`, which writes only on the main process)."""
        final, tmp = self.config.path(name), self.config.path(f"{name}.incomplete")
        wait_for_everyone()  # every process sees the same folders before deciding
        main = is_main_process()  # one line per stage, not one per process
        if os.path.isdir(final) and not self.config.overwrite:
            if main:
                logger.info("  %-15s done earlier, kept (overwrite=True redoes it)", name)
            self.timings[name] = {**self._read_stage_info(final), "skipped": True}
            return
        if is_main_process():
            for path in (final, tmp):
                if os.path.isdir(path):
                    shutil.rmtree(path)
            os.makedirs(tmp)
        wait_for_everyone()
        if main:
            logger.info("▸ %s ...", name)
        _reset_peak_rss()
        start = time.perf_counter()
        fn(tmp)
        seconds = time.perf_counter() - start
        info = {"seconds": seconds, "peak_rss_gb": _peak_rss_gb()}
        wait_for_everyone()
        if is_main_process():
            write_json(os.path.join(tmp, "stage.json"), {"stage": name, **info})
            os.replace(tmp, final)
        wait_for_everyone()
        self.timings[name] = info
        _free_memory()
        if main:
            rss = f"peak RSS {info['peak_rss_gb']:.1f} GB" if info["peak_rss_gb"] is not None else ""
            logger.info("✓ %-15s %7.1f s  %-17s %s", name, seconds, rss, self._stage_summary(name))

    def _stage_summary(self, name: str) -> str:
        """One phrase on what a finished stage made, for its line in the output."""
        cfg = self.config
        if name == "synthesis":
            stats = _read_json(cfg.path("synthesis", "stats.json"))
            return (f"accepted {stats.get('accepted', 0)} of {stats.get('candidates', 0)} candidates "
                    f"({stats.get('acceptance_rate', 0):.0%})")
        if name == "discriminator":
            metrics = _read_json(cfg.path("discriminator", "metrics.json"))
            return f"held-out ROC-AUC {metrics.get('roc_auc', float('nan')):.3f}"
        if name == "evaluation":
            ev = _read_json(cfg.path("evaluation", "evaluation.json"))
            return ", ".join(f"{k} {v:.1%}" for k, v in ev.items() if k != "num_samples")
        return ""

    @staticmethod
    def _read_stage_info(folder: str) -> dict:
        path = os.path.join(folder, "stage.json")
        if os.path.exists(path):
            with open(path) as f:
                info = json.load(f)
            return {"seconds": info.get("seconds", 0.0), "peak_rss_gb": info.get("peak_rss_gb")}
        return {"seconds": 0.0}

    # -- inputs ----------------------------------------------------------------------------------------------------

    def _fill_demo_settings(self):
        from .testing import build_demo_assets

        cfg = self.config
        assets = build_demo_assets(cfg.path("demo_assets"), pretrain_steps=cfg.demo_pretrain_steps, seed=cfg.seed)
        task_name = assets.pop("task_name")
        for key, value in assets.items():
            if not getattr(cfg, key):
                setattr(cfg, key, value)
        if cfg.task_name == "task":
            cfg.task_name = task_name

    def _check_inputs(self):
        """Fail before any work on what can be checked up front (files, seeds)."""
        cfg = self.config
        self.seeds = load_seeds(cfg.seed_file or cfg.train_file, cfg.num_seeds)
        if self._needed("source_adapter") or self._needed("discriminator"):
            load_examples(cfg.train_file, require_target=self._needed("source_adapter"), what="train_file")
        if cfg.eval_file:
            load_examples(cfg.eval_file, require_target=True, what="eval_file")

    @property
    def source_adapter(self) -> str:
        return self.config.source_adapter or self.config.path("source_adapter")

    @property
    def discriminator_adapter(self) -> str:
        return self.config.discriminator_adapter or self.config.path("discriminator")

    def _load(self, ref: str):
        cfg = self.config
        tokenizer = load_tokenizer(ref, trust_remote_code=cfg.trust_remote_code, token=cfg.hub_token)
        model = load_base(ref, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                          attn_implementation=cfg.attn_implementation, token=cfg.hub_token)
        if cfg.cache_implementation:
            model.generation_config.cache_implementation = cfg.cache_implementation
        return model, tokenizer

    @contextlib.contextmanager
    def _lease(self, ref: str, adapter: str | None = None):
        """A base (with `adapter` loaded onto it) for the duration of a block.

        With `keep_models_loaded`, each base is loaded once per run and handed back to the pool afterwards with its
        adapters stripped (PEFT injects them in place), so the stages share it instead of reloading it. A block may
        replace `lease.model` (a trainer's `PeftModel`); that is what gets stripped. A base already lent out (say
        generator and discriminator on one base) is loaded afresh for the second block.
        """
        pooled = self._pool_enabled and ref not in self._lent
        if pooled and ref in self._pool:
            model, tokenizer = self._pool.pop(ref)
        else:
            model, tokenizer = self._load(ref)
        if pooled:
            self._lent.add(ref)
        lease = SimpleNamespace(model=model, tokenizer=tokenizer)
        try:
            if adapter:
                lease.model = load_adapter(model, adapter, ref, token=self.config.hub_token)
            yield lease
        finally:
            if pooled:
                self._lent.discard(ref)
                self._pool[ref] = (_strip_adapters(lease.model), tokenizer)
            del lease, model
            _free_memory()

    def _evict(self, keep: set[str]) -> None:
        for ref in [r for r in self._pool if r not in keep]:
            del self._pool[ref]
        _free_memory()

    def _bases_for(self, stage: str) -> set[str]:
        cfg = self.config
        return {
            "source_adapter": {cfg.source_model},
            "discriminator": {cfg.source_model, cfg.discriminator_base},
            "synthesis": {cfg.generator, cfg.discriminator_base},
            "labels": {cfg.source_model},
            "target_adapter": {cfg.target_model} | ({cfg.source_model} if cfg.loss_type != "sequence" else set()),
            "evaluation": {cfg.source_model, cfg.target_model},
        }[stage]

    # -- stages ----------------------------------------------------------------------------------------------------

    def _source_adapter(self, out: str):
        from datasets import Dataset

        from .trainer import DistillationTrainer

        cfg = self.config
        args = training_args(cfg, os.path.join(out, "trainer"), show_progress=self.show_progress,
                             learning_rate=cfg.source_learning_rate,
                              num_train_epochs=cfg.source_epochs)
        peft_config = peft_config_from(cfg, cfg.source_model, peft_type=cfg.source_peft_type)
        with self._lease(cfg.source_model) as lease:
            rows = [{"prompt": task_prompt(lease.tokenizer, e["input"], cfg.prompt_template),
                     "completion": " " + e["target"]}
                    for e in load_examples(cfg.train_file, require_target=True, what="train_file")]
            trainer = DistillationTrainer(model=lease.model, args=args, train_dataset=Dataset.from_list(rows),
                                          processing_class=lease.tokenizer, peft_config=peft_config)
            lease.model = trainer.model
            trainer.train()
            if is_main_process():
                trainer.model.save_pretrained(out)
                shutil.rmtree(os.path.join(out, "trainer"), ignore_errors=True)
            del trainer

    def _discriminator(self, out: str):
        from .discriminator import score, train_discriminator
        from .metrics import discriminator_report
        from .synthesis import synthesize

        cfg = self.config
        real = list(dict.fromkeys(e["input"] for e in load_examples(cfg.train_file, what="train_file")))
        rng = random.Random(cfg.seed)
        rng.shuffle(real)
        # Negatives: what the source base makes of the stage-3 prompt, seeded with random real inputs.
        n_neg = cfg.discriminator_negatives or len(real)
        with self._lease(cfg.source_model) as lease:
            rows, _ = synthesize(cfg, lease.model, lease.tokenizer, real, num_samples=n_neg,
                                 candidate_budget=max(cfg.candidate_budget, 4 * n_neg),
                                 show_progress=self.show_progress)
        real_set = set(real)
        negatives = [r["input"] for r in rows if r["accepted"] and r["input"] not in real_set]
        # Hold out a fifth of both sides to measure the discriminator on data it has not seen.
        n_pos_held, n_neg_held = max(1, len(real) // 5), max(1, len(negatives) // 5)
        held_pos, train_pos = real[:n_pos_held], real[n_pos_held:]
        held_neg, train_neg = negatives[:n_neg_held], negatives[n_neg_held:]
        peft_config = peft_config_from(cfg, cfg.discriminator_base, peft_type="lora")
        args = training_args(cfg, os.path.join(out, "trainer"), show_progress=self.show_progress,
                             learning_rate=cfg.discriminator_learning_rate,
                              num_train_epochs=cfg.discriminator_epochs, max_length=None)
        with self._lease(cfg.discriminator_base) as lease:
            lease.model = model = train_discriminator(lease.model, lease.tokenizer, train_pos, train_neg,
                                                      task_name=cfg.task_name, args=args, peft_config=peft_config)
            pos_scores = score(model, lease.tokenizer, held_pos, cfg.task_name, batch_size=cfg.filter_batch_size)
            neg_scores = score(model, lease.tokenizer, held_neg, cfg.task_name, batch_size=cfg.filter_batch_size)
            if is_main_process():
                model.save_pretrained(out)
            del model
        metrics = discriminator_report(pos_scores, neg_scores, margin=cfg.filter_margin)
        metrics.update(num_positives=len(train_pos), num_negatives=len(train_neg), task_name=cfg.task_name,
                       base_model=cfg.discriminator_base,
                       held_out_negative_scores=[round(float(x), 4) for x in neg_scores])  # numbers only, no text
        if metrics.get("near_chance"):
            logger.warning("The discriminator is near chance on held-out data (ROC-AUC %.3f): the filter will "
                           "barely help. Train it longer or on more data.", metrics["roc_auc"])
        if is_main_process():
            shutil.rmtree(os.path.join(out, "trainer"), ignore_errors=True)
            write_json(os.path.join(out, "metrics.json"), metrics)

    def _synthesis(self, out: str):
        from datasets import Dataset

        from .metrics import calibrate_margin
        from .synthesis import synthesize

        cfg = self.config
        if cfg.target_false_accept_rate is not None:
            negatives = _read_json(cfg.path("discriminator", "metrics.json")).get("held_out_negative_scores") or []
            if not negatives:
                raise ValueError("target_false_accept_rate needs the held-out negative scores in "
                                 f"{cfg.path('discriminator', 'metrics.json')}: train the discriminator in this run.")
            margin = calibrate_margin(negatives, cfg.target_false_accept_rate)
            logger.info("filter margin %.4f lets at most %.1f%% of %d held-out negatives through", margin,
                        100 * cfg.target_false_accept_rate, len(negatives))
            cfg = dataclasses.replace(cfg, filter_margin=margin)
        use_filter = cfg.filter_mode == "discriminator"
        with contextlib.ExitStack() as stack:
            generator = stack.enter_context(self._lease(cfg.generator))
            disc = stack.enter_context(self._lease(cfg.discriminator_base, self.discriminator_adapter)) if use_filter \
                else SimpleNamespace(model=None, tokenizer=None)
            rows, stats = synthesize(cfg, generator.model, generator.tokenizer, self.seeds, discriminator=disc.model,
                                     discriminator_tokenizer=disc.tokenizer, references=self._real_inputs(),
                                     progress_path=cfg.path("synthesis_progress.jsonl"),
                                     show_progress=self.show_progress)
            if is_main_process():
                Dataset.from_list(rows).save_to_disk(os.path.join(out, "candidates"))
                Dataset.from_list([r for r in rows if r["accepted"]]).save_to_disk(os.path.join(out, "accepted"))
                write_json(os.path.join(out, "stats.json"), {**stats.to_dict(), "filter_margin": cfg.filter_margin})
            if cfg.compute_mmd:
                diagnostics = self._diagnostics(rows, generator.model, generator.tokenizer, out)
                if is_main_process():
                    write_json(os.path.join(out, "diagnostics.json"), diagnostics)
        wait_for_everyone()
        if is_main_process():
            os.remove(cfg.path("synthesis_progress.jsonl"))

    def _real_inputs(self) -> list[str]:
        """The real inputs known at transfer time: the seeds and the held-out inputs of `eval_file`."""
        cfg = self.config
        held_out = [e["input"] for e in load_examples(cfg.eval_file, what="eval_file")] if cfg.eval_file else []
        return list(dict.fromkeys(self.seeds + held_out))

    def _diagnostics(self, rows: list[dict], model, tokenizer, out: str) -> dict:
        """Paper Table 9: MMD to real inputs of the accepted and of the unfiltered candidates (same bandwidth)."""
        from .metrics import distinct_n, embed_texts, median_heuristic_bandwidth, mmd2, plot_projection

        cfg = self.config
        rng = random.Random(cfg.seed)
        real = self._real_inputs()
        real = rng.sample(real, min(len(real), 500))
        accepted = [r["input"] for r in rows if r["accepted"]]
        unfiltered = [r["input"] for r in rows]
        unfiltered = rng.sample(unfiltered, min(len(unfiltered), max(len(accepted), 500)))
        rejected = [r["input"] for r in rows if not r["passed"]][:500]
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
        if cfg.plot_projection and rejected:
            plot_projection(real_e, acc_e, embed_all(rejected), os.path.join(out, "projection.png"),
                            title=f"{cfg.task_name}: real vs accepted vs rejected")
        return result

    def _labels(self, out: str):
        from datasets import Dataset, load_from_disk

        from .synthesis import label

        cfg = self.config
        accepted = load_from_disk(cfg.path("synthesis", "accepted"))["input"]
        with self._lease(cfg.source_model, self.source_adapter) as teacher:
            rows = label(cfg, teacher.model, teacher.tokenizer, list(accepted), show_progress=self.show_progress)
        empty = sum(1 for r in rows if not r["answer"])
        if empty:
            logger.warning("%d of %d teacher answers are empty; they are kept as the teacher's behaviour.", empty, len(rows))
        if is_main_process():
            Dataset.from_list(rows).save_to_disk(out)

    def _target_adapter(self, out: str):
        from datasets import Dataset, load_from_disk

        from .trainer import DistillationTrainer

        cfg = self.config
        labels = load_from_disk(cfg.path("labels"))
        args = training_args(
            cfg, os.path.join(out, "trainer"), show_progress=self.show_progress, kd_loss=cfg.loss_type,
            sequence_weight=cfg.sequence_weight if cfg.loss_type != "sequence" else 0.0,
            beta=cfg.beta, kd_temperature=cfg.kd_temperature,
        )
        with contextlib.ExitStack() as stack:
            student = stack.enter_context(self._lease(cfg.target_model))
            teacher = SimpleNamespace(model=None, tokenizer=None)
            if cfg.loss_type != "sequence":  # token-level KD runs the teacher during training
                teacher = stack.enter_context(self._lease(cfg.source_model, self.source_adapter))
            rows = [{"prompt": task_prompt(student.tokenizer, x, cfg.prompt_template), "completion": c}
                    for x, c in zip(labels["input"], labels["completion"])]
            trainer = DistillationTrainer(model=student.model, teacher_model=teacher.model, args=args,
                                          train_dataset=Dataset.from_list(rows), processing_class=student.tokenizer,
                                          peft_config=peft_config_from(cfg, cfg.target_model),
                                          teacher_processing_class=teacher.tokenizer, lineage=self.lineage())
            student.model = trainer.model
            trainer.train()
            if is_main_process():
                trainer.model.save_pretrained(out)
                shutil.rmtree(os.path.join(out, "trainer"), ignore_errors=True)
                write_json(os.path.join(out, LINEAGE_FILE), self.lineage())
            del trainer

    def _evaluation(self, out: str):
        results = self.evaluate()
        summary = {k: v["accuracy"] for k, v in results.items()}
        summary["num_samples"] = next(iter(results.values()))["num_samples"]
        if not is_main_process():
            return
        write_json(os.path.join(out, "evaluation.json"), summary)
        write_json(os.path.join(out, "predictions.json"),
                   {k: v["predictions"] for k, v in results.items()})

    def evaluate(self, keys=("source_adapter", "target_base", "transferred")) -> dict:
        """Exact match on the first `max_eval_samples` of `eval_file` for each of `keys`: `source_adapter` (the
        teacher), `target_base`, `transferred` (needs the target_adapter stage). Returns `{key: evaluate(...)}`;
        the first two are read from and written to `evaluation_cache_dir` when it is set."""
        cfg = self.config
        examples = load_examples(cfg.eval_file, require_target=True, what="eval_file")[: cfg.max_eval_samples]
        kwargs = dict(prompt_template=cfg.prompt_template, answer_stop=cfg.answer_stop,
                      max_new_tokens=cfg.label_max_new_tokens, batch_size=cfg.generation_batch_size,
                      show_progress=self.show_progress)
        models = {
            "source_adapter": (cfg.source_model, self.source_adapter),
            "target_base": (cfg.target_model, None),
            "transferred": (cfg.target_model, cfg.path("target_adapter")),
        }
        results = {}
        for key in keys:
            base, adapter = models[key]
            cache = self._evaluation_cache_path(base, adapter, examples) if key != "transferred" else None
            if cache and os.path.exists(cache):
                results[key] = _read_json(cache)
                continue
            with self._lease(base, adapter) as lease:
                results[key] = evaluate(lease.model, lease.tokenizer, examples, desc=f"evaluate {key}", **kwargs)
            if cache and is_main_process():
                write_json(cache, results[key])
        return results

    def _evaluation_cache_path(self, base: str, adapter: str | None, examples: list[dict]) -> str | None:
        """Where an evaluation that does not depend on this run is kept, keyed by everything it depends on."""
        import hashlib

        cfg = self.config
        if not cfg.evaluation_cache_dir:
            return None
        key = hashlib.sha256(json.dumps(
            [base, cfg.dtype, examples, cfg.prompt_template, cfg.answer_stop, cfg.label_max_new_tokens],
            sort_keys=True).encode())
        if adapter:
            # The adapter's files, not its path: a retrained adapter in the same folder is another model.
            folder = adapter if os.path.isdir(adapter) else None
            key.update(adapter.encode())
            for name in sorted(os.listdir(folder)) if folder else ():
                if name.endswith((".safetensors", ".json")) and name != "stage.json":
                    with open(os.path.join(folder, name), "rb") as f:
                        key.update(name.encode() + f.read())
        return os.path.join(cfg.evaluation_cache_dir, key.hexdigest()[:32] + ".json")

    # -- Hub -------------------------------------------------------------------------------------------------------

    def push(self) -> dict:
        """Push what the settings ask for: the adapter, the discriminator (private), the labelled synthetic set.

        Seeds, task files and the run directory's other files are never uploaded. Pushed commits are recorded in
        `push.json`; a repo already pushed from this run is not pushed again unless `overwrite` is set.
        """
        from .hub import DISCRIMINATOR_KEYS, push_adapter, push_discriminator, push_synthetic_dataset

        cfg = self.config
        record = {} if cfg.overwrite else _read_json(cfg.path("push.json"))
        if cfg.push_to_hub and cfg.hub_model_id not in record:
            evaluation = _read_json(cfg.path("evaluation", "evaluation.json")) or None
            commit = push_adapter(cfg.path("target_adapter"), cfg.hub_model_id, lineage=self.lineage(),
                                  evaluation=evaluation, private=cfg.hub_private_repo, token=cfg.hub_token)
            record[cfg.hub_model_id] = {"what": "adapter", "commit": str(commit)}
        if cfg.hub_discriminator_id and cfg.hub_discriminator_id not in record:
            metrics = _read_json(cfg.path("discriminator", "metrics.json"))
            info = {k: v for k, v in metrics.items() if k in DISCRIMINATOR_KEYS}
            info.update(peft_type="lora", num_eval_samples=metrics.get("n_positive", 0) + metrics.get("n_negative", 0))
            commit = push_discriminator(cfg.path("discriminator"), cfg.hub_discriminator_id, info=info,
                                        private=cfg.hub_discriminator_private, token=cfg.hub_token)
            record[cfg.hub_discriminator_id] = {"what": "discriminator", "commit": str(commit)}
        if cfg.hub_dataset_id and cfg.hub_dataset_id not in record:
            from datasets import load_from_disk

            labels = load_from_disk(cfg.path("labels")).select_columns(["input", "completion"])
            lineage = self.lineage()
            info = {k: lineage[k] for k in ("task_name", "generator", "discriminator", "num_seeds", "num_accepted",
                                            "num_candidates", "acceptance_rate", "target_model")}
            info["teacher"] = f"{lineage['source_model']} + {lineage['source_adapter']}"
            commit = push_synthetic_dataset(labels, cfg.hub_dataset_id, info=info, token=cfg.hub_token)
            record[cfg.hub_dataset_id] = {"what": "synthetic dataset", "commit": str(commit)}
        write_json(cfg.path("push.json"), record)
        return record

    # -- report ----------------------------------------------------------------------------------------------------

    def lineage(self) -> dict:
        """Where the transferred adapter comes from, including earlier hops when the source was itself transferred."""
        cfg = self.config
        stats = _read_json(cfg.path("synthesis", "stats.json"))
        src_model, src_rev = split_revision(cfg.source_model)
        src_adapter, src_adapter_rev = split_revision(self.source_adapter)
        tgt_model, tgt_rev = split_revision(cfg.target_model)
        earlier = _read_json(os.path.join(src_adapter, LINEAGE_FILE)) if os.path.isdir(src_adapter) else {}
        chain = list(earlier.pop("chain", []) or []) + ([earlier] if earlier else [])
        return {
            "source_model": src_model, "source_model_revision": src_rev,
            "source_adapter": src_adapter, "source_adapter_revision": src_adapter_rev,
            "target_model": tgt_model, "target_model_revision": tgt_rev,
            "discriminator": self.discriminator_adapter if cfg.filter_mode == "discriminator" else None,
            "generator": cfg.generator, "task_name": cfg.task_name, "num_seeds": cfg.num_seeds,
            "num_accepted": stats.get("accepted"), "num_candidates": stats.get("candidates"),
            "acceptance_rate": stats.get("acceptance_rate"), "loss": cfg.loss_type, "peft_type": cfg.peft_type,
            "chain": chain,
        }

    def report(self) -> dict:
        cfg = self.config
        return {
            "task_name": cfg.task_name,
            "lineage": self.lineage() if os.path.isdir(cfg.path("target_adapter")) else None,
            "discriminator": _read_json(os.path.join(self.discriminator_adapter, "metrics.json"))
            if os.path.isdir(self.discriminator_adapter) else {},
            "synthesis": _read_json(cfg.path("synthesis", "stats.json")),
            "diagnostics": _read_json(cfg.path("synthesis", "diagnostics.json")),
            "pushed": _read_json(cfg.path("push.json")),
            "evaluation": _read_json(cfg.path("evaluation", "evaluation.json")),
            "stages": self.timings,
            "target_adapter": cfg.path("target_adapter"),
        }


def training_args(config: TransferConfig, output_dir: str, *, show_progress: bool = True, **overrides):
    """The `DistillationConfig` every training stage starts from: the paper's optimiser settings (AdamW without
    weight decay, linear schedule without warm-up) and the config's batch, length and logging; `overrides` win."""
    from .trainer import DistillationConfig

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
        save_strategy="no",
        seed=config.seed,
        bf16=torch.cuda.is_available() and config.dtype in ("auto", "bfloat16"),
        use_cpu=not torch.cuda.is_available(),  # also what makes CPU-only processes form a gloo group
        disable_tqdm=not show_progress,
    )
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


def run_transfer(config: TransferConfig, *, show_progress: bool = True, print_report: bool = True) -> dict:
    """Run (or resume) a whole transfer, or a chain of them; returns the (last hop's) report and prints its table."""
    hops = chain_configs(config)
    for hop in hops:
        transfer = Transfer(hop, show_progress=show_progress)
        report = transfer.run()
        if print_report:
            if len(hops) > 1:
                print(f"== hop {hops.index(hop) + 1} of {len(hops)}: {hop.source_model} -> {hop.target_model}")
            print(format_report(report))
    return report


def chain_configs(config: TransferConfig) -> list[TransferConfig]:
    """The hops of `config`: itself, then one per `chain_targets` entry.

    Hop k + 1 starts from hop k's target base and transferred adapter and reuses the first hop's discriminator, so
    no real data is needed after the first hop. Only the last hop pushes the adapter and the synthetic set.
    """
    if not config.chain_targets:
        return [config]
    if config.demo:
        Transfer(config, show_progress=False)  # fills the demo's models and files into `config`
    first = dataclasses.replace(config, chain_targets=None, demo=False, push_to_hub=False, hub_dataset_id=None)
    hops = [first]
    for k, target in enumerate(config.chain_targets, start=2):
        previous = hops[-1]
        hops.append(dataclasses.replace(
            previous,
            source_model=previous.target_model,
            source_adapter=previous.path("target_adapter"),
            target_model=target,
            generator_model=None,
            discriminator_adapter=previous.discriminator_adapter or previous.path("discriminator"),
            discriminator_model=previous.discriminator_base,
            hub_discriminator_id=None,
            output_dir=os.path.join(config.output_dir, f"hop-{k}"),
        ))
    hops[-1] = dataclasses.replace(hops[-1], push_to_hub=config.push_to_hub, hub_dataset_id=config.hub_dataset_id)
    return hops


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _strip_adapters(model):
    """The plain base under a `PeftModel`, as it was before the adapters (injected layers removed), in eval mode."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            model = model.get_base_model()  # prompt learning wraps the base without changing it
        else:
            model = model.unload()  # LoRA, DoRA, IA3: the original modules back, weights untouched
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    if hasattr(model, "_require_grads_hook"):  # set by PEFT training with gradient checkpointing
        model.disable_input_require_grads()
    model.config.use_cache = True
    model.eval()
    return model


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_gb() -> float | None:
    """This process's peak resident memory since the last `_reset_peak_rss`, in GB (None where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e9, 2)
    except OSError:
        pass
    return None


def _free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
