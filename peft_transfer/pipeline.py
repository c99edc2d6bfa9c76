"""A transfer over its run directory: the stages of `stages.STAGES` in order, each reused, resumed or redone.

A stage runs into `<stage>.incomplete/` and is renamed to `<stage>/` when complete, so a folder that exists is a
finished stage. Each finished stage records a fingerprint: a hash of the settings its table row names, of the
inputs it read (files, seeds, a given adapter's files) and of the fingerprints of the stages it read. A start with
the same command reuses the finished stages whose fingerprints match and goes on from the first unfinished one
(training resumes from its last checkpoint, synthesis from its progress file). When settings changed:

- the data owner's adapters (source adapter, discriminator) trained in the run are kept, as given adapters would
  be, with a warning that names the change (the later stages see them under their recorded fingerprints);
- a data stage (synthesis, labels) is never redone silently: the run stops before any work with a message that
  names the changed settings and the two ways out (`overwrite`, or another `output_dir`), but for a change of
  the labels' selection alone (`Stage.selection`), made again from the teacher's stored answers;
- the distillation and the evaluation are redone, with a line that says what changed.

`overwrite=True` redoes every stage, the progress file included. The report and the lineage are written from the
records of what made the artifacts. The module is a little over 400 lines because the fingerprints, the plan that
reads them and the report of what made each artifact are one job; the stage bodies are in `stages/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time

from . import preflight
from .config import TransferConfig
from .data import load_examples
from .distillation import LINEAGE_FILE
from .distributed import is_main_process, state, wait_for_everyone
from .errors import SettingsChangedError
from .evaluation import format_report
from .modeling import ModelPool, free_memory, peak_rss_gb, reset_peak_rss, split_revision
from .rundir import LABELLED, RunDir, hash_path, read_json, write_json
from .stages import STAGE_NAMES, STAGES, stage
from .tracking import StageTracker

logger = logging.getLogger(__name__)

# What the synthesis progress file is keyed by: the synthesis settings except those a restart may change and still
# reuse the stored candidates (a margin re-takes the verdicts from the stored scores; N and the budget only decide
# when to stop; the diagnostics come after).
PROGRESS_EXEMPT = ("filter_margin", "target_false_accept_rate", "num_samples", "compute_mmd", "embedding_model",
                   "plot_projection", "near_duplicate_similarity")


class Transfer:
    """One transfer over its run directory. `Transfer(config).run()` does every stage that is not done yet."""

    def __init__(self, config: TransferConfig, *, show_progress: bool = True):
        self.config = config
        self.show_progress = show_progress
        self.dirs = RunDir(config.output_dir)
        self.timings: dict[str, dict] = {}
        # Under DeepSpeed, training partitions a model's weights in place: a base cannot be reused after it.
        self.pool = ModelPool(
            enabled=config.keep_models_loaded and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true",
            dtype=config.dtype, trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation, cache_implementation=config.cache_implementation,
            token=config.hub_token)
        preflight.check_output_dir(config.output_dir)
        self.tracker = StageTracker(config, self.dirs)
        self._seeds = None
        self._records = None
        self._hashes: dict[str, str] = {}
        self._stored_answers: dict[str, str] = {}  # stage -> what it stored before its selection, to start from

    # -- the run ---------------------------------------------------------------------------------------------------

    def run(self, stages: tuple[str, ...] | None = None) -> dict:
        cfg = self.config
        st = state()
        if st.is_main_process:
            logger.info("transfer over %d process%s (%s)", st.num_processes, "es" if st.num_processes > 1 else "",
                        st.distributed_type.value if hasattr(st.distributed_type, "value") else st.distributed_type)
        chosen = [stage(name) for name in (stages or STAGE_NAMES)]
        todo = [s for s in chosen if s.needed(cfg)]
        preflight.check(self, todo)  # files, seeds, adapters, tokenizers: before any work
        if cfg.reuse_stages_from:
            self.reuse_stages(cfg.reuse_stages_from, todo)
        plan = self.plan(todo)  # raises SettingsChangedError before any work
        if is_main_process():
            write_json(self.dirs.config, cfg.to_dict())
        try:
            for i, (s, action) in enumerate(plan):
                # Keep only the bases that this and the later stages use.
                self.pool.keep_only(set().union(*(later.bases(cfg) for later, act in plan[i:]
                                                  if act in ("run", "redo"))))
                self._stage(s, action)
                self.tracker.log_stage(s.name, self.timings[s.name])
        finally:
            self.tracker.close()
        self.pool.keep_only(set())
        if stages is None and (cfg.push_to_hub or cfg.hub_discriminator_id or cfg.hub_dataset_id) and is_main_process():
            self.push()
        wait_for_everyone()
        report = self.report()
        if is_main_process():
            write_json(self.dirs.report, report)
            self._write_html(report)
        return report

    def _write_html(self, report: dict) -> None:
        """`report.html` beside `report.json`: a view of the artifacts; a failure to draw it never fails the run."""
        from .report_html import write_html_report

        try:
            write_html_report(self.dirs.root, report)
        except Exception as e:  # noqa: BLE001 - the run's results are in place; say why the page is missing
            logger.warning("report.html was not written (%s: %s); report.json has the results.", type(e).__name__, e)

    def plan(self, todo) -> list[tuple]:
        """`(stage, action)` for each stage: "reuse", "keep" (made with other settings, kept: logged), "run" or
        "redo" (the reason logged).

        Raises:
            `SettingsChangedError`: a finished data stage (synthesis, labels) was made with other settings.
        """
        cfg, records = self.config, self.records()
        plan, conflicts = [], []
        for s in todo:
            if not self.dirs.finished(s.name):
                plan.append((s, "run"))
                continue
            if cfg.overwrite:
                plan.append((s, "redo"))
                continue
            changes = describe_changes(self.dirs.read_record(s.name), records[s.name])
            if not changes:
                plan.append((s, "reuse"))
            elif s.on_change == "keep":
                if is_main_process():
                    logger.warning("  %-15s kept, made with other settings (%s); --overwrite true retrains it",
                                   s.name, "; ".join(changes))
                plan.append((s, "keep"))
            elif stored := self._stored_answers_of(s, self.dirs):
                self._stored_answers[s.name] = stored
                if is_main_process():
                    logger.info("  %-15s made again from its stored answers, only the selection changed: %s", s.name,
                                "; ".join(changes))
                plan.append((s, "redo"))
            elif s.on_change == "redo":
                if is_main_process():
                    logger.info("  %-15s redone: %s", s.name, "; ".join(changes))
                plan.append((s, "redo"))
            else:
                conflicts.append(f"{s.name}: " + "; ".join(changes))
        if conflicts:
            redo = [s.name for s, act in plan if act in ("run", "redo")]
            raise SettingsChangedError(
                f"{cfg.output_dir} holds stages made with other settings than these:\n  "
                + "\n  ".join(conflicts)
                + "\nFinished data stages are never redone silently. Run the same command with `--overwrite true` "
                "to redo the whole run there, or give another `--output_dir` to keep this one (with "
                f"`--reuse_stages_from {cfg.output_dir}` it copies the stages these settings would make the same)"
                + (f" (stages that would run anyway: {', '.join(redo)})." if redo else ".")
            )
        return plan

    def _stage(self, s, action: str) -> None:
        """Run one stage into `<name>.incomplete/`, renamed to `<name>/` when complete (main process only touches
        the folders; every process runs the body, which writes only on the main process)."""
        dirs, record = self.dirs, self.records()[s.name]
        final, tmp = dirs.stage(s.name), dirs.incomplete(s.name)
        wait_for_everyone()  # every process sees the same folders before deciding
        main = is_main_process()  # one line per stage, not one per process
        if action in ("reuse", "keep"):  # "keep" was announced by `plan`, with what changed
            if main and action == "reuse":
                logger.info("  %-15s done earlier with these settings, kept", s.name)
            self.timings[s.name] = {**_stage_info(dirs.read_record(s.name)), "skipped": True}
            return
        if main:
            keep = (s.resumable and not self.config.overwrite
                    and dirs.read_record(s.name, incomplete=True).get("fingerprint") == record["fingerprint"])
            if os.path.isdir(tmp) and not keep:
                shutil.rmtree(tmp)
            os.makedirs(tmp, exist_ok=True)
            if s.name in self._stored_answers:  # before the finished folder it may sit in goes
                shutil.copytree(self._stored_answers[s.name], os.path.join(tmp, LABELLED))
            if os.path.isdir(final):
                shutil.rmtree(final)
            write_json(dirs.stage_record(s.name, incomplete=True), {"stage": s.name, **record})
        wait_for_everyone()
        if main:
            logger.info("▸ %s ...", s.name)
        reset_peak_rss()
        start = time.perf_counter()
        s.body(self, tmp)
        info = {"seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb()}
        wait_for_everyone()
        if main:
            self._finish(s.name, {**info, **record})
        wait_for_everyone()
        self.timings[s.name] = info
        free_memory()
        if main:
            rss = f"peak RSS {info['peak_rss_gb']:.1f} GB" if info["peak_rss_gb"] is not None else ""
            logger.info("✓ %-15s %7.1f s  %-17s %s", s.name, info["seconds"], rss,
                        s.summary(dirs) if s.summary else "")

    def reuse_stages(self, path: str, todo) -> list[str]:
        """Copy here each stage of `todo` that this run has not finished and the run at `path` has, made the same
        way (equal fingerprints: the same settings, inputs and earlier stages); its record keeps what made it and
        says where it came from. A stage made otherwise there is made here, with a line that says why. Returns the
        stages copied."""
        src, records, copied = RunDir(path), self.records(), []
        for s in todo:
            if self.dirs.finished(s.name) or not src.finished(s.name):
                continue
            made = src.read_record(s.name)
            changes = describe_changes(made, records[s.name])
            if changes:
                stored = self._stored_answers_of(s, src)
                if stored:
                    self._stored_answers[s.name] = stored
                if is_main_process():
                    logger.info("  %-15s not reused from %s: %s%s", s.name, path, "; ".join(changes),
                                "; made from its stored answers" if stored else "")
                continue
            if is_main_process():
                shutil.rmtree(self.dirs.incomplete(s.name), ignore_errors=True)
                shutil.copytree(src.stage(s.name), self.dirs.incomplete(s.name))
                origin = f"{os.path.abspath(path)} (same settings)"
                self._finish(s.name, {**made, "provided": f"{made['provided']}, via {origin}"
                                      if made.get("provided") else origin})
                logger.info("  %-15s reused from %s, made there with these settings", s.name, path)
            copied.append(s.name)
        wait_for_everyone()
        return copied

    def _stored_answers_of(self, s, dirs: RunDir) -> str | None:
        """What the stage `s` finished in `dirs` stored before its selection (`Stage.selection`), where it differs
        from what these settings would make only in that selection: `_stage` makes it from there, not from the
        start."""
        stored = os.path.join(dirs.stage(s.name), LABELLED)
        made, now = dirs.read_record(s.name), self.records()[s.name]
        if (not s.selection or not os.path.isdir(stored) or "fingerprint" not in made
                or made.get("before_selection") != now["before_selection"]):
            return None
        return stored

    def provide(self, name: str, write, *, made_by: str) -> None:
        """Put a stage's artifacts in place from elsewhere (an ablation's inputs, a subset of another run's).

        `write(folder)` writes them as the stage would. The record carries the fingerprint of the current settings,
        so the later stages take it as done, and says `made_by` instead of a time: the report shows where the
        artifacts came from.
        """
        stage(name)  # an unknown name is refused
        dirs = self.dirs
        if is_main_process():
            shutil.rmtree(dirs.incomplete(name), ignore_errors=True)
            shutil.rmtree(dirs.stage(name), ignore_errors=True)
            os.makedirs(dirs.incomplete(name))
            write(dirs.incomplete(name))
            self._finish(name, {"seconds": 0.0, "provided": made_by, **self.records()[name]})
        wait_for_everyone()

    def _finish(self, name: str, record: dict) -> None:
        """Write the stage's record into its `.incomplete` folder and rename the folder into place (main process)."""
        write_json(self.dirs.stage_record(name, incomplete=True), {"stage": name, **record})
        os.replace(self.dirs.incomplete(name), self.dirs.stage(name))

    # -- fingerprints ----------------------------------------------------------------------------------------------

    def records(self) -> dict[str, dict]:
        """For each stage: `fingerprint`, and the `settings`, `inputs` and `reads` it is the hash of (what these
        settings would make; a kept owner stage is read by the later stages under its recorded fingerprint)."""
        if self._records is None:
            cfg, hashes, records = self.config, self.input_hashes(), {}
            for s in STAGES:
                rec = {
                    "settings": {name: _plain(getattr(cfg, name)) for name in s.settings(cfg)},
                    "inputs": {name: hashes[name] for name in s.inputs},
                    "reads": {name: self._artifact_fingerprint(name, records) for name in s.reads(cfg)},
                }
                rec["fingerprint"] = _hash(rec)
                if s.selection:  # what it chooses from: the same but for its selection settings
                    rec["before_selection"] = _hash({**rec, "fingerprint": None, "settings": {
                        k: v for k, v in rec["settings"].items() if k not in s.selection}})
                records[s.name] = rec
            self._records = records
        return self._records

    def _artifact_fingerprint(self, name: str, records: dict) -> str:
        """The fingerprint of what a stage reads as `name`: the given adapter's files, the record of a finished
        stage that is kept whatever its settings, or what the current settings make."""
        given = {"source_adapter": self.config.source_adapter, "discriminator": self.config.discriminator_adapter}
        if given.get(name):
            return self._adapter_hash(given[name])
        made = self.dirs.read_record(name) if self.dirs.finished(name) else {}
        if stage(name).on_change == "keep" and not self.config.overwrite and made.get("fingerprint"):
            return made["fingerprint"]
        return records[name]["fingerprint"]

    def _adapter_hash(self, ref: str) -> str:
        """A local adapter's files hashed (once per run), or a Hub ref as given (it names its revision, or follows
        main)."""
        if ref not in self._hashes:
            self._hashes[ref] = hash_path(ref) if os.path.isdir(ref) else ref
        return self._hashes[ref]

    def input_hashes(self) -> dict[str, str | None]:
        cfg = self.config
        return {
            "train_file": hash_path(cfg.train_file) if cfg.train_file and os.path.isfile(cfg.train_file) else None,
            "eval_file": hash_path(cfg.eval_file) if cfg.eval_file and os.path.isfile(cfg.eval_file) else None,
            "seeds": hashlib.sha256(json.dumps(self.seeds).encode()).hexdigest()[:16],
        }

    def progress_key(self) -> dict:
        """What the synthesis progress file must have been made by to be reused (see `PROGRESS_EXEMPT`)."""
        rec = self.records()["synthesis"]
        return {"settings": {k: v for k, v in rec["settings"].items() if k not in PROGRESS_EXEMPT},
                "inputs": rec["inputs"], "reads": rec["reads"]}

    # -- inputs ----------------------------------------------------------------------------------------------------

    @property
    def seeds(self) -> list[str]:
        if self._seeds is None:
            from .data import load_seeds

            self._seeds = load_seeds(self.config.seed_file or self.config.train_file, self.config.num_seeds)
        return self._seeds

    @property
    def source_adapter(self) -> str:
        return self.config.source_adapter or self.dirs.source_adapter

    @property
    def discriminator_adapter(self) -> str:
        return self.config.discriminator_adapter or self.dirs.discriminator

    def real_inputs(self) -> list[str]:
        """The real inputs known at transfer time: the seeds and the held-out inputs of `eval_file`."""
        cfg = self.config
        held_out = [e["input"] for e in load_examples(cfg.eval_file, what="eval_file")] if cfg.eval_file else []
        return list(dict.fromkeys(self.seeds + held_out))

    def evaluate(self, keys=("source_adapter", "target_base", "transferred")) -> dict:
        """Exact match on the first `max_eval_samples` of `eval_file` for each of `keys` (`evaluation.evaluate_run`):
        `source_adapter` (the teacher), `target_base`, `transferred` (needs the target_adapter stage)."""
        from .evaluation import evaluate_run

        return evaluate_run(self, keys)

    def _models(self) -> dict[str, tuple[str, str | None]]:
        """`(base, adapter)` of each of the three evaluated models."""
        cfg = self.config
        return {"source_adapter": (cfg.source_model, self.source_adapter), "target_base": (cfg.target_model, None),
                "transferred": (cfg.target_model, self.dirs.target_adapter)}

    def evaluate_lm_eval(self, keys=("source_adapter", "target_base", "transferred"), folder: str | None = None) -> dict:
        """lm-evaluation-harness on each of `keys` (`evaluation.evaluate_run_lm_eval`)."""
        from .evaluation import evaluate_run_lm_eval

        return evaluate_run_lm_eval(self, keys, folder)

    # -- Hub and report --------------------------------------------------------------------------------------------

    def push(self) -> dict:
        """Push what the settings ask for (see `hub.push_run`); pushed commits are recorded in `push.json`."""
        from .hub import push_run

        return push_run(self.config, self.dirs, self.lineage())

    def lineage(self) -> dict:
        """Where the transferred adapter comes from, including earlier hops when the source was itself transferred."""
        cfg = self.config
        stats = read_json(self.dirs.synthesis_stats)
        src_model, src_rev = split_revision(cfg.source_model)
        src_adapter, src_adapter_rev = split_revision(self.source_adapter)
        tgt_model, tgt_rev = split_revision(cfg.target_model)
        earlier = read_json(os.path.join(src_adapter, LINEAGE_FILE)) if os.path.isdir(src_adapter) else {}
        chain = list(earlier.pop("chain", []) or []) + ([earlier] if earlier else [])
        return {
            "source_model": src_model, "source_model_revision": src_rev,
            "source_adapter": src_adapter, "source_adapter_revision": src_adapter_rev,
            "target_model": tgt_model, "target_model_revision": tgt_rev,
            "discriminator": self.discriminator_adapter if cfg.filter_mode == "discriminator" else None,
            "generator": cfg.generator, "task_name": cfg.task_name, "num_seeds": cfg.num_seeds,
            "num_accepted": stats.get("accepted"), "num_candidates": stats.get("candidates"),
            "acceptance_rate": stats.get("acceptance_rate"), "kd_loss": cfg.kd_loss, "peft_type": cfg.peft_type,
            "chain": chain,
        }

    def report(self) -> dict:
        dirs = self.dirs
        made = {s.name: dirs.read_record(s.name) for s in STAGES if dirs.finished(s.name)}
        return {
            "task_name": self.config.task_name,
            "lineage": self.lineage() if dirs.finished("target_adapter") else None,
            "discriminator": read_json(os.path.join(self.discriminator_adapter, "metrics.json"))
            if os.path.isdir(self.discriminator_adapter) else {},
            "synthesis": read_json(dirs.synthesis_stats),
            "labels": read_json(dirs.label_stats),
            "diagnostics": read_json(dirs.diagnostics),
            "pushed": read_json(dirs.push_record),
            "evaluation": read_json(dirs.evaluation),
            "lm_eval": read_json(dirs.lm_eval),
            "stages": self.timings,
            # What made each finished stage: its fingerprint and the settings and inputs it is the hash of.
            "made_by": {name: {k: rec[k] for k in ("provided", "fingerprint", "settings", "inputs", "reads") if k in rec}
                        for name, rec in made.items()},
            "target_adapter": dirs.target_adapter,
        }


