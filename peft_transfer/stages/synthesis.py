"""The synthesis stage: generate -> filter until `num_samples` are accepted, then the Table 9 diagnostics (MMD²,
diversity, the Fig. 7 projection) of accepted, unfiltered and rejected candidates."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from types import SimpleNamespace

import numpy as np

from .. import rundir
from ..distributed import is_main_process, map_across_processes, wait_for_everyone
from ..rundir import read_json, write_json
from .common import backend_stats, generation_lease

logger = logging.getLogger(__name__)


def body(run, out: str) -> None:
    from datasets import Dataset

    from ..metrics import calibrate_margin
    from ..synthesis import synthesize

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
        generator = stack.enter_context(generation_lease(
            run, "synthesis", cfg.generator, run.source_adapter if cfg.generate_with_source_adapter else None))
        disc = stack.enter_context(run.pool.lease(cfg.discriminator_base, run.discriminator_adapter)) if use_filter \
            else SimpleNamespace(model=None, tokenizer=None)
        rows, stats = synthesize(cfg, generator.model, generator.tokenizer, run.seeds, discriminator=disc.model,
                                 discriminator_tokenizer=disc.tokenizer, references=run.real_inputs(),
                                 progress_path=run.dirs.progress, progress_key=run.progress_key(),
                                 fresh=cfg.overwrite, show_progress=run.show_progress,
                                 embed=_embedder(cfg, generator) if cfg.near_duplicate_similarity is not None else None)
        if is_main_process():
            Dataset.from_list(rows).save_to_disk(os.path.join(out, rundir.CANDIDATES))
            Dataset.from_list([r for r in rows if r["accepted"]]).save_to_disk(os.path.join(out, rundir.ACCEPTED))
            write_json(os.path.join(out, rundir.STATS), {**stats.to_dict(), "filter_margin": cfg.filter_margin,
                                                          **backend_stats(generator)})
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


def _embedder(cfg, generator):
    """Embeddings for the near-duplicate check: `embedding_model`, else the generator's mean-pooled hidden states;
    each process embeds a shard."""
    from ..metrics import embed_texts

    kwargs = dict(sentence_model=cfg.embedding_model, model=None if cfg.embedding_model else generator.model,
                  tokenizer=None if cfg.embedding_model else generator.tokenizer, batch_size=cfg.filter_batch_size)
    return lambda texts: np.asarray(map_across_processes(lambda shard: list(embed_texts(shard, **kwargs)), texts))


def _diagnostics(run, rows: list[dict], model, tokenizer, out: str) -> dict:
    """Paper Table 9: MMD to real inputs of the accepted and of the unfiltered candidates (same bandwidth)."""
    from ..metrics import distinct_n, embed_texts, median_heuristic_bandwidth, mmd2, pca_2d, plot_projection

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


def summary(dirs: rundir.RunDir) -> str:
    stats = read_json(dirs.synthesis_stats)
    return (f"accepted {stats.get('accepted', 0)} of {stats.get('candidates', 0)} candidates "
            f"(filter passed {stats.get('acceptance_rate', 0):.0%})")
