"""`report.html`: the run's report as a page people look at, one self-contained file in the run directory.

Its parts, each a `<section>` with an id: `accuracy` (the three models on the held-out inputs), `acceptance` (the
filter's pass rate per generate -> filter round), `scores` (the discriminator's log-odds of held-out real inputs,
candidates that passed the filter and those it rejected), `projection` (real, accepted and rejected inputs in two principal components of
their embeddings, paper Fig. 7), `labels`, `stages` (time and peak memory) and `lineage`. Figures are PNGs inlined
as base64, so the file can be mailed or opened from anywhere. A part the run has no data for says so.

Numbers only come from the run directory's artifacts: no text of a real input is written into the page.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from . import lm_evaluation, rundir


def _figure(draw) -> str:
    """An `<img>` of the figure `draw(ax)` makes, as inline PNG (a note instead where matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return '<p class="missing">Figures need matplotlib: pip install "peft-transfer[plots]".</p>'

    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, content: str | None, missing: str) -> str:
    return (f'<section id="{key}"><h2>{html.escape(title)}</h2>'
            + (content if content else f'<p class="missing">{html.escape(missing)}</p>') + "</section>")


def candidate_columns(dirs: rundir.RunDir) -> dict | None:
    """The scored candidates' `round`, `score`, `passed` and `accepted` columns (None: no candidates stored)."""
    if not os.path.isdir(dirs.candidates):
        return None
    from datasets import load_from_disk

    data = load_from_disk(dirs.candidates)
    return {c: data[c] for c in ("round", "score", "passed", "accepted") if c in data.column_names}


def pass_rate_per_round(candidates: dict) -> list[tuple[int, int, float]]:
    """`(round, candidates scored, share that passed the filter)` for each generate -> filter round."""
    rounds, passed = np.asarray(candidates["round"]), np.asarray(candidates["passed"], dtype=float)
    return [(r, int((rounds == r).sum()), float(passed[rounds == r].mean())) for r in sorted(set(rounds.tolist()))]


def verdict_scores(candidates: dict) -> tuple[np.ndarray, np.ndarray]:
    """The log-odds of the scored candidates that passed the filter, and of those it rejected."""
    score = np.asarray([np.nan if s is None else s for s in candidates["score"]], dtype=float)
    passed = np.asarray(candidates["passed"], dtype=bool)
    return score[passed & ~np.isnan(score)], score[~passed & ~np.isnan(score)]


def _accuracy(report: dict) -> str | None:
    ev = report.get("evaluation") or {}
    rows = [[label, f"{ev[key]:.1%}"] for key, label in lm_evaluation.MODELS if key in ev]
    parts = (f"<p>Exact match on {ev.get('num_samples', '?')} held-out inputs.</p>"
             + _table(["model", "accuracy"], rows)) if rows else ""
    lm_eval = report.get("lm_eval") or {}
    if lm_eval:  # evaluation_backend: lm_eval
        parts += "<h3>lm-evaluation-harness</h3>" + _table(*lm_evaluation.table(lm_eval))
    return parts or None


def _acceptance(candidates: dict | None) -> str | None:
    if not candidates or "round" not in candidates:
        return None
    per_round = pass_rate_per_round(candidates)

    def draw(ax):
        ax.bar([str(r) for r, _, _ in per_round], [100 * rate for _, _, rate in per_round])
        ax.set(xlabel="round", ylabel="passed the filter (%)", ylim=(0, 100), title="Acceptance per round")

    rows = [[r, scored, f"{rate:.1%}"] for r, scored, rate in per_round]
    return _figure(draw) + _table(["round", "scored", "passed"], rows)


def _scores(candidates: dict | None, disc: dict) -> str | None:
    groups = {}
    if disc.get("held_out_positive_scores"):
        groups["held-out real inputs"] = np.asarray(disc["held_out_positive_scores"], dtype=float)
    if candidates and "score" in candidates:
        groups["candidates that passed the filter"], groups["candidates it rejected"] = verdict_scores(candidates)
    groups = {k: v for k, v in groups.items() if v.size}
    if not groups:
        return None
    lo, hi = min(v.min() for v in groups.values()), max(v.max() for v in groups.values())
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)

    def draw(ax):
        for name, values in groups.items():
            ax.hist(values, bins=bins, alpha=0.5, density=True, label=name)
        ax.set(xlabel="log p(yes) - log p(no)", ylabel="density", title="Discriminator scores")
        ax.legend(fontsize=8)

    rows = [[k, v.size, f"{np.median(v):.2f}"] for k, v in groups.items()]
    return _figure(draw) + _table(["inputs", "count", "median log-odds"], rows)