def describe_changes(made: dict, now: dict) -> list[str]:
    """What differs between the record of a finished stage and the settings now, in words (empty: nothing)."""
    if made.get("fingerprint") == now["fingerprint"]:
        return []
    if "fingerprint" not in made:
        return ["made by an earlier version that did not record its settings"]
    out = []
    for group, form in (("settings", "{key} {was} -> {now}"), ("inputs", "{key} changed ({was} -> {now})")):
        old, new = made.get(group, {}), now[group]
        for key in sorted(set(old) | set(new)):
            was, is_ = old.get(key, "<unset>"), new.get(key, "<unset>")
            if was != is_:
                out.append(form.format(key=key, was=_short(was), now=_short(is_)))
    for key in sorted(set(made.get("reads", {})) | set(now["reads"])):
        if made.get("reads", {}).get(key) != now["reads"].get(key):
            out.append(f"its input {key} is another one")
    return out or ["its fingerprint differs"]


def _hash(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value):
    """A setting as JSON has it (lists for tuples), so that a record read back compares equal."""
    return json.loads(json.dumps(value, default=str))


def _stage_info(record: dict) -> dict:
    return {"seconds": record.get("seconds", 0.0), "peak_rss_gb": record.get("peak_rss_gb")}


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
            page = RunDir(hop.output_dir).report_html
            if os.path.exists(page):
                print(f"Report: {page}")
    return report


def chain_configs(config: TransferConfig) -> list[TransferConfig]:
    """The hops of `config`: itself, then one per `chain_targets` entry.

    Hop k + 1 starts from hop k's target base and transferred adapter and reuses the first hop's discriminator, so
    no real data is needed after the first hop. Only the last hop pushes the adapter and the synthetic set.
    """
    if not config.chain_targets:
        return [config]
    first = dataclasses.replace(config, chain_targets=None, push_to_hub=False, hub_dataset_id=None)
    hops = [first]
    for k, target in enumerate(config.chain_targets, start=2):
        previous = hops[-1]
        hops.append(dataclasses.replace(
            previous,
            source_model=previous.target_model,
            source_adapter=RunDir(previous.output_dir).target_adapter,
            target_model=target,
            generator_model=None,
            discriminator_adapter=previous.discriminator_adapter or RunDir(previous.output_dir).discriminator,
            discriminator_model=previous.discriminator_base,
            hub_discriminator_id=None,
            output_dir=os.path.join(config.output_dir, f"hop-{k}"),
        ))
    hops[-1] = dataclasses.replace(hops[-1], push_to_hub=config.push_to_hub, hub_dataset_id=config.hub_dataset_id)
    return hops
