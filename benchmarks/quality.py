"""The paper's quality tables, measured on base models trained here (DESIGN.md §4 and §6).

    python benchmarks/quality.py --size micro --out runs/quality-micro          # CPU smoke run: 1 task, a few minutes
    python benchmarks/quality.py --size cpu --out runs/quality-cpu --jobs 2     # every task, paper sizes, 2 CPU cores
    python benchmarks/quality.py --size full --bases runs/bases --out runs/quality-full --jobs 5
    python benchmarks/quality.py --task-file train.jsonl --test-file test.jsonl --size full --bases runs/bases
    python benchmarks/quality.py --aggregate runs/q-a runs/q-b --out benchmarks/results/quality-full

Every row is one `Transfer` run (`peft_transfer.pipeline`) with its own `TransferConfig` and run directory
`<out>/<task>/<row>/`. Per task:

    pool-same           tiny-llama -> tiny-llama-b: trains the source adapter and the discriminator (shared by every
                        row of the task), synthesizes max(scaling) accepted inputs and labels them with the teacher
                        (when it cannot, only translora-cross runs after it)
    translora-same      Trans-LoRA, same family (same tokenizer): the first `num_samples` of the pool     (Table 1)
    translora-cross     Trans-LoRA, cross family: tiny-llama -> tiny-gemma (other tokenizer)            (Table 1)
    unfiltered-same     `filter_mode: none`, its own synthesis                                             (Table 5)
    seeds-only-same     distilled on the 5 seeds' inputs only (labels from the teacher)                  (Table 5)
    random-text-same    distilled on random generic text (filler sentences of `peft_transfer.worlds.corpus`)     (Table 5)
    dora-same           LoRA -> DoRA on translora-same's synthetic set and labels                        (Table 6)
    prompt-tuning-same  LoRA -> prompt tuning on the same set                                            (Table 6)
    chain-hop2          tiny-llama-b + translora-same's adapter -> tiny-gemma, same discriminator        (Table 7)
    scaling-same-N<n>   the first n accepted of the pool, n in the size's `scaling` list                 (Fig. 5)

Rows that only change the training data are made without touching the pipeline: the benchmark writes the
artifacts a finished stage would have written (`synthesis/accepted`, `synthesis/stats.json`, and `labels/` when the
teacher's answers are already known) and `Transfer(config).run()` skips those stages, since a stage whose folder
exists is done. MMD of accepted vs unfiltered candidates (Table 9) comes from the synthesis stage's diagnostics
of the pool and the cross-family row.

Outputs in `--out`: `results.json` (every number, the sizes' settings, seeds, versions, command line, the bases'
pretraining records), `results.md` (the tables and the claims), `fig3_scatter.png`, `table5_ablations.png`,
`fig5_scaling.png`, and `<task>/rows.json` per task (what `--aggregate` merges).

Claims, each reported as holds/fails with its numbers: (a) Trans-LoRA >= max(source+LoRA, target base) on the task
average; (b) Trans-LoRA >= source+LoRA - 2 points on every task; (c) filtered above every Table-5 ablation, and
the paper's order filtered > seeds only > random text > unfiltered; (d) MMD accepted < unfiltered on every task.

The full run on the GPU machine, in three device commands (the bases, then the ten tasks in two halves; each
half runs its five tasks as five processes sharing the GPU, because tiny models leave it mostly idle):

    1. (python benchmarks/pretrain.py --size gpu --out runs/bases --no-probe --only tiny-llama &&
        python benchmarks/quality.py --size full --bases runs/bases --build-bases-only) &
       python benchmarks/pretrain.py --size gpu --out runs/bases --no-probe --only tiny-gemma & wait;
       cp -r runs/bases $OUT/bases
    2. python benchmarks/quality.py --size full --bases runs/bases --out $OUT/q-a --jobs 5 \\
           --tasks boolean_expressions multistep_arithmetic sort_letters sort_numbers count_letters
    3. python benchmarks/quality.py --size full --bases runs/bases --out $OUT/q-b --jobs 5 \\
           --tasks dyck_languages weekday_arithmetic reverse_word grid_walk last_letters

then, here: `python benchmarks/quality.py --aggregate <q-a> <q-b> --out benchmarks/results/quality-full`. A machine
that went cold between commands has lost `runs/bases`: carry the `bases` folder that command 1 returned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

SOURCE, SAME, CROSS = "tiny-llama", "tiny-llama-b", "tiny-gemma"

# Transfer settings shared by every row of a size (TransferConfig field names). The paper's lr 2e-5 / 20 epochs
# are for 7B models; these tiny from-scratch bases need the demo's larger steps (peft_transfer.demos.TINY_DEMO_SETTINGS).
_ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIZES = {
    "micro": dict(
        tasks=["count_letters"], n_train=100, n_test=24, scaling=[6, 12], prompt_tuning_learning_rate=2e-2,
        # The same-family target: a Llama with the source's tokenizer; at micro size only differently seeded.
        same_family=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=384, head_dim=32, steps=150, batch_size=8, lr=3e-3, seq_len=128,
                         corpus_chars=200_000),
        fallback_pretrain_steps=60,  # for a family missing from --bases and from peft_transfer/demo_models
        # The micro run checks the harness, not the method: when its 1-epoch discriminator accepts too few
        # candidates, the synthesis is re-scored with this margin instead of failing (recorded in the row).
        margin_fallback=-1e9,
        transfer=dict(
            num_samples=12, candidate_budget=300, generation_batch_size=32, filter_batch_size=32,
            max_candidate_tokens=40, label_max_new_tokens=12, learning_rate=2e-3, num_train_epochs=2,
            source_learning_rate=2e-3, source_epochs=10, discriminator_learning_rate=1e-3, discriminator_epochs=1,
            discriminator_negatives=24, per_device_train_batch_size=8, max_eval_samples=16, logging_steps=1000,
            lora_target_modules=_ALL_MODULES, lora_r=16, lora_alpha=32, label_selection_ratio=1.0,
        ),
    ),
    # Every task at the paper's sizes (250 train, N = 250) on the committed demo bases and a CPU-sized tiny-llama-b:
    # the method measured on 2 CPU cores in about an hour, with bases far weaker than the full run's.
    "cpu": dict(
        tasks=None,
        n_train=250, n_test=500, scaling=[62, 125, 250, 500], prompt_tuning_learning_rate=2e-2,
        same_family=dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                         intermediate_size=512, head_dim=32, steps=4000, batch_size=8, lr=2e-3, seq_len=256,
                         corpus_chars=10_000_000),
        fallback_pretrain_steps=1500,
        margin_fallback=None,
        transfer=dict(
            num_samples=250, candidate_budget=4000, generation_batch_size=64, filter_batch_size=64,
            max_candidate_tokens=48, label_max_new_tokens=24, learning_rate=2e-3, num_train_epochs=8,
            # 6 discriminator epochs as in the demo: the source writes several formats well, and at 3 epochs the
            # tiny discriminator was near chance and let other formats through.
            source_learning_rate=2e-3, source_epochs=6, discriminator_learning_rate=1e-3, discriminator_epochs=6,
            per_device_train_batch_size=8, max_eval_samples=200, logging_steps=1000,
            lora_target_modules=_ALL_MODULES, lora_r=16, lora_alpha=32, label_selection_ratio=1.0,
        ),
    ),
    "full": dict(
        tasks=None,  # every family of peft_transfer.worlds.tasks
        n_train=250, n_test=500, scaling=[62, 125, 250, 500, 1000], prompt_tuning_learning_rate=2e-2,
        same_family=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                         intermediate_size=1024, head_dim=48, steps=3000, batch_size=64, lr=1.5e-3, seq_len=512,
                         corpus_chars=30_000_000, wait_for_source_s=900),
        fallback_pretrain_steps=1500,
        margin_fallback=None,
        transfer=dict(
            num_samples=250, candidate_budget=12000, generation_batch_size=256, filter_batch_size=256,
            max_candidate_tokens=48, label_max_new_tokens=24, learning_rate=2e-3, num_train_epochs=6,
            source_learning_rate=2e-3, source_epochs=8, discriminator_learning_rate=1e-3, discriminator_epochs=3,
            per_device_train_batch_size=8, max_eval_samples=500, logging_steps=100,
            lora_target_modules=_ALL_MODULES, lora_r=16, lora_alpha=32, label_selection_ratio=1.0,
        ),
    ),
}
ABLATIONS = ("translora-same", "seeds-only-same", "random-text-same", "unfiltered-same")  # paper Table 5 order
PAIRS = {"same": "translora-same", "cross": "translora-cross"}


# ---------------------------------------------------------------------------------------------------------------
# Bases


def build_same_family_target(source: str, path: str, spec: dict, seed: int = 1) -> str:
    """A Llama-style base that shares the source's tokenizer (same family, like Llama-2-7b -> 13b), pretrained with
    `benchmarks/pretrain.py`'s corpus and loop at another seed. Returns `path` (reused when it exists)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import AutoTokenizer

    from benchmarks.pretrain import MIXTURE, BaseSpec, build_base, pack, pretraining_corpus, save_base, train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # see run_task: a second thread on shared cores costs more than it gives
    docs = pretraining_corpus(spec["corpus_chars"], seed=seed, **MIXTURE)
    # In the GPU plan this runs beside `benchmarks/pretrain.py`: the corpus is made while the source trains, and
    # the source's tokenizer is read once its pretraining record (written last) is there.
    deadline = time.time() + spec.get("wait_for_source_s", 0)
    while not os.path.exists(os.path.join(source, "pretraining.json")) and time.time() < deadline:
        time.sleep(10)
    tokenizer = AutoTokenizer.from_pretrained(source)
    base = BaseSpec(SAME, "llama", "byte_bpe", len(tokenizer), spec["hidden_size"], spec["num_hidden_layers"],
                    spec["num_attention_heads"], spec["num_key_value_heads"], spec["intermediate_size"],
                    spec["head_dim"], steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"])
    blocks = pack(tokenizer, docs, spec["seq_len"])
    model = build_base(base, tokenizer, max_positions=max(512, spec["seq_len"]), seed=seed).to(device)
    stats = train(model, blocks, base, device, seed=seed, log_every=max(10, spec["steps"] // 20))
    save_base(model, tokenizer, path)
    with open(os.path.join(path, "pretraining.json"), "w") as f:
        json.dump({"parameters": sum(p.numel() for p in model.parameters()), "tokenizer_of": source, "seed": seed,
                   **spec, **stats}, f, indent=1)
    return path


def resolve_bases(size: dict, bases: str | None, out: str, seed: int, *, build_only: bool = False) -> dict:
    """Paths of the three bases.

    With `bases` (the `--out` of `benchmarks/pretrain.py`), tiny-llama and tiny-gemma must be there (`build_only`:
    they may still be training beside this process) and tiny-llama-b is built there when missing. Without it, the
    committed demo models are used, and what is missing is built and pretrained briefly under `out/bases`.
    """
    from peft_transfer.worlds.tiny_models import demo_base

    paths = {}
    for name in (SOURCE, CROSS):
        if bases:
            paths[name] = os.path.join(bases, name)
            if not build_only and not os.path.exists(os.path.join(paths[name], "config.json")):
                raise FileNotFoundError(f"{paths[name]} has no model: run benchmarks/pretrain.py --out {bases} first.")
        else:
            paths[name] = demo_base(name, os.path.join(out, "bases"), pretrain_steps=size["fallback_pretrain_steps"],
                                    seed=seed)
    same = os.path.join(bases or os.path.join(out, "bases"), SAME)
    paths[SAME] = build_same_family_target(paths[SOURCE], same, size["same_family"], seed=seed + 1)
    return paths


def _pretraining_record(path: str) -> dict:
    record = os.path.join(path, "pretraining.json")
    if not os.path.exists(record):
        return {}
    with open(record) as f:
        return {k: v for k, v in json.load(f).items() if k not in ("curve", "anneal_phases")}


# ---------------------------------------------------------------------------------------------------------------
# One task's rows


def _prepare(cfg, inputs: list[str], stats: dict, labels=None, *, made_by: str) -> None:
    """Put the synthesis (and labels) stages of `cfg`'s run in place from `inputs` (and `labels`), recorded as
    provided by `made_by`, so that `Transfer.run()` takes them as done and its report says where they came from."""
    from datasets import Dataset

    from peft_transfer import Transfer
    from peft_transfer.rundir import ACCEPTED, STATS, write_json

    transfer = Transfer(cfg, show_progress=False)

    def write_synthesis(folder):
        Dataset.from_dict({"input": list(inputs)}).save_to_disk(os.path.join(folder, ACCEPTED))
        write_json(os.path.join(folder, STATS), stats)

    transfer.provide("synthesis", write_synthesis, made_by=made_by)
    if labels is not None:
        transfer.provide("labels", labels.save_to_disk, made_by=made_by)


def random_text(n: int, seed: int, max_chars: int = 80) -> list[str]:
    """`n` distinct random generic sentences (the paper's 'random Wikipedia text' ablation), cut to task length."""
    from peft_transfer.worlds.corpus import filler_block

    rng, out = random.Random(f"random-text:{seed}"), []
    while len(out) < n:
        for sentence in filler_block(rng).split(". "):
            text = sentence.strip().rstrip(".")[:max_chars].rsplit(" ", 1)[0] if len(sentence) > max_chars else sentence
            text = text.strip().rstrip(".") + "."
            if len(text) > 3 and text not in out:
                out.append(text)
    return out[:n]


def baseline_accuracies(cfg) -> dict:
    """Accuracy of the source base + source adapter and of the bare target base, from the pipeline's own evaluation
    (and its cache): for Table 1 when a transfer failed before its evaluation stage."""
    from peft_transfer import Transfer

    results = Transfer(cfg, show_progress=False).evaluate(("source_adapter", "target_base"))
    return {"num_eval": results["target_base"]["num_samples"], **{k: v["accuracy"] for k, v in results.items()}}


def run_task(task_dir: str, task_name: str, description: str, size_name: str, bases: dict, seed: int) -> list[dict]:
    """Every row of one task (the task's files are in `task_dir/data`); writes and returns `task_dir/rows.json`."""
    import torch
    from datasets import load_from_disk

    from peft_transfer import Transfer, TransferConfig
    from peft_transfer.data import load_examples
    from peft_transfer.rundir import RunDir
    from peft_transfer.synthesis import SynthesisError

    if not torch.cuda.is_available():
        # One thread: tiny models gain little from a second, and two-thread processes on shared cores stall in
        # OpenMP barriers whenever another job holds a core (benchmarks/pretrain.py measured 15x per step).
        torch.set_num_threads(1)
    size = SIZES[size_name]
    data = os.path.join(task_dir, "data")
    n = size["transfer"]["num_samples"]
    common = dict(size["transfer"], task_name=description, train_file=os.path.join(data, "train.jsonl"),
                  eval_file=os.path.join(data, "test.jsonl"), seed_file=os.path.join(data, "seeds.jsonl"), seed=seed,
                  source_model=bases[SOURCE],
                  # Rows share the source adapter and the targets: evaluate those once per task.
                  evaluation_cache_dir=os.path.join(task_dir, "evaluation_cache"))
    rows: list[dict] = []
    shared: dict = {}

    def config(row: str, **overrides) -> TransferConfig:
        settings = dict(common, target_model=bases[SAME], output_dir=os.path.join(task_dir, row))
        if shared:
            settings.update(source_adapter=shared["source_adapter"], discriminator_adapter=shared["discriminator"])
        settings.update(overrides)
        return TransferConfig(**settings)

    def run(row: str, cfg: TransferConfig, *, pair: str, setting: str, stages=None, **info) -> dict:
        start = time.perf_counter()
        record = dict(task=task_name, row=row, pair=pair, setting=setting, source_model=cfg.source_model,
                      target_model=cfg.target_model, peft_type=cfg.peft_type, filter_mode=cfg.filter_mode, **info)
        try:
            transfer = Transfer(cfg, show_progress=False)
            try:
                report = transfer.run(stages=stages)
            except SynthesisError as e:
                if size["margin_fallback"] is None or cfg.filter_mode != "discriminator":
                    raise
                # The progress file keeps the scored candidates: a re-run with the new margin re-takes the verdicts.
                record["margin_fallback"] = {"from": cfg.filter_margin, "to": size["margin_fallback"], "why": str(e)}
                cfg.filter_margin = size["margin_fallback"]
                report = Transfer(cfg, show_progress=False).run(stages=stages)
        except Exception as e:  # one failing row must not lose the other rows of a device command
            record.update(error=f"{type(e).__name__}: {e}", seconds=round(time.perf_counter() - start, 1))
            rows.append(record)
            print(f"[{task_name}] {row}: FAILED {record['error']}", flush=True)
            return {}
        ev, syn, diag = report.get("evaluation") or {}, report.get("synthesis") or {}, report.get("diagnostics") or {}
        record.update(
            transferred=ev.get("transferred"), source_adapter=ev.get("source_adapter"),
            target_base=ev.get("target_base"), num_eval=ev.get("num_samples"),
            num_accepted=syn.get("accepted"), num_candidates=syn.get("candidates"),
            acceptance_rate=syn.get("acceptance_rate"), mmd_accepted=diag.get("mmd_accepted"),
            mmd_unfiltered=diag.get("mmd_unfiltered"), seconds=round(time.perf_counter() - start, 1),
        )
        if report.get("discriminator"):
            record["discriminator_roc_auc"] = report["discriminator"].get("roc_auc")
        rows.append(record)
        print(f"[{task_name}] {row}: transferred {record['transferred']} source {record['source_adapter']} "
              f"target {record['target_base']} ({record['seconds']} s)", flush=True)
        return record

    def subset_row(row: str, pool_dir: str, k: int, **overrides) -> str:
        """A row trained on the pool's first `k` accepted inputs and their labels."""
        cfg = config(row, **overrides)
        if not os.path.isdir(RunDir(cfg.output_dir).labels):
            pool_run = RunDir(pool_dir)
            labels = load_from_disk(pool_run.labels)
            with open(pool_run.synthesis_stats) as f:
                stats = json.load(f)
            k = min(k, len(labels))
            stats["extra"] = {**stats.get("extra", {}), "subset_of": pool_dir, "pool_accepted": stats["accepted"]}
            stats["accepted"] = k
            _prepare(cfg, labels["input"][:k], stats, labels.select(range(k)), made_by=f"first {k} of {pool_dir}")
        return cfg.output_dir

    # 1. The pool: source adapter, discriminator, max(scaling) accepted and labelled (same-family generator).
    pool_n = max(size["scaling"] + [n])
    pool = config("pool-same", num_samples=pool_n, candidate_budget=max(common["candidate_budget"], 8 * pool_n))
    run("pool-same", pool, pair="same", setting="pool", stages=("source_adapter", "discriminator", "synthesis", "labels"))
    pool_run = RunDir(pool.output_dir)
    if not all(pool_run.finished(stage) for stage in ("source_adapter", "discriminator")):
        return _save_rows(task_dir, rows)  # nothing below can run without the shared adapters
    shared.update(source_adapter=pool_run.source_adapter, discriminator=pool_run.discriminator)
    if not pool_run.finished("labels"):
        # The same-family generator could not fill the pool: the same-family rows cannot run, the cross pair can.
        # Table 1 still gets the source adapter's and the target bases' accuracy for every transfer that failed.
        same = config("translora-same", num_samples=n)
        rows.append(dict(task=task_name, row="translora-same", pair="same", setting="filtered",
                         error="the pool's synthesis failed (see pool-same)", **baseline_accuracies(same)))
        cross = config("translora-cross", target_model=bases[CROSS], num_samples=n)
        if not run("translora-cross", cross, pair="cross", setting="filtered"):
            rows[-1].update(baseline_accuracies(cross))
        return _save_rows(task_dir, rows)

    # 2. Table 1: same family (a subset of the pool) and cross family (its own synthesis with the target generator).
    subset_row("translora-same", pool.output_dir, n, num_samples=n)
    run("translora-same", config("translora-same", num_samples=n), pair="same", setting="filtered")
    run("translora-cross", config("translora-cross", target_model=bases[CROSS], num_samples=n), pair="cross",
        setting="filtered")

    # 3. Table 5: ablations on the same-family pair.
    run("unfiltered-same", config("unfiltered-same", filter_mode="none", discriminator_adapter=None, compute_mmd=False),
        pair="same", setting="unfiltered")
    seeds = [s["input"] for s in load_examples(common["seed_file"], what="seed_file")]
    seeds_cfg = config("seeds-only-same", num_samples=len(seeds))
    if not RunDir(seeds_cfg.output_dir).finished("synthesis"):
        _prepare(seeds_cfg, seeds, {"accepted": len(seeds), "candidates": 0, "extra": {"made_by": "seeds only"}},
                 made_by="the seeds only (Table 5 ablation)")
    run("seeds-only-same", seeds_cfg, pair="same", setting="seeds only")
    text_cfg = config("random-text-same")
    if not RunDir(text_cfg.output_dir).finished("synthesis"):
        _prepare(text_cfg, random_text(n, seed), {"accepted": n, "candidates": 0, "extra": {"made_by": "random text"}},
                 made_by="random generic text (Table 5 ablation)")
    run("random-text-same", text_cfg, pair="same", setting="random text")

    # 4. Table 6: other PEFT types for the new adapter, on translora-same's synthetic set and labels.
    for peft_type, row, lr in (("dora", "dora-same", common["learning_rate"]),
                               ("prompt_tuning", "prompt-tuning-same", size["prompt_tuning_learning_rate"])):
        out = RunDir(os.path.join(task_dir, row))
        if not out.finished("labels"):
            os.makedirs(out.root, exist_ok=True)
            done = RunDir(os.path.join(task_dir, "translora-same"))
            for stage in ("synthesis", "labels"):  # made by the same settings: the fingerprints carry over
                shutil.copytree(done.stage(stage), out.stage(stage))
        run(row, config(row, peft_type=peft_type, learning_rate=lr), pair="same", setting=peft_type)

    # 5. Table 7: a second hop from translora-same's adapter to the other family, with the first discriminator.
    same_adapter = RunDir(os.path.join(task_dir, "translora-same")).target_adapter
    if os.path.isdir(same_adapter):
        run("chain-hop2", config("chain-hop2", source_model=bases[SAME], source_adapter=same_adapter,
                                 target_model=bases[CROSS], discriminator_model=bases[SOURCE]),
            pair="chain", setting="hop 2")

    # 6. Fig. 5: accuracy against the number of accepted samples (first k of the pool; k = n is translora-same).
    for k in size["scaling"]:
        if k == n:
            continue
        row = f"scaling-same-N{k}"
        subset_row(row, pool.output_dir, k, num_samples=k)
        run(row, config(row, num_samples=k), pair="same", setting=f"N={k}", num_samples=k)
    return _save_rows(task_dir, rows)


def _save_rows(task_dir: str, rows: list[dict]) -> list[dict]:
    with open(os.path.join(task_dir, "rows.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Tables, claims, plots


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def tables(rows: list[dict], size: dict) -> dict:
    """Every table of the benchmark from the rows (accuracies in [0, 1])."""
    by = {(r["task"], r["row"]): r for r in rows}  # a failed transfer may still carry its baselines (Table 1)
    tasks = sorted({r["task"] for r in rows})
    n = size["transfer"]["num_samples"]

    def acc(task, row, key="transferred"):
        return by.get((task, row), {}).get(key)

    table1 = {}
    for pair, row in PAIRS.items():
        per_task = {t: {"source_lora": acc(t, row, "source_adapter"), "target_base": acc(t, row, "target_base"),
                        "translora": acc(t, row)} for t in tasks}
        # Averages over the tasks with all three numbers, so that the columns compare like with like.
        complete = [v for v in per_task.values() if None not in v.values()]
        table1[pair] = {"per_task": per_task,
                        "average": {k: _mean(v[k] for v in complete) for k in ("source_lora", "target_base", "translora")},
                        "tasks_averaged": len(complete)}
    def across(row: str) -> dict:
        per_task = {t: acc(t, row) for t in tasks}
        return {"per_task": per_task, "average": _mean(per_task.values())}

    table5 = {row: across(row) for row in ABLATIONS}
    table6 = {peft: across(row) for peft, row in (("lora", "translora-same"), ("dora", "dora-same"),
                                                  ("prompt_tuning", "prompt-tuning-same"))}
    table7 = {name: across(row) for name, row in (("hop1 A->B", "translora-same"), ("hop2 B->C", "chain-hop2"),
                                                  ("direct A->C", "translora-cross"))}
    table9 = {}
    for pair, row in (("same", "pool-same"), ("cross", "translora-cross")):
        table9[pair] = {t: {"accepted": acc(t, row, "mmd_accepted"), "unfiltered": acc(t, row, "mmd_unfiltered"),
                            "acceptance_rate": acc(t, row, "acceptance_rate")} for t in tasks}
    fig5 = {str(k): across("translora-same" if k == n else f"scaling-same-N{k}") for k in size["scaling"]}
    return {"tasks": tasks, "table1": table1, "table5": table5, "table6": table6, "table7": table7,
            "table9": table9, "fig5": fig5}


def _on_every_task(measured: list[bool], num_tasks: int) -> bool | None:
    """A claim "on every task": one measured task that fails decides it; it holds only when every task is measured."""
    if not all(measured):
        return False
    return True if measured and len(measured) == num_tasks else None


def claims(t: dict) -> dict:
    """The four claims as holds/fails with the numbers they rest on (None: a number is missing)."""
    out = {}
    a = {}
    for pair, table in t["table1"].items():
        avg = table["average"]
        ok = None if None in avg.values() else avg["translora"] >= max(avg["source_lora"], avg["target_base"])
        a[pair] = {"holds": ok, **avg, "tasks_averaged": table["tasks_averaged"]}
    out["a_translora_ge_max_source_target_on_average"] = a
    b = {}
    for pair, table in t["table1"].items():
        gaps = {task: (v["translora"] - v["source_lora"]) if None not in (v["translora"], v["source_lora"]) else None
                for task, v in table["per_task"].items()}
        known = [g for g in gaps.values() if g is not None]
        b[pair] = {"holds": _on_every_task([g >= -0.02 for g in known], len(gaps)),
                   "worst_gap": min(known) if known else None, "gap_per_task": gaps}
    out["b_translora_ge_source_minus_2_points_every_task"] = b
    avg5 = {row: v["average"] for row, v in t["table5"].items()}
    known5 = None not in avg5.values()
    order = sorted(avg5, key=lambda r: -avg5[r]) if known5 else None  # ties keep the paper's order: see below
    out["c_filtered_above_ablations"] = {
        "holds": all(avg5["translora-same"] > avg5[r] for r in ABLATIONS[1:]) if known5 else None,
        "paper_order_holds": all(avg5[a] > avg5[b] for a, b in zip(ABLATIONS, ABLATIONS[1:])) if known5 else None,
        "paper_order": list(ABLATIONS), "measured_order": order, "averages": avg5,
    }
    d = {}
    for pair, per_task in t["table9"].items():
        pairs = {task: v for task, v in per_task.items() if None not in (v["accepted"], v["unfiltered"])}
        d[pair] = {"holds": _on_every_task([v["accepted"] < v["unfiltered"] for v in pairs.values()], len(per_task)),
                   "tasks_lower": sum(v["accepted"] < v["unfiltered"] for v in pairs.values()),
                   "tasks_measured": len(pairs),
                   "tasks": len(per_task)}
    out["d_mmd_accepted_below_unfiltered_every_task"] = d
    return out


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _verdict(h) -> str:
    return {True: "**holds**", False: "**fails**", None: "n/a"}[h]


def table9_lines(table9: dict, title: str) -> list[str]:
    """Table 9 as Markdown lines: `{pair: {task: {"accepted", "unfiltered", "acceptance_rate"}}}`."""
    lines = ["", title, "", "| task | pair | accepted | unfiltered | acceptance rate |", "|---|---|---|---|---|"]
    fmt = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
    for pair, per_task in table9.items():
        for task, v in per_task.items():
            lines.append(f"| {task} | {pair} | {fmt(v['accepted'])} | {fmt(v['unfiltered'])} | "
                         f"{_pct(v['acceptance_rate'])} |")
    return lines


def claims_ab_lines(c: dict, num_tasks: int) -> list[str]:
    """Claims (a) and (b), per pair, as Markdown lines."""
    lines = []
    for pair, v in c["a_translora_ge_max_source_target_on_average"].items():
        lines.append(f"- (a) {pair}: Trans-LoRA {_pct(v['translora'])} >= max(source+LoRA {_pct(v['source_lora'])}, "
                     f"target base {_pct(v['target_base'])}) on average over the {v['tasks_averaged']} of "
                     f"{num_tasks} tasks with all three numbers: {_verdict(v['holds'])}")
    for pair, v in c["b_translora_ge_source_minus_2_points_every_task"].items():
        worst = None if v["worst_gap"] is None else f"{100 * v['worst_gap']:+.1f}"
        lines.append(f"- (b) {pair}: Trans-LoRA >= source+LoRA - 2 points on every task (worst gap {worst} points): "
                     f"{_verdict(v['holds'])}")
    return lines


def markdown(result: dict) -> str:
    t, c, meta = result["tables"], result["claims"], result["meta"]
    lines = [f"# Trans-LoRA quality benchmark — size `{meta['size']}`", "",
             f"Bases: source `{SOURCE}`, same-family target `{SAME}` (source tokenizer), cross-family target "
             f"`{CROSS}` (own tokenizer). Exact match on held-out real inputs, in %. Seed {meta['seed']}; "
             f"N = {meta['settings']['transfer']['num_samples']} accepted samples per transfer.", ""]
    lines += ["## Table 1: source+LoRA / target base / Trans-LoRA", "",
              "| task | pair | source+LoRA | target base | Trans-LoRA |", "|---|---|---|---|---|"]
    for pair, table in t["table1"].items():
        for task, v in table["per_task"].items():
            lines.append(f"| {task} | {pair} | {_pct(v['source_lora'])} | {_pct(v['target_base'])} | "
                         f"{_pct(v['translora'])} |")
        avg = table["average"]
        lines.append(f"| **average** ({table['tasks_averaged']} of {len(table['per_task'])} tasks with all three) | "
                     f"{pair} | {_pct(avg['source_lora'])} | {_pct(avg['target_base'])} | {_pct(avg['translora'])} |")
    for title, key, first in (("Table 5: ablations (same-family pair)", "table5", "setting"),
                              ("Table 6: PEFT type of the new adapter (same-family pair)", "table6", "PEFT"),
                              ("Table 7: two-hop chain (tiny-llama -> tiny-llama-b -> tiny-gemma)", "table7", "hop"),
                              ("Fig. 5: accuracy vs accepted samples (same-family pair)", "fig5", "N")):
        lines += ["", f"## {title}", "", f"| {first} | " + " | ".join(t["tasks"]) + " | average |",
                  "|---|" + "---|" * (len(t["tasks"]) + 1)]
        for name, v in t[key].items():
            lines.append(f"| {name} | " + " | ".join(_pct(v["per_task"][task]) for task in t["tasks"]) +
                         f" | {_pct(v['average'])} |")
    lines += table9_lines(t["table9"], "## Table 9: MMD² to real inputs, accepted vs unfiltered candidates")
    lines += ["", "## Claims", ""] + claims_ab_lines(c, len(t["tasks"]))
    v = c["c_filtered_above_ablations"]
    lines.append(f"- (c) filtered above unfiltered, seeds only and random text on average: {_verdict(v['holds'])}; "
                 f"the paper's order {' > '.join(v['paper_order'])}: {_verdict(v['paper_order_holds'])} "
                 f"(measured: {' > '.join(v['measured_order'] or [])}; averages "
                 + ", ".join(f"{k} {_pct(x)}" for k, x in v["averages"].items()) + ")")
    for pair, v in c["d_mmd_accepted_below_unfiltered_every_task"].items():
        lines.append(f"- (d) {pair}: MMD accepted < unfiltered on {v['tasks_lower']} of the {v['tasks_measured']} "
                     f"tasks measured ({v['tasks']} tasks): {_verdict(v['holds'])}")
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["", "## Failed rows", ""] + [f"- {r['task']} / {r['row']}: {r['error']}" for r in failed]
    fallbacks = [r for r in result["rows"] if "margin_fallback" in r]
    if fallbacks:
        lines += ["", "Rows whose filter margin fell back (too few accepted at margin 0; micro size only): "
                  + ", ".join(f"{r['task']}/{r['row']}" for r in fallbacks) + "."]
    return "\n".join(lines) + "\n"


def plots(result: dict, out: str) -> list[str]:
    """fig3_scatter.png, table5_ablations.png, fig5_scaling.png (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, written = result["tables"], []
    fig, ax = plt.subplots(figsize=(5, 5))
    for (pair, table), marker in zip(t["table1"].items(), ("o", "s")):
        pts = [(v["source_lora"], v["translora"], task) for task, v in table["per_task"].items()
               if None not in (v["source_lora"], v["translora"])]
        ax.scatter([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker=marker, label=f"{pair} family")
        for x, y, task in pts:
            ax.annotate(task, (100 * x, 100 * y), fontsize=6)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8)
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="source + LoRA accuracy (%)", ylabel="Trans-LoRA accuracy (%)",
           title="Transferred vs source, per task (Fig. 3)")
    ax.legend()
    written.append(os.path.join(out, "fig3_scatter.png"))
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(t["table5"])
    values = [100 * (t["table5"][k]["average"] or 0) for k in names]
    ax.bar(range(len(names)), values, color=["C2", "C0", "C1", "C3"])
    ax.set_xticks(range(len(names)), [k.replace("-same", "") for k in names], rotation=15)
    ax.set(ylabel="average accuracy (%)", title="Ablations, same-family pair (Table 5)")
    written.append(os.path.join(out, "table5_ablations.png"))
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = sorted(t["fig5"], key=int)
    ax.plot([int(k) for k in ks], [100 * (t["fig5"][k]["average"] or 0) for k in ks], "o-", label="average")
    for task in t["tasks"]:
        ax.plot([int(k) for k in ks], [100 * (t["fig5"][k]["per_task"][task] or 0) for k in ks], alpha=0.3, lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="accepted synthetic samples N", ylabel="Trans-LoRA accuracy (%)",
           title="Accuracy vs accepted samples (Fig. 5)")
    ax.legend()
    written.append(os.path.join(out, "fig5_scaling.png"))
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return written


def _versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        versions["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        pass
    return versions


def write_outputs(out: str, rows: list[dict], meta: dict) -> dict:
    size = meta["settings"]
    result = {"meta": meta, "rows": rows}
    result["tables"] = tables(rows, size)
    result["claims"] = claims(result["tables"])
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result))
    result["plots"] = plots(result, out)
    return result


# ---------------------------------------------------------------------------------------------------------------


def external_task(args, parser):
    """The task of `--task-file` / `--test-file` (JSONL of {'input', 'target'}), as a benchmark task."""
    from peft_transfer.worlds.tasks import load_task_files

    if not args.test_file:
        parser.error("--task-file needs --test-file")
    return load_task_files(args.task_file, args.test_file, name=args.task_name, seed=args.seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="micro")
    parser.add_argument("--out", default=None, help="output folder (default runs/quality-<size>)")
    parser.add_argument("--bases", help="folder with tiny-llama, tiny-gemma (benchmarks/pretrain.py --out) and "
                                        "tiny-llama-b (built here when missing)")
    parser.add_argument("--tasks", nargs="*", help="task families (default: the size's)")
    parser.add_argument("--task-file", help="an external task: JSONL of {'input', 'target'} (train split)")
    parser.add_argument("--test-file", help="the external task's held-out split")
    parser.add_argument("--task-name", help="the external task's name (default: the train file's folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="tasks run in parallel processes")
    parser.add_argument("--build-bases-only", action="store_true", help="build the missing bases and stop")
    parser.add_argument("--aggregate", nargs="+", help="merge the <task>/rows.json of these output folders")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = SIZES[args.size]
    out = os.path.abspath(args.out or f"runs/quality-{args.size}")
    os.makedirs(out, exist_ok=True)
    start = time.time()

    if args.aggregate:
        rows, metas = [], []
        for folder in args.aggregate:
            with open(os.path.join(folder, "results.json")) as f:
                part = json.load(f)
            rows += part["rows"]
            metas.append(part["meta"])
        meta = dict(metas[0], parts=metas, aggregated_from=args.aggregate, argv=sys.argv)
        result = write_outputs(out, rows, meta)
        print(markdown(result))
        return 0

    bases = resolve_bases(size, args.bases, out, args.seed, build_only=args.build_bases_only)
    if args.build_bases_only:
        print(json.dumps(bases, indent=1))
        return 0

    from peft_transfer.worlds.tasks import make_task, write_task

    if args.task_file:
        tasks = [external_task(args, parser)]
    else:
        from peft_transfer.worlds.tasks import list_tasks

        names = args.tasks or size["tasks"] or list_tasks()
        tasks = [make_task(name, n_train=size["n_train"], n_test=size["n_test"], seed=args.seed) for name in names]
    jobs = []
    for task in tasks:
        task_dir = os.path.join(out, task.name)
        if not os.path.exists(os.path.join(task_dir, "data", "seeds.jsonl")):
            write_task(task, os.path.join(task_dir, "data"))
        jobs.append((task_dir, task.name, task.description, args.size, bases, args.seed))
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            per_task = pool.starmap(run_task, jobs)
    else:
        per_task = [run_task(*job) for job in jobs]
    rows = [row for task_rows in per_task for row in task_rows]
    meta = {"size": args.size, "seed": args.seed, "settings": size, "argv": sys.argv, "bases": bases,
            "bases_pretraining": {k: _pretraining_record(v) for k, v in bases.items()},
            "tasks": [t.name for t in tasks], "task_sizes": {t.name: {"train": len(t.train), "test": len(t.test),
                                                                     "seeds": len(t.seeds)} for t in tasks},
            "versions": _versions(), "wall_s": round(time.time() - start, 1),
            "device": "cuda" if __import__("torch").cuda.is_available() else "cpu"}
    result = write_outputs(out, rows, meta)
    print(markdown(result))
    print(f"wrote {out}/results.json, results.md and {len(result['plots'])} plots in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