def _projection(diagnostics: dict) -> str | None:
    points = diagnostics.get("projection_2d")
    if not points:
        return None

    def draw(ax):
        for name, marker in (("real", "o"), ("accepted", "^"), ("rejected", "x")):
            xy = np.asarray(points.get(name) or [], dtype=float).reshape(-1, 2)
            if len(xy):
                ax.scatter(xy[:, 0], xy[:, 1], s=10, marker=marker, alpha=0.6, label=f"{name} ({len(xy)})")
        ax.set(xlabel="PC 1", ylabel="PC 2", title="Real, accepted and rejected inputs (embeddings, PCA)")
        ax.legend(fontsize=8)

    return _figure(draw)


def _labels(stats: dict) -> str | None:
    if not stats:
        return None
    return _table(["setting or count", "value"], [[k, f"{v:.1%}" if isinstance(v, float) else v]
                                                 for k, v in stats.items()])


def _stages(report: dict) -> str | None:
    stages = report.get("stages") or {}
    if not stages:
        return None
    rows = [[name, f"{info.get('seconds', 0):.1f}", info.get("peak_rss_gb", "—"),
             (report.get("made_by", {}).get(name) or {}).get("provided", "this run")]
            for name, info in stages.items()]
    return _table(["stage", "seconds", "peak RSS (GB)", "made by"], rows)


def _lineage(report: dict) -> str | None:
    lineage = report.get("lineage")
    if not lineage:
        return None
    return _table(["key", "value"], [[k, v] for k, v in lineage.items() if v not in (None, [], {})])


def write_html_report(root: str, report: dict) -> str:
    """Write `report.html` into the run directory `root` from its artifacts and `report`; returns its path."""
    dirs = rundir.RunDir(root)
    candidates = candidate_columns(dirs)
    disc = report.get("discriminator") or {}
    lineage = report.get("lineage") or {}
    title = f"{report.get('task_name') or 'transfer'}: {lineage.get('source_model', '?')} -> " \
            f"{lineage.get('target_model', '?')}"
    syn = report.get("synthesis") or {}
    diag = report.get("diagnostics") or {}
    summary = []
    if syn:
        summary.append(f"accepted {syn.get('accepted', 0)} of {syn.get('candidates', 0)} candidates")
    if diag.get("mmd_unfiltered") is not None and diag.get("mmd_accepted") is not None:
        summary.append(f"MMD² to real inputs: accepted {diag['mmd_accepted']:.4f}, unfiltered "
                       f"{diag['mmd_unfiltered']:.4f}")
    if "roc_auc" in disc:
        summary.append(f"discriminator held-out ROC-AUC {disc['roc_auc']:.3f}")
    parts = [
        _section("accuracy", "Accuracy", _accuracy(report), "No evaluation in this run (give eval_file)."),
        _section("acceptance", "Acceptance per round", _acceptance(candidates), "No candidates in this run."),
        _section("scores", "Discriminator scores", _scores(candidates, disc), "No discriminator scores in this run."),
        _section("projection", "Real, accepted and rejected inputs", _projection(diag),
                 "No projection (compute_mmd off, or nothing rejected)."),
        _section("labels", "Teacher labels", _labels(report.get("labels") or {}), "No label statistics."),
        _section("stages", "Stages", _stages(report), "No stage ran."),
        _section("lineage", "Lineage", _lineage(report), "No transferred adapter yet."),
    ]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 860px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; }}
th {{ background: #f3f3f3; text-align: left; }} img {{ max-width: 100%; }} .missing {{ color: #888; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p id="summary">{html.escape("; ".join(summary))}</p>
{"".join(parts)}
<script>
// For a reader's check (and the tests'): how many figures the browser decoded.
window.addEventListener("load", () => {{
  document.body.dataset.imagesDecoded = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
    path = dirs.report_html
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path
