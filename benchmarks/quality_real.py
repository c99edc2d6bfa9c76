"""The paper's quality tables on real pretrained models, on CPU: the real-model world beside the tiny one.

    python benchmarks/quality_real.py --out runs/quality-real                        # every task and pair, hours
    python benchmarks/quality_real.py --out runs/quality-real --tasks addition --pairs smollm2-gemma3
    python benchmarks/quality_real.py --out runs/quality-real --task-file my/train.jsonl --test-file my/test.jsonl
    python benchmarks/quality_real.py --report runs/quality-real --out benchmarks/results/quality-real \
        --prior benchmarks/results/quality-real/results.json   # keep the rows an earlier run folder measured

Needs the `real` and `qwen` extras (`bash scripts/setup.sh --qwen`). Models (`peft_transfer.sources.PACKAGED`):
SmolLM2-135M-Instruct, Gemma-3-270M and Qwen2.5-Coder-0.5B-Instruct, three families with three tokenizers. Pairs:

    smollm2-gemma3   SmolLM2-135M -> Gemma-3-270M     (another family, a 5x larger vocabulary)
    smollm2-qwen     SmolLM2-135M -> Qwen2.5-Coder-0.5B
    qwen-smollm2     Qwen2.5-Coder-0.5B -> SmolLM2-135M (a strong teacher moved onto a small, cheap base)

Tasks: the BIG-bench-style tasks of `benchmarks/real_tasks.py` (250 train / 300 test / 5 seeds each), or any task
through `--task-file`. Per task and source model, an `owner-<source>` row trains the source adapter and the
discriminator once (the data owner's half); then per pair, in this order:

    translora-<pair>     Trans-LoRA: the target writes candidates, the discriminator filters (margin 0), the
                         teacher labels, a fresh LoRA on the target learns them                      (Table 1)
    unfiltered-<pair>    the same without the filter                                                   (Table 5)
    seeds-only-<pair>    distilled on the 5 seeds' inputs only (teacher labels)                        (Table 5)
    random-text-<pair>   distilled on random generic sentences (teacher labels)                        (Table 5)

Every row is a `Transfer` run directory `<out>/<task>/<row>/`, so a killed run goes on where it stopped (per row,
and mid-synthesis); a row whose `row.json` exists is not run again. The source adapter's and target base's
accuracies are evaluated once per task and model (`evaluation_cache_dir`). MMD² of accepted and unfiltered
candidates uses all-MiniLM-L6-v2 embeddings (Table 9). Every 95% interval is the Wilson interval of the accuracy on
the test inputs.

The rows others build on outlive the run folder: the report copies the finished stages of each `owner-*` row (the
source adapter and discriminator, without training checkpoints: a few MB each) to `owners/` beside `results.json`,
and those of each row a change reuses inputs from (the paper's row and a few changes: synthetic inputs, labels and
held-out predictions) to `stages/`; a run given that `--prior` puts them back in place of a missing row, with their
stage records (so the pipeline checks they were made by the same settings and data) and, for a finished row, its
record marked `carried_from`: a later session adds rows without training the owner or making the paper's inputs
again, or runs only what a cut row lacked.

Outputs: `results.json` (`tables.table1.<pair>.per_task.<task>` with `source_lora`, `target_base`, `translora`, as
the tiny world's; every row, setting, version and the command), `results.md` (tables and the claims (a)-(d) as
holds/fails with their numbers) and `fig3_scatter.png`. Rows that failed are reported with their error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from benchmarks.quality import (  # noqa: E402
    _mean,
    _on_every_task,
    _pct,
    _prepare,
    _verdict,
    _versions,
    claims_ab_lines,
    external_task,
    random_text,
    table9_lines,
)

MODELS = {
    "smollm2": "packaged:smollm2-135m-instruct",
    "gemma3": "packaged:gemma-3-270m",
    "qwen": "packaged:qwen2.5-coder-0.5b-instruct",
}
PAIRS = {"smollm2-gemma3": ("smollm2", "gemma3"), "smollm2-qwen": ("smollm2", "qwen"),
         "qwen-smollm2": ("qwen", "smollm2")}
ABLATIONS = ("translora", "unfiltered", "seeds-only", "random-text")  # paper Table 5 order
# The row of the library's default data settings (2,000 accepted inputs, the surer half of their labels, a LoRA on
# every linear layer) at the benchmark's learning rate and 3 epochs (the library's default is 5): claim (e).
DEFAULT = "label-selection+n-scaling"
GAP_ROWS = ("real-inputs", "real-data")
# Each change alone against the paper's method: its settings, the stages it reuses unchanged (the same synthetic
# inputs, or the same inputs and labels) so that only the change differs, and, where not the translora row, the row
# it reuses them from.
IMPROVEMENTS = {
    "self-consistency": (dict(label_votes=5, label_min_agreement=0.6), ("synthesis",)),
    "token-selection": (dict(token_selection_ratio=0.5), ("synthesis", "labels")),
    # TiTok's curriculum as its paper describes it: the source with its adapter writes the inputs, no filter, loss
    # on the top half of the tokens by the adapter's contrastive excess.
    "titok": (dict(generate_with_source_adapter=True, filter_mode="none", discriminator_adapter=None,
                   token_selection_ratio=0.5), ()),
    # Paper Fig. 5: four times the accepted inputs at the same number of training steps; twice the steps on the
    # same inputs (what the gap rows point at when the target cannot learn the task from 250 inputs); 15 seeds.
    "n-scaling": (dict(num_samples=1000, num_train_epochs=1.5, candidate_budget=12000), ()),
    "more-steps": (dict(num_train_epochs=12), ("synthesis", "labels")),
    # The new adapter on every linear layer (PEFT's all-linear) at the paper's rank and alpha, on the same inputs and
    # labels: what the student can copy of its teacher when the adapter is not limited to q/v.
    "all-linear": (dict(lora_target_modules=["all-linear"]), ("synthesis", "labels")),
    # Both together (the two changes that helped alone on the paper row's inputs and labels).
    "all-linear+more-steps": (dict(lora_target_modules=["all-linear"], num_train_epochs=12), ("synthesis", "labels")),
    # Four times the accepted inputs at the number of steps of all-linear+more-steps (1,000 inputs, 3 epochs), on its
    # own synthesis, measured against that row: what more diverse inputs add once the adapter can learn them.
    "all-linear+n-scaling": (dict(lora_target_modules=["all-linear"], num_samples=1000, num_train_epochs=3,
                                  candidate_budget=12000), (), "all-linear+more-steps"),
    # The labels the teacher is surest of (`label_selection_ratio`): the surest half of all-linear+n-scaling's 1,000
    # inputs at its number of steps (500 inputs, 6 epochs), on its inputs; and the surest 1,000 of 2,000 accepted
    # inputs of its own (3 epochs): the same steps and number of inputs as all-linear+n-scaling, twice the synthesis.
    "label-selection": (dict(lora_target_modules=["all-linear"], num_samples=1000, num_train_epochs=6,
                             candidate_budget=12000, label_selection_ratio=0.5), ("synthesis",), "all-linear+n-scaling"),
    "label-selection+n-scaling": (dict(lora_target_modules=["all-linear"], num_samples=2000, num_train_epochs=3,
                                       candidate_budget=24000, label_selection_ratio=0.5), (), "all-linear+n-scaling"),
    # The default's surer half kept within each quarter of the inputs by length (`label_selection_strata` 4), on its
    # inputs: a teacher surer of short inputs otherwise keeps mostly short ones (word_sorting's kept lists: 53 of
    # 1,000 of 6 or 7 words, against 397 of the 2,000 accepted and half the real ones).
    "length-strata": (dict(lora_target_modules=["all-linear"], num_samples=2000, num_train_epochs=3,
                           candidate_budget=24000, label_selection_ratio=0.5, label_selection_strata=4),
                      ("synthesis",), "label-selection+n-scaling"),
    # The default's inputs and labels (its surest 1,000 of 2,000) distilled for 6 epochs instead of 3: whether the
    # student, not its data, holds the default below its teacher.
    "label-selection+more-steps": (dict(lora_target_modules=["all-linear"], num_samples=2000, num_train_epochs=6,
                                        candidate_budget=24000, label_selection_ratio=0.5), ("synthesis", "labels"),
                                   "label-selection+n-scaling"),
    # The surest quarter of the default's 2,000 inputs (500), kept within each quarter by length, at the steps of
    # 1,000 inputs (6 epochs): fewer labels, righter ones (word_sorting's surest quarter of its labels is right 38%
    # of the time, its surer half 27%).
    "surest-quarter": (dict(lora_target_modules=["all-linear"], num_samples=2000, num_train_epochs=6,
                            candidate_budget=24000, label_selection_ratio=0.25, label_selection_strata=4),
                       ("synthesis",), "label-selection+n-scaling"),
    # The default's settings with the generator sampling at temperature 0.5 instead of 1: Gemma-3 then writes far
    # more inputs in the task's format before any filter (on 128 prompts of the 5 seeds: boolean_expressions 112
    # against 41, dyck_languages 110 against 47, addition 127 against 99) and word_sorting lists with 40% of their
    # words from the task's own against 10%, at some cost in distinct inputs (102 and 99 of 128 against 121 and 120).
    "low-temperature": (dict(lora_target_modules=["all-linear"], num_samples=2000, num_train_epochs=3,
                             candidate_budget=24000, label_selection_ratio=0.5, temperature=0.5), (),
                        "label-selection+n-scaling"),
    "seeds-15": (dict(num_seeds=15), ()),
    # Not a change but the yardstick of the others: the paper's row trained again on its own inputs and labels with
    # another training seed (the run's seed plus the one given here: the data order and the new LoRA's start), so
    # that a change's difference can be set against what training alone moves.
    "retrained": (dict(seed=1), ("synthesis", "labels")),
    # A discriminator that knows formats: half its negatives real train inputs perturbed in format (the owner trains
    # it beside the paper's, from the same source adapter: `OWNER_VARIANTS`); the transfer filters with it.
    "format-negatives": (dict(), ()),
    # The filter's discriminator a LoRA on every linear layer (the library's default) instead of the paper's q/v,
    # trained the same way from the same source adapter; a new synthesis filtered by it, the rest the paper's.
    "discriminator-all-linear": (dict(), ()),
    # The changes that helped alone, together, on the inputs and labels of the row named third: format negatives and
    # 12 epochs; all three.
    "format-negatives+more-steps": (dict(num_train_epochs=12), ("synthesis", "labels"), "format-negatives"),
    "combined": (dict(lora_target_modules=["all-linear"], num_train_epochs=12), ("synthesis", "labels"),
                 "format-negatives"),
}
# Rows that need a discriminator the paper's owner row did not train: its settings, trained once per task and
# source in `owner-<source>-<variant>` (the discriminator stage alone, from the owner's source adapter).
OWNER_VARIANTS = {"format-negatives": dict(discriminator_format_negatives=0.5),
                  "all-linear-discriminator": dict(lora_target_modules=["all-linear"])}
ROW_OWNER = {"format-negatives": "format-negatives", "format-negatives+more-steps": "format-negatives",
             "combined": "format-negatives", "discriminator-all-linear": "all-linear-discriminator"}
ROWS = (*ABLATIONS, *GAP_ROWS, *IMPROVEMENTS)

# Chosen by measurement on 2 CPU cores (bf16): LoRA r=8 on q/v, lr 2e-3 (the paper's 2e-5 is for 7B models and 20
# epochs; it barely moves a 135M-630M model in the few hundred steps a CPU affords), batch 16. The paper's adapter
# (r 8, alpha 8 on q/v) and its labels (every one: `label_selection_ratio` 1) are named here, not taken from
# `TransferConfig`'s defaults, so that the paper's row and the owners' adapters stay the paper's whatever the library's
# default becomes.
SETTINGS = dict(
    n_train=250, n_test=300, n_seeds=5,
    transfer=dict(
        num_samples=250, candidate_budget=3000, generation_batch_size=64, filter_batch_size=64,
        max_candidate_tokens=48, label_max_new_tokens=24, learning_rate=2e-3, num_train_epochs=6,
        per_device_train_batch_size=16, source_learning_rate=2e-3, source_epochs=10,
        lora_r=8, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], label_selection_ratio=1.0,
        discriminator_learning_rate=1e-3, discriminator_epochs=3, max_eval_samples=300, logging_steps=1000,
        embedding_model="packaged:all-minilm-l6-v2",
    ),
)


def wilson(p: float | None, n: int | None, z: float = 1.96) -> list[float] | None:
    """95% Wilson interval of an accuracy `p` measured on `n` inputs."""
    if p is None or not n:
        return None
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def row_budget(record: dict) -> int:
    """The candidate budget a row was made with (rows recorded before it was recorded had the default)."""
    return record.get("candidate_budget", SETTINGS["transfer"]["candidate_budget"])


def budget_raised(record: dict, budget: int) -> bool:
    """Whether a recorded row is run again: its synthesis ran out of a smaller candidate budget than `budget` (the
    stored candidates are reused, so it continues where it stopped)."""
    return (record.get("error") or "").startswith("SynthesisError") and row_budget(record) < budget


def owner_variant_config(common: dict, variant: str, source: str, adapter: str, task_dir: str):
    """The config of the owner row that trains `variant`'s discriminator (`OWNER_VARIANTS`) from the owner's source
    adapter: the task's settings with the variant's on top."""
    from peft_transfer import TransferConfig

    return TransferConfig(**{**common, **OWNER_VARIANTS[variant]}, source_model=MODELS[source], source_adapter=adapter,
                          target_model=MODELS[source], output_dir=os.path.join(task_dir, f"owner-{source}-{variant}"))


def run_task(task_dir: str, task_name: str, description: str, pairs: list[str], seed: int,
             only: tuple[str, ...] = ROWS, kept: str | None = None, transfer: dict | None = None) -> list[dict]:
    """The rows of one task over `pairs` (those named in `only`, and the owner rows and rows they reuse); each
    row's record is kept in `<row>/row.json` (resume per row). A kept row (`keeps`) missing here is first restored
    from `kept` (a results folder holding `owners/` and `stages/`) where it has one. `transfer` replaces
    `SETTINGS["transfer"]` (a larger `candidate_budget` in it continues the rows that ran out of a smaller one)."""
    from peft_transfer import Transfer, TransferConfig
    from peft_transfer.data import load_examples
    from peft_transfer.rundir import RunDir

    data = os.path.join(task_dir, "data")
    common = dict(transfer or SETTINGS["transfer"], task_name=description, seed=seed,
                  train_file=os.path.join(data, "train.jsonl"), eval_file=os.path.join(data, "test.jsonl"),
                  seed_file=os.path.join(data, "seeds.jsonl"),
                  evaluation_cache_dir=os.path.join(task_dir, "evaluation_cache"))
    rows, only = [], rows_needed(only)

    def run(row: str, cfg: TransferConfig, *, pair: str, setting: str, stages=None) -> dict:
        where = keeps(row)
        if kept and where:
            restore_row(os.path.join(kept, where, task_name, row), cfg.output_dir)
        record_path = os.path.join(cfg.output_dir, "row.json")
        if os.path.exists(record_path):
            with open(record_path) as f:
                record = json.load(f)
            if not budget_raised(record, cfg.candidate_budget):
                rows.append(record)
                return record
            print(f"[{task_name}] {row}: ran out of its candidate budget of {row_budget(record)}; continued with "
                  f"{cfg.candidate_budget}", flush=True)
        start = time.perf_counter()
        record = dict(task=task_name, row=row, pair=pair, setting=setting, source_model=cfg.source_model,
                      target_model=cfg.target_model, filter_mode=cfg.filter_mode,
                      candidate_budget=cfg.candidate_budget, **_machine(cfg.dtype))
        print(f"[{task_name}] {row} ...", flush=True)
        try:
            report = Transfer(cfg, show_progress=False).run(stages=stages)
        except Exception as e:  # one failing row must not lose the others
            record.update(error=f"{type(e).__name__}: {str(e).splitlines()[0]}",
                          seconds=round(time.perf_counter() - start, 1))
            if stages is None and cfg.eval_file:  # Table 1 still gets the baselines of a failed transfer
                try:
                    base = Transfer(cfg, show_progress=False).evaluate(("source_adapter", "target_base"))
                    record.update(num_eval=base["target_base"]["num_samples"],
                                  **{k: v["accuracy"] for k, v in base.items()})
                except Exception as e2:  # noqa: BLE001
                    record["baseline_error"] = f"{type(e2).__name__}: {e2}"
            print(f"[{task_name}] {row}: FAILED {record['error']}", flush=True)
        else:
            ev, syn, diag = report.get("evaluation") or {}, report.get("synthesis") or {}, report.get("diagnostics") or {}
            record.update(
                transferred=ev.get("transferred"), source_adapter=ev.get("source_adapter"),
                target_base=ev.get("target_base"), num_eval=ev.get("num_samples"),
                num_accepted=syn.get("accepted"), num_candidates=syn.get("candidates"),
                acceptance_rate=syn.get("acceptance_rate"), mmd_accepted=diag.get("mmd_accepted"),
                mmd_unfiltered=diag.get("mmd_unfiltered"), seconds=round(time.perf_counter() - start, 1),
                stages=report.get("stages"), label_stats=report.get("labels") or None,
            )
            if report.get("discriminator"):
                record["discriminator_roc_auc"] = report["discriminator"].get("roc_auc")
            print(f"[{task_name}] {row}: transferred {_pct(record['transferred'])} source "
                  f"{_pct(record['source_adapter'])} target {_pct(record['target_base'])} ({record['seconds']} s)",
                  flush=True)
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(record_path, "w") as f:
            json.dump(record, f, indent=1)
        rows.append(record)
        return record

    trained = {}  # source -> (its adapter, its discriminator)
    for source in dict.fromkeys(PAIRS[p][0] for p in pairs):
        cfg = TransferConfig(**common, source_model=MODELS[source], target_model=MODELS[source],
                             output_dir=os.path.join(task_dir, f"owner-{source}"))
        run(f"owner-{source}", cfg, pair=source, setting="owner", stages=("source_adapter", "discriminator"))
        owner = RunDir(cfg.output_dir)
        if owner.finished("source_adapter") and owner.finished("discriminator"):
            trained[source] = (owner.source_adapter, owner.discriminator)

    seeds = [s["input"] for s in load_examples(common["seed_file"], what="seed_file")]
    real = load_examples(common["train_file"], require_target=True, what="train_file")
    n = common["num_samples"]
    for pair in pairs:
        source, target = PAIRS[pair]
        if source not in trained:
            continue
        adapter, discriminator = trained[source]

        def config(row, **overrides):
            settings = dict(common, source_model=MODELS[source], source_adapter=adapter, target_model=MODELS[target],
                            discriminator_adapter=discriminator, output_dir=os.path.join(task_dir, row))
            settings.update(overrides)
            return TransferConfig(**settings)

        if "translora" in only:
            run(f"translora-{pair}", config(f"translora-{pair}"), pair=pair, setting="translora")
        if "unfiltered" in only:
            run(f"unfiltered-{pair}", config(f"unfiltered-{pair}", filter_mode="none", discriminator_adapter=None),
                pair=pair, setting="unfiltered")
        # Rows whose inputs are given rather than synthesized: the Table 5 ablations, and where the gap to the
        # source comes from: the same distillation from the real train inputs, labelled by the teacher (what
        # synthesis costs) and with their own targets (what the teacher's labels cost).
        given = (("seeds-only", seeds, None, "Table 5 ablation"),
                 ("random-text", random_text(n, seed), None, "Table 5 ablation"),
                 ("real-inputs", [e["input"] for e in real], None, "where the gap comes from"),
                 ("real-data", [e["input"] for e in real], _gold_labels(real), "where the gap comes from"))
        for setting, inputs, labels, why in given:
            if setting not in only:
                continue
            cfg = config(f"{setting}-{pair}", num_samples=len(inputs), compute_mmd=False)
            if not RunDir(cfg.output_dir).finished("synthesis"):
                _prepare(cfg, inputs, {"accepted": len(inputs), "candidates": 0, "extra": {"made_by": setting}},
                         labels=labels, made_by=f"{setting} ({why})")
            run(f"{setting}-{pair}", cfg, pair=pair, setting=setting)
        for setting, (overrides, reused, *_) in IMPROVEMENTS.items():
            base = reused_from(setting)
            paper = RunDir(os.path.join(task_dir, f"{base}-{pair}"))
            if setting not in only or not all(paper.finished(s) for s in reused):
                continue
            if setting in ROW_OWNER:
                variant = ROW_OWNER[setting]
                owner_cfg = owner_variant_config(common, variant, source, adapter, task_dir)
                run(f"owner-{source}-{variant}", owner_cfg, pair=source, setting="owner", stages=("discriminator",))
                if not RunDir(owner_cfg.output_dir).finished("discriminator"):
                    continue
                overrides = dict(overrides, discriminator_adapter=RunDir(owner_cfg.output_dir).discriminator)
            overrides = row_overrides(overrides, seed=seed, seeds_kept=len(seeds), data=data)
            cfg = config(f"{setting}-{pair}", **overrides, **answers_from(reused, paper.root))
            _reuse(cfg, paper, reused, made_by=f"the {base}-{pair} row (only {setting} differs)")
            run(f"{setting}-{pair}", cfg, pair=pair, setting=setting)
    with open(os.path.join(task_dir, "rows.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return rows


def row_overrides(overrides: dict, *, seed: int, seeds_kept: int, data: str) -> dict:
    """A change's settings (`IMPROVEMENTS`) as a row of this run takes them: its `seed` is an offset from the run's
    (`retrained`), and more seeds per prompt than the task keeps (`seeds-15`) come from a file of that many
    (`more_seeds`)."""
    if "seed" in overrides:
        overrides = dict(overrides, seed=seed + overrides["seed"])
    if overrides.get("num_seeds", 0) > seeds_kept:
        overrides = dict(overrides, seed_file=more_seeds(data, overrides["num_seeds"]))
    return overrides


def more_seeds(data: str, n: int) -> str:
    """`<data>/seeds-<n>.jsonl`: the task's seeds first, then train examples that are not seeds, drawn once with a
    fixed generator, up to `n` (the seeds-15 row: what more real examples in the generation prompt buy). Written
    once; its path."""
    import random

    from peft_transfer.data import load_examples

    path = os.path.join(data, f"seeds-{n}.jsonl")
    if not os.path.exists(path):
        seeds = load_examples(os.path.join(data, "seeds.jsonl"), require_target=True, what="seed_file")
        known = {s["input"] for s in seeds}
        train = [e for e in load_examples(os.path.join(data, "train.jsonl"), require_target=True, what="train_file")
                 if e["input"] not in known]
        extra = random.Random(f"more-seeds:{n}").sample(train, max(0, min(n - len(seeds), len(train))))
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for e in seeds + extra:
                f.write(json.dumps({"input": e["input"], "target": e["target"]}, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
    return path


OWNER_STAGES = ("source_adapter", "discriminator")
# What the changes reuse of the rows they are measured against (the synthetic inputs and the teacher's labels: 20-60
# minutes a row on one thread) and the predictions they are compared with input by input, kept in `stages/` as the
# owners' adapters are in `owners/`.
BASE_STAGES = ("synthesis", "labels", "evaluation")
KEPT = {"owners": OWNER_STAGES, "stages": BASE_STAGES}


def keeps(row: str) -> str | None:
    """The folder of `KEPT` a row of this name is kept in: `owners` for every owner row, `stages` for each row a
    change reuses stages of (the paper's row, and the changes others are measured against); None for the rest."""
    if row.startswith("owner-"):
        return "owners"
    bases = {reused_from(s) for s, (_, reused, *_) in IMPROVEMENTS.items() if reused}
    return "stages" if any(row == f"{b}-{p}" for b in bases for p in PAIRS) else None


def keep_rows(run_root: str, results: str) -> list[str]:
    """Copy the finished stages of each kept row of `run_root` (`<task>/<row>/`, `keeps`; not a row whose `row.json`
    records an error) to `<results>/owners|stages/<task>/<row>/`, without their training checkpoints, with the row's
    `config.json` and, once the row is done, its `row.json`: a row cut after its source adapter keeps that hour of
    training. Returns the rows copied (`owners/<task>/<row>`, `stages/<task>/<row>`)."""
    import shutil

    from peft_transfer.rundir import RunDir

    kept = []
    for task in sorted(os.listdir(run_root)) if os.path.isdir(run_root) else []:
        folder = os.path.join(run_root, task)
        for row in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            where = keeps(row)
            src = RunDir(os.path.join(folder, row))
            finished = [name for name in KEPT[where] if src.finished(name)] if where else []
            if not finished:
                continue
            dst = RunDir(os.path.join(results, where, task, row))
            if os.path.exists(src("row.json")):
                with open(src("row.json")) as f:
                    record = json.load(f)
                if record.get("error") or record.get("carried_from") == repo_path(dst.root):  # restored, unchanged
                    continue
            for name in finished:
                shutil.rmtree(dst.stage(name), ignore_errors=True)
                shutil.copytree(src.stage(name), dst.stage(name), ignore=shutil.ignore_patterns("trainer"))
            for name in ("config.json", "row.json"):
                if os.path.exists(src(name)):
                    shutil.copy2(src(name), dst(name))
            kept.append(f"{where}/{task}/{row}")
    return kept


def repo_path(path: str) -> str:
    """`path` relative to the git checkout (or worktree) that holds it, else to the working directory: a record
    names no machine's folders, whichever checkout the benchmark ran from."""
    path = os.path.abspath(path)
    root = path
    while os.path.dirname(root) != root:
        root = os.path.dirname(root)
        if os.path.exists(os.path.join(root, ".git")):
            return os.path.relpath(path, root)
    return os.path.relpath(path)


def restore_row(kept: str, row_dir: str) -> bool:
    """Put a kept row (`keep_rows`) in place of the missing `row_dir`; its record, when the row was done, is
    marked with where it came from (a row kept unfinished then runs what it lacks). The stages keep their records, so
    the pipeline reuses them only under the same fingerprints."""
    import shutil

    if os.path.exists(row_dir) or not os.path.isdir(kept):
        return False
    shutil.copytree(kept, row_dir)
    path = os.path.join(row_dir, "row.json")
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
        record.setdefault("carried_from", repo_path(kept))
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
    print(f"{row_dir}: restored from {kept}", flush=True)
    return True


def answers_from(reused: tuple[str, ...], base_dir: str) -> dict:
    """For a row that reuses another's inputs but labels them again: `reuse_stages_from` that row, so that a label
    selection of its own is made from the teacher's answers stored there (`labels/labelled/`) instead of asking the
    teacher again (the library does it where only the selection differs, and labels anew otherwise)."""
    return {"reuse_stages_from": base_dir} if "synthesis" in reused and "labels" not in reused else {}


def _reuse(cfg, source, stages: tuple[str, ...], *, made_by: str) -> None:
    """Put `stages` of `source` (a finished row's `RunDir`) in place in `cfg`'s run, where not done yet."""
    import shutil

    from peft_transfer import Transfer
    from peft_transfer.rundir import STAGE_RECORD, RunDir

    transfer, dirs = Transfer(cfg, show_progress=False), RunDir(cfg.output_dir)
    for name in stages:
        if not dirs.finished(name):
            transfer.provide(name, lambda folder, name=name: shutil.copytree(
                source.stage(name), folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(STAGE_RECORD)),
                made_by=made_by)


def _machine(dtype: str) -> dict:
    """What the numbers of a row depend on beyond its settings: the dtype `dtype` resolved to here (`auto` is bf16
    only on a CPU that computes in it) and the CPU's vector capability as torch sees it."""
    import torch

    from peft_transfer.modeling import torch_dtype

    return {"dtype": str(torch_dtype(dtype)).replace("torch.", ""),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def _gold_labels(examples: list[dict]):
    """The labels stage's dataset made from the examples' own targets, as the teacher's answers are stored."""
    from datasets import Dataset

    return Dataset.from_list([{"input": e["input"], "completion": " " + e["target"], "answer": e["target"]}
                              for e in examples])


# ---------------------------------------------------------------------------------------------------------------
# Tables, claims


def tables(rows: list[dict]) -> dict:
    by = {(r["task"], r["row"]): r for r in rows}
    tasks = sorted({r["task"] for r in rows})
    pairs = [p for p in PAIRS if any(r["pair"] == p for r in rows)]

    def get(task, row, key):
        return by.get((task, row), {}).get(key)

    table1 = {}
    for pair in pairs:
        per_task = {}
        for t in tasks:
            row = f"translora-{pair}"
            n = get(t, row, "num_eval")
            cell = {"source_lora": get(t, row, "source_adapter"), "target_base": get(t, row, "target_base"),
                    "translora": get(t, row, "transferred"), "num_test": n}
            cell["ci95"] = {k: wilson(cell[k], n) for k in ("source_lora", "target_base", "translora")}
            if get(t, row, "error"):
                cell["error"] = get(t, row, "error")
            per_task[t] = cell
        complete = [v for v in per_task.values() if None not in (v["source_lora"], v["target_base"], v["translora"])]
        table1[pair] = {"per_task": per_task, "tasks_averaged": len(complete),
                        "average": {k: _mean(v[k] for v in complete) for k in ("source_lora", "target_base", "translora")}}
    table5 = {}
    for pair in pairs:
        table5[pair] = {}
        per_setting = {s: {t: get(t, f"{s}-{pair}", "transferred") for t in tasks} for s in ABLATIONS}
        # Averages over the tasks where every setting has a number, so that the settings compare like with like.
        complete = [t for t in tasks if all(per_setting[s][t] is not None for s in ABLATIONS)]
        for setting, per_task in per_setting.items():
            table5[pair][setting] = {"per_task": per_task, "average": _mean(per_task[t] for t in complete),
                                     "tasks_averaged": len(complete)}
    table9 = {pair: {t: {"accepted": get(t, f"translora-{pair}", "mmd_accepted"),
                         "unfiltered": get(t, f"translora-{pair}", "mmd_unfiltered"),
                         "acceptance_rate": get(t, f"translora-{pair}", "pass_rate")} for t in tasks}
              for pair in pairs}
    gap = {pair: {t: {
        "source_lora": get(t, f"translora-{pair}", "source_adapter"),
        "translora": get(t, f"translora-{pair}", "transferred"),
        "in_format": get(t, f"translora-{pair}", "in_format"),
        "labels_correct": get(t, f"translora-{pair}", "labels_correct"),
        "labels_correct_by_score": get(t, f"translora-{pair}", "labels_correct_by_score"),
        "agrees_with_teacher": get(t, f"translora-{pair}", "agrees_with_teacher"),
        "real_inputs": get(t, f"real-inputs-{pair}", "transferred"),
        "real_inputs_labels_correct": get(t, f"real-inputs-{pair}", "labels_correct"),
        "real_data": get(t, f"real-data-{pair}", "transferred"),
    } for t in tasks} for pair in pairs}
    improvements = {pair: {t: {s: get(t, f"{s}-{pair}", "transferred") for s in ("translora", *IMPROVEMENTS)}
                           for t in tasks} for pair in pairs}
    paired = {pair: {t: {s: get(t, f"{s}-{pair}", "paired") for s in IMPROVEMENTS if get(t, f"{s}-{pair}", "paired")}
                     for t in tasks} for pair in pairs}
    # Each change over the tasks where both it and the row it is measured against have a number: how many of the
    # pair's tasks that is, both averages there, and the held-out inputs only one of them gets right, summed over the
    # tasks compared input by input (the tasks' inputs are distinct, so McNemar's exact test applies to the sums).
    # Where the change was compared input by input, the other row's number is the one it was compared with (its
    # own number less the difference the counts give): a row made again later does not stand in for it.
    def measured_against(task, setting, pair):
        record, against = by.get((task, f"{setting}-{pair}"), {}), reused_from(setting)
        counts, n = record.get("paired"), record.get("num_eval")
        if counts and n:
            return record["transferred"] - (counts["wins"] - counts["losses"]) / n
        return get(task, f"{against}-{pair}", "transferred")

    summary = {}
    for pair in pairs:
        summary[pair] = {}
        for s in IMPROVEMENTS:
            both = [t for t in tasks if get(t, f"{s}-{pair}", "transferred") is not None
                    and measured_against(t, s, pair) is not None]
            if not both:
                continue
            compared = [paired[pair][t][s] for t in both if s in paired[pair][t]]
            wins, losses = sum(c["wins"] for c in compared), sum(c["losses"] for c in compared)
            summary[pair][s] = {"against": reused_from(s), "tasks": both, "of_tasks": len(tasks),
                                "change": _mean(get(t, f"{s}-{pair}", "transferred") for t in both),
                                "against_average": _mean(measured_against(t, s, pair) for t in both),
                                "tasks_paired": len(compared), "wins": wins, "losses": losses,
                                "p_value": mcnemar_p(wins, losses) if compared else None}
    # The library's default against its teacher and target base (the default row's own measurement of them), the
    # paper's row and the TiTok-style row, on each task it has run on; and, for reference, the target model with a
    # LoRA trained on the task's real data by the owner's recipe (measured as the source of a pair that starts from
    # it): what the target itself reaches with the data, a ceiling the teacher's number may lie above.
    def own_data(task, model):
        measured = [get(task, f"translora-{p}", "source_adapter") for p, (src, _) in PAIRS.items() if src == model]
        return next((x for x in measured if x is not None), None)

    default = {pair: {t: {"default": get(t, f"{DEFAULT}-{pair}", "transferred"),
                          "source_lora": get(t, f"{DEFAULT}-{pair}", "source_adapter"),
                          "target_base": get(t, f"{DEFAULT}-{pair}", "target_base"),
                          "translora": get(t, f"translora-{pair}", "transferred"),
                          "titok": get(t, f"titok-{pair}", "transferred"),
                          "target_own_data": own_data(t, PAIRS[pair][1])}
                      for t in tasks if get(t, f"{DEFAULT}-{pair}", "transferred") is not None} for pair in pairs}
    return {"tasks": tasks, "pairs": pairs, "table1": table1, "table5": table5, "table9": table9, "gap": gap,
            "improvements": improvements, "paired": paired, "improvement_summary": summary, "default": default}


def claims(t: dict) -> dict:
    out = {"a_translora_ge_max_source_target_on_average": {}, "b_translora_ge_source_minus_2_points_every_task": {},
           "c_filtered_above_ablations": {}, "d_mmd_accepted_below_unfiltered_every_task": {},
           "e_default_ge_max_source_target_and_above_translora_titok": {}}
    for pair, table in t["table1"].items():
        avg = table["average"]
        ok = None if None in avg.values() else avg["translora"] >= max(avg["source_lora"], avg["target_base"])
        out["a_translora_ge_max_source_target_on_average"][pair] = {"holds": ok, **avg,
                                                                     "tasks_averaged": table["tasks_averaged"]}
        gaps = {task: (v["translora"] - v["source_lora"]) if None not in (v["translora"], v["source_lora"]) else None
                for task, v in table["per_task"].items()}
        known = [g for g in gaps.values() if g is not None]
        out["b_translora_ge_source_minus_2_points_every_task"][pair] = {
            "holds": _on_every_task([g >= -0.02 for g in known], len(gaps)), "worst_gap": min(known) if known else None,
            "gap_per_task": gaps}
    for pair, settings in t["table5"].items():
        avg = {s: v["average"] for s, v in settings.items()}
        known = None not in avg.values()
        out["c_filtered_above_ablations"][pair] = {
            "holds": all(avg["translora"] > avg[s] for s in ABLATIONS[1:]) if known else None, "averages": avg}
    for pair, per_task in t["table9"].items():
        measured = {task: v for task, v in per_task.items() if None not in (v["accepted"], v["unfiltered"])}
        out["d_mmd_accepted_below_unfiltered_every_task"][pair] = {
            "holds": _on_every_task([v["accepted"] < v["unfiltered"] for v in measured.values()], len(per_task)),
            "tasks_lower": sum(v["accepted"] < v["unfiltered"] for v in measured.values()),
            "tasks_measured": len(measured), "tasks": len(per_task)}
    for pair, per_task in t.get("default", {}).items():
        avg = lambda key, among: _mean(per_task[x][key] for x in among)  # noqa: E731
        known = [x for x, v in per_task.items() if None not in (v["source_lora"], v["target_base"])]
        both = {k: [x for x in known if per_task[x][k] is not None] for k in ("translora", "titok")}
        own = [x for x in known if per_task[x]["target_own_data"] is not None]
        verdicts = {"teacher": None if not known else avg("default", known) >= max(avg("source_lora", known),
                                                                                    avg("target_base", known)),
                    **{k: None if not among else avg("default", among) > avg(k, among) for k, among in both.items()}}
        # A verdict is final once its comparison covers every task: the claim fails on a final False, and holds
        # only when all three are final and true (a failed TiTok-style row leaves it open until it is run again).
        covered = {"teacher": known, **both}
        final = [verdicts[k] for k, among in covered.items() if len(among) == len(t["tasks"])]
        out["e_default_ge_max_source_target_and_above_translora_titok"][pair] = {
            "holds": False if False in final else (True if len(final) == len(covered) else None),
            "verdicts": verdicts, "tasks": len(t["tasks"]), "tasks_with_default": len(known),
            "average": {"default": avg("default", known), "source_lora": avg("source_lora", known),
                        "target_base": avg("target_base", known)},
            **{f"against_{k}": {"tasks": len(among), "default": avg("default", among), k: avg(k, among)}
               for k, among in both.items()},
            # A reference, not a verdict: what the target reaches with the task's own data.
            "against_target_own_data": {"tasks": len(own), "default": avg("default", own),
                                        "target_own_data": avg("target_own_data", own),
                                        "source_lora": avg("source_lora", own)}}
    return out


def claim_e_lines(c: dict) -> list[str]:
    """Claim (e), per pair: the default at or above max(teacher, target base) on average, and above the paper's and
    the TiTok-style rows on the tasks each has run on; it holds only once all three have run on every task."""
    lines = []
    for pair, v in c.get("e_default_ge_max_source_target_and_above_translora_titok", {}).items():
        a, r, k, o = v["average"], v["against_translora"], v["against_titok"], v["against_target_own_data"]
        lines.append(
            f"- (e) {pair}: the default's data settings ({DEFAULT}, 3 epochs) {_pct(a['default'])} >= max(source+LoRA "
            f"{_pct(a['source_lora'])}, target base {_pct(a['target_base'])}) on average over the "
            f"{v['tasks_with_default']} of {v['tasks']} "
            f"tasks it has run on ({_verdict(v['verdicts']['teacher'])}), above the paper's row on the "
            f"{r['tasks']} of them it has ({_pct(r['default'])} against {_pct(r['translora'])}: "
            f"{_verdict(v['verdicts']['translora'])}) and the TiTok-style row on its {k['tasks']} "
            f"({_pct(k['default'])} against {_pct(k['titok'])}: {_verdict(v['verdicts']['titok'])}); the three "
            f"together (final once the default, the paper's row and the TiTok-style row have run on every task; "
            f"a comparison that already covers every task and fails makes it fail): {_verdict(v['holds'])}"
            + (f". For reference, the target with a LoRA trained on the task's real data, on the {o['tasks']} tasks "
               f"where it was measured: {_pct(o['target_own_data'])} (the default there: {_pct(o['default'])}, its "
               f"teachers {_pct(o['source_lora'])})" if o["tasks"] else ""))
    return lines


def markdown(result: dict) -> str:
    t, c = result["tables"], result["claims"]
    lines = ["# Trans-LoRA quality benchmark — real models on CPU", "",
             "Exact match on held-out real inputs, in %, with the 95% Wilson interval; "
             f"N = {SETTINGS['transfer']['num_samples']} accepted samples per transfer. Models: "
             + ", ".join(f"{k} = `{v}`" for k, v in MODELS.items()) + ".", "",
             "## Table 1: source+LoRA / target base / Trans-LoRA", "",
             "| task | pair | n test | source+LoRA | target base | Trans-LoRA |", "|---|---|---|---|---|---|"]

    def cell(v, key):
        ci = (v.get("ci95") or {}).get(key)
        return _pct(v[key]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")

    for pair, table in t["table1"].items():
        for task, v in table["per_task"].items():
            note = " (failed: see below)" if v.get("error") else ""
            lines.append(f"| {task} | {pair} | {v['num_test'] or '—'} | {cell(v, 'source_lora')} | "
                         f"{cell(v, 'target_base')} | {cell(v, 'translora')}{note} |")
        avg = table["average"]
        lines.append(f"| **average** ({table['tasks_averaged']} of {len(table['per_task'])} tasks) | {pair} | | "
                     f"{_pct(avg['source_lora'])} | {_pct(avg['target_base'])} | {_pct(avg['translora'])} |")
    for pair, settings in t["table5"].items():
        lines += ["", f"## Table 5: ablations, {pair}", "", "| setting | " + " | ".join(t["tasks"]) + " | average |",
                  "|---|" + "---|" * (len(t["tasks"]) + 1)]
        for name, v in settings.items():
            lines.append(f"| {name} | " + " | ".join(_pct(v["per_task"][k]) for k in t["tasks"]) +
                         f" | {_pct(v['average'])} ({v['tasks_averaged']} tasks with every setting) |")
    lines += table9_lines(t["table9"], "## Table 9: MMD² to real inputs (all-MiniLM-L6-v2), accepted vs unfiltered")
    lines += ["", "## Where the gap to the source comes from", "",
              "Counted from each row's stored inputs, labels and predictions by the task's own solver: the share of "
              "Trans-LoRA's synthetic inputs that are in the task's format (its templates and vocabulary), the share "
              "of the teacher's labels of those that are right (and in the upper / lower half of the inputs by the "
              "filter's score: what a stricter filter would keep), and the share of held-out inputs on which the "
              "transferred adapter answers as the teacher does. Then the same distillation from the 250 real train "
              "inputs, labelled by the teacher (what synthesis costs; the teacher was trained on these inputs, so its "
              "labels there are better than on new ones) and with their own targets (what the teacher's labels "
              "cost; this row is the target trained on the data itself).", "",
              "| task | pair | source+LoRA | Trans-LoRA | synthetic in format | teacher right (synthetic) | "
              "teacher right, upper / lower half by score | agrees with teacher | real inputs, teacher labels | "
              "teacher right (real) | real data |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, per_task in t["gap"].items():
        for task, v in per_task.items():
            halves = v.get("labels_correct_by_score") or {}
            by_score = f"{_pct(halves.get('upper'))} / {_pct(halves.get('lower'))}" if halves else _pct(None)
            lines.append(f"| {task} | {pair} | " + " | ".join(
                [_pct(v[k]) for k in ("source_lora", "translora", "in_format", "labels_correct")] + [by_score] +
                [_pct(v[k]) for k in ("agrees_with_teacher", "real_inputs", "real_inputs_labels_correct",
                                      "real_data")]) + " |")
    lines += ["", "## Each change alone against the paper's method", "",
              "self-consistency: 5 teacher votes per input, inputs whose label won under 60% of them dropped; "
              "token-selection: the loss on the top 50% of each completion's tokens by the teacher's contrastive "
              "excess over the source base; titok: TiTok's curriculum (the source with its adapter writes the inputs, "
              "no filter, token selection); n-scaling: 1,000 accepted inputs at the paper row's number of training steps "
              "(1.5 epochs); more-steps: 12 epochs instead of 6 on the paper row's inputs and labels; all-linear: the "
              "new LoRA on every linear layer (r 8, alpha 8) on the same inputs and labels; seeds-15: 15 "
              "seeds per generation prompt instead of 5 (the task's 5 and 10 more of its train examples); "
              "format-negatives: the filter's discriminator trained with half its negatives real inputs perturbed in format (truncated, shortened, shuffled, spliced, doubled); "
              "discriminator-all-linear: the filter's discriminator a LoRA on every linear layer instead of q/v, a "
              "synthesis of its own; all-linear+more-steps: both on the translora row's inputs and labels; "
              "all-linear+n-scaling: 1,000 accepted inputs of its own at the steps of all-linear+more-steps (3 epochs), measured against that row; "
              "label-selection: the surest half of all-linear+n-scaling's inputs by the teacher's mean log-probability "
              "of its answer (500, 6 epochs), measured against that row; label-selection+n-scaling: the surest 1,000 "
              "of 2,000 accepted inputs of its own (3 epochs), measured against all-linear+n-scaling; length-strata: "
              "the same inputs labelled again, the surer half kept within each quarter of them by length "
              "(`label_selection_strata` 4); label-selection+more-steps: its inputs and labels at 6 epochs instead of "
              "3; surest-quarter: its inputs labelled again, the surest quarter kept within each quarter by length "
              "(500 inputs, 6 epochs); low-temperature: the default's settings with the generator sampling at "
              "temperature 0.5 instead of 1, a synthesis of its own; all four measured against "
              "label-selection+n-scaling; retrained: not a change, the paper's row trained again on its own inputs "
              "and labels with another training seed (what training alone moves); "
              "format-negatives+more-steps: "
              "12 epochs on the format-negatives row's inputs and labels; combined: all three (all-linear and 12 "
              "epochs on the format-negatives row's inputs and labels). Other rows that change a later stage only "
              "reuse the translora row's synthetic inputs (and labels).",
              "", "| task | pair | " + " | ".join(("translora", *IMPROVEMENTS)) + " |",
              "|---|---|" + "---|" * (1 + len(IMPROVEMENTS))]
    for pair, per_task in t["improvements"].items():
        for task, v in per_task.items():
            lines.append(f"| {task} | {pair} | " + " | ".join(_pct(x) for x in v.values()) + " |")
    paired = [(pair, task, s, v) for pair, per_task in t.get("paired", {}).items()
              for task, per_setting in per_task.items() for s, v in per_setting.items()]
    if paired:
        lines += ["", "Each change against the row it is measured against, input by input on the same held-out inputs "
                  "(rows whose predictions are at hand): the inputs only the change gets right, those only the other "
                  "row gets right, and McNemar's exact two-sided p-value.", "",
                  "| task | pair | change | against | only the change right | only the other right | p |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {task} | {pair} | {s} | {v['against']} | {v['wins']} | {v['losses']} | {v['p_value']:.3g} |"
                  for pair, task, s, v in paired]
    summary = [(pair, s, v) for pair, per_setting in t.get("improvement_summary", {}).items()
               for s, v in per_setting.items()]
    if summary:
        lines += ["", "Each change on average over the tasks where it and the row it is measured against have both run "
                  "(not yet every task: the count says how many; where the two were compared input by input, the "
                  "other row's number is the one the change was compared with, not a later remake of it), and the "
                  "held-out inputs only one of them gets right, summed over the tasks compared input by input, with "
                  "McNemar's exact p on the sums. That p takes the trained adapter as given: `retrained`, the paper's "
                  "row trained again on the same inputs and labels with another seed, shows how far training alone "
                  "moves these counts.", "",
                  "| pair | change | against | tasks | change (avg) | against (avg) | difference | "
                  "only the change right | only the other right | p |", "|---|---|---|---|---|---|---|---|---|---|"]
        for pair, s, v in summary:
            counted = (f"{v['wins']} | {v['losses']} | {v['p_value']:.3g}" if v["tasks_paired"] else "— | — | —")
            if v["tasks_paired"] and v["tasks_paired"] < len(v["tasks"]):
                counted = counted.replace(" | ", f" (on {v['tasks_paired']} tasks) | ", 1)
            lines.append(f"| {pair} | {s} | {v['against']} | {len(v['tasks'])} of {v['of_tasks']} | "
                         f"{_pct(v['change'])} | {_pct(v['against_average'])} | "
                         f"{(v['change'] - v['against_average']) * 100:+.1f} | {counted} |")
    lines += ["", "## Claims", ""] + claims_ab_lines(c, len(t["tasks"]))
    for pair, v in c["c_filtered_above_ablations"].items():
        lines.append(f"- (c) {pair}: filtered above unfiltered, seeds only and random text on average: "
                     f"{_verdict(v['holds'])} (" + ", ".join(f"{k} {_pct(x)}" for k, x in v["averages"].items()) + ")")
    for pair, v in c["d_mmd_accepted_below_unfiltered_every_task"].items():
        lines.append(f"- (d) {pair}: MMD accepted < unfiltered on {v['tasks_lower']} of {v['tasks_measured']} "
                     f"measured ({v['tasks']} tasks): {_verdict(v['holds'])}")
    lines += claim_e_lines(c)
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["", "## Failed rows", ""] + [f"- {r['task']} / {r['row']}: {r['error']}" for r in failed]
    lines += ["", "## Rows run", "",
              "seconds: the wall time of the row's last invocation; stage seconds: its stages' own times summed, "
              "those finished by an earlier, stopped invocation included (a stage continued from stored progress "
              "counts its last part; one reused from another row, 0 s).", "",
              "| task | row | seconds | stage seconds | accepted / candidates |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        dash = lambda x: "—" if x is None else x  # noqa: E731
        lines.append(f"| {r['task']} | {r['row']} | {dash(r.get('seconds'))} | {dash(stage_seconds(r))} | "
                     f"{dash(r.get('num_accepted'))} / {dash(r.get('num_candidates'))} |")
    return "\n".join(lines) + "\n"


def stage_seconds(record: dict) -> float | None:
    """The row's stages' own times summed: a row continued after a stop reports only its last invocation's wall time
    as `seconds`, while each finished stage keeps the time its finishing run spent on it."""
    stages = record.get("stages") or {}
    times = [s["seconds"] for s in stages.values() if isinstance(s, dict) and s.get("seconds") is not None]
    return round(sum(times), 1) if times else None


def scatter(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for (pair, table), marker in zip(result["tables"]["table1"].items(), "os^"):
        pts = [(v["source_lora"], v["translora"], task) for task, v in table["per_task"].items()
               if None not in (v["source_lora"], v["translora"])]
        ax.scatter([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker=marker, label=pair)
        for x, y, task in pts:
            ax.annotate(task, (100 * x, 100 * y), fontsize=6)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8)
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="source + LoRA accuracy (%)", ylabel="Trans-LoRA accuracy (%)",
           title="Transferred vs source, per task (Fig. 3)")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def collect(run_root: str) -> list[dict]:
    """Every `row.json` under a run folder (what has finished so far, for a report mid-run)."""
    rows = []
    for task in sorted(os.listdir(run_root)):
        folder = os.path.join(run_root, task)
        if not os.path.isdir(folder):
            continue
        for row in sorted(os.listdir(folder)):
            path = os.path.join(folder, row, "row.json")
            if os.path.exists(path):
                with open(path) as f:
                    rows.append(json.load(f))
                rows[-1]["pass_rate"] = _pass_rate(os.path.join(folder, row))
                rows[-1].update(_label_quality(task, os.path.join(folder, row)))
                base = _base_row(rows[-1])
                if base:
                    paired = paired_comparison(os.path.join(folder, row), os.path.join(folder, base))
                    if paired:
                        rows[-1]["paired"] = dict(paired, against=base)
    return rows


def rows_needed(only) -> tuple[str, ...]:
    """The rows `only` names and those whose stages they reuse, down the chain (in `ROWS` order)."""
    need = set(only)
    while True:
        more = {reused_from(s) for s in need if s in IMPROVEMENTS and IMPROVEMENTS[s][1]} - need
        if not more:
            return tuple(r for r in ROWS if r in need)
        need |= more


def reused_from(setting: str) -> str:
    """The setting of the row a change reuses stages from and is measured against: the one its `IMPROVEMENTS` entry
    names third, else the paper's."""
    overrides, reused, *base = IMPROVEMENTS[setting]
    return base[0] if base else "translora"


def _base_row(record: dict) -> str | None:
    setting = record.get("setting")
    return f"{reused_from(setting)}-{record.get('pair')}" if setting in IMPROVEMENTS else None


def paired_comparison(row_dir: str, base_dir: str) -> dict | None:
    """Exact match of the transferred adapters of two rows on the same held-out inputs, input by input: how many only
    `row_dir` gets right (`wins`), how many only `base_dir` (`losses`), and McNemar's exact two-sided p-value (the
    binomial test of the discordant pairs), which two accuracies and their separate intervals cannot give."""
    from peft_transfer.data import load_examples
    from peft_transfer.evaluation import exact_match
    from peft_transfer.rundir import RunDir, hash_path

    preds, eval_files, held_out = [], [], set()
    for folder in (row_dir, base_dir):
        dirs = RunDir(folder)
        if not (os.path.exists(dirs.predictions) and os.path.exists(dirs("config.json"))):
            return None
        with open(dirs.predictions) as f:
            preds.append(json.load(f).get("transferred"))
        with open(dirs("config.json")) as f:
            path = json.load(f).get("eval_file")
        # The held-out inputs by their contents: a row restored from `stages/` names the file of the run folder it
        # was made in, which its evaluation's record hashed.
        if path and os.path.isfile(path):
            eval_files.append(path)
            held_out.add(hash_path(path))
        elif os.path.exists(dirs.stage_record("evaluation")):
            held_out.add(dirs.read_record("evaluation").get("inputs", {}).get("eval_file"))
        else:
            return None
    if None in preds or len(preds[0]) != len(preds[1]) or len(held_out) != 1 or None in held_out or not eval_files:
        return None
    targets = [e["target"] for e in load_examples(eval_files[0], require_target=True)][: len(preds[0])]
    right = [[exact_match(p, t) == 1.0 for p, t in zip(pred, targets)] for pred in preds]
    wins = sum(a and not b for a, b in zip(*right))
    losses = sum(b and not a for a, b in zip(*right))
    return {"wins": wins, "losses": losses, "p_value": mcnemar_p(wins, losses)}


def mcnemar_p(wins: int, losses: int) -> float:
    """McNemar's exact two-sided p-value: the binomial test of the discordant pairs (inputs only one row gets right)."""
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(0, min(wins, losses) + 1)) / 2 ** n if n else 1.0
    return min(1.0, 2 * tail)


def _label_quality(task: str, row_dir: str) -> dict:
    """Counted from a row's stored artifacts (no model runs): how many of the inputs it trained on are in the task's
    format (`in_format`, by the task's solver), how many of the teacher's labels of those are right
    (`labels_correct`), and on how many held-out inputs the transferred adapter answers as the teacher does
    (`agrees_with_teacher`: how faithfully the distillation copied the teacher, right or wrong). Where the row kept
    its scored candidates, the same share of right labels in the upper and the lower half of the inputs by the
    filter's score (`labels_correct_by_score`: what a stricter filter would keep)."""
    from benchmarks.real_tasks import SOLVERS, solve
    from peft_transfer.rundir import RunDir

    dirs, out = RunDir(row_dir), {}
    if task in SOLVERS and os.path.isdir(dirs.labels):
        from datasets import load_from_disk

        labels = load_from_disk(dirs.labels)
        answers = [solve(task, x) for x in labels["input"]]
        in_format = [(a, y) for a, y in zip(answers, labels["answer"]) if a is not None]
        out.update(num_labels=len(answers), in_format=len(in_format) / len(answers) if answers else None,
                   labels_correct=sum(a == y.strip() for a, y in in_format) / len(in_format) if in_format else None)
        if os.path.isdir(dirs.candidates):
            out["labels_correct_by_score"] = _labels_correct_by_score(
                labels["input"], answers, labels["answer"], load_from_disk(dirs.candidates))
    if os.path.exists(dirs.predictions):
        with open(dirs.predictions) as f:
            p = json.load(f)
        if p.get("transferred") and p.get("source_adapter"):
            pairs = list(zip(p["transferred"], p["source_adapter"]))
            out["agrees_with_teacher"] = sum(a.strip() == b.strip() for a, b in pairs) / len(pairs)
    return out


def _labels_correct_by_score(inputs, answers, labels, candidates) -> dict | None:
    """The share of right labels among the in-format inputs whose filter score is at or above the median score of
    the labelled inputs (`upper`) and below it (`lower`), with how many in-format inputs each half holds. None for an
    unfiltered row (its candidates have no score)."""
    score = dict(zip(candidates["input"], candidates["score"]))
    scored = [(score[x], a, y) for x, a, y in zip(inputs, answers, labels) if score.get(x) is not None]
    if len(scored) < 2:
        return None
    median = sorted(s for s, _, _ in scored)[len(scored) // 2]
    out = {}
    for half, keep in (("upper", lambda s: s >= median), ("lower", lambda s: s < median)):
        right = [a == y.strip() for s, a, y in scored if keep(s) and a is not None]  # a is None: not in format
        out[half], out[f"{half}_n"] = (sum(right) / len(right) if right else None), len(right)
    return out


def _pass_rate(row_dir: str) -> float | None:
    """The filter's pass rate, counted from the stored candidates. (Rows made before the stats counted `passed`
    recorded accepted/scored as the acceptance rate: N over everything scored, whatever passed.)"""
    from peft_transfer.rundir import RunDir

    candidates = RunDir(row_dir).candidates
    if not os.path.isdir(candidates):
        return None
    from datasets import load_from_disk

    passed = load_from_disk(candidates)["passed"]
    return sum(passed) / len(passed) if passed else None


def with_prior(rows: list[dict], prior: str | None) -> tuple[list[dict], int]:
    """`rows` and, after them, the rows of an earlier `results.json` that `rows` has no record of (same task and
    row name), each marked with the file it came from; and how many were carried over. A row measured again here
    replaces its earlier record."""
    if not prior:
        return rows, 0
    with open(prior) as f:
        earlier = json.load(f)["rows"]
    have = {(r["task"], r["row"]) for r in rows}
    carried = [dict(r, carried_from=r.get("carried_from", prior)) for r in earlier if (r["task"], r["row"]) not in have]
    return rows + carried, len(carried)


def write_outputs(out: str, rows: list[dict], meta: dict, prior: str | None = None) -> dict:
    rows, carried = with_prior(rows, prior)
    if prior:
        meta = dict(meta, prior=prior, rows_carried_from_prior=carried)
    os.makedirs(out, exist_ok=True)
    result = {"meta": meta, "rows": rows}
    result["tables"] = tables(rows)
    result["claims"] = claims(result["tables"])
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result))
    scatter(result, os.path.join(out, "fig3_scatter.png"))
    return result


def main(argv=None):
    from benchmarks.real_tasks import REAL_TASKS, make_real_task

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/quality-real")
    parser.add_argument("--tasks", nargs="*", default=list(REAL_TASKS))
    parser.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--task-file", help="an external task: JSONL of {'input', 'target'} (train split)")
    parser.add_argument("--test-file", help="the external task's held-out split")
    parser.add_argument("--task-name", help="the external task's name (default: the train file's folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS),
                        help="which rows to run beside the owner rows and the rows they reuse stages of (default: all)")
    parser.add_argument("--candidate-budget", type=int,
                        help="most candidates per synthesis (default: the settings'); rows that ran out of a smaller "
                             "budget continue from their stored candidates")
    parser.add_argument("--report", help="only write the results of the rows finished so far under this run folder")
    parser.add_argument("--prior", help="an earlier results.json: its rows that this run folder has no record of "
                                        "are kept in the results (marked carried_from)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = SETTINGS
    if args.candidate_budget:
        need = SETTINGS["transfer"]["num_samples"]
        if args.candidate_budget < need:
            parser.error(f"--candidate-budget {args.candidate_budget} is below the {need} accepted samples each "
                         "transfer needs: give at least that many.")
        settings = dict(SETTINGS, transfer=dict(SETTINGS["transfer"], candidate_budget=args.candidate_budget))
    meta = {"settings": settings, "models": MODELS, "pairs": args.pairs, "seed": args.seed, "argv": sys.argv,
            "versions": _versions()}
    if args.report:
        result = write_outputs(args.out, collect(args.report), dict(meta, collected_from=args.report), args.prior)
        kept = keep_rows(args.report, args.out)
        print(f"rows kept in {args.out} (owners/, stages/): {len(kept)}")
        print(markdown(result))
        return 0

    from peft_transfer.worlds.tasks import write_task

    meta["machine"] = _machine("auto")  # where this run's rows are made (each row records its own too)

    if args.task_file:
        tasks = [external_task(args, parser)]
    else:
        tasks = [make_real_task(name, n_train=SETTINGS["n_train"], n_test=SETTINGS["n_test"],
                                n_seeds=SETTINGS["n_seeds"], seed=args.seed) for name in args.tasks]
    out = os.path.abspath(args.out)
    start = time.time()
    for task in tasks:
        task_dir = os.path.join(out, task.name)
        if not os.path.exists(os.path.join(task_dir, "data", "seeds.jsonl")):
            write_task(task, os.path.join(task_dir, "data"))
        run_task(task_dir, task.name, task.description, args.pairs, args.seed, only=tuple(args.rows),
                 kept=os.path.dirname(os.path.abspath(args.prior)) if args.prior else None,
                 transfer=settings["transfer"])
        write_outputs(out, collect(out), dict(meta, wall_s=round(time.time() - start, 1)), args.prior)  # as it goes
    result = write_outputs(out, collect(out), dict(meta, wall_s=round(time.time() - start, 1)), args.prior)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
