"""Every stage reports to the trackers named in `report_to`, through the integrations transformers already has
(tensorboard, trackio, wandb, mlflow, comet, ...), under one run name.

The training stages (source adapter, discriminator, target adapter) log their curves through their `Trainer`, as any
HF training does, with the stage's name before each key (`target_adapter/loss`), so one tracker run holds them all.
After each stage, `StageTracker.log_stage` sends what the stage wrote, read from its artifacts: its time and peak
memory; the discriminator's held-out accuracy and ROC-AUC and its score histograms (real and synthetic held-out
inputs); the filter's pass rate per round, the candidates spent, duplicates, seed copies and leaks dropped, and MMD²;
the teacher's label agreement; the three accuracies. Numbers only: no input text reaches a tracker.

The integrations add their own namespace (TensorBoard and W&B put non-eval keys under `train/`), so a stage figure
reads `train/synthesis/acceptance_rate` there. TensorBoard writes into the run directory's `tracking/` folder.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from . import rundir
from .distributed import is_main_process
from .rundir import read_json

logger = logging.getLogger(__name__)


def integrations(report_to) -> list[str]:
    """The integration names `report_to` asks for (`"all"`: every one installed; `"none"`: none)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        return get_available_reporting_integrations()
    return [n for n in names if n != "none"]


def check_integrations(report_to) -> None:
    """Every tracker `report_to` names is one transformers knows, and its package is installed (before any work)."""
    names = integrations(report_to)
    if not names:
        return
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    from .errors import PreflightError

    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise PreflightError(f"report_to names no tracker transformers knows: {', '.join(map(repr, unknown))}; use "
                             f"some of {', '.join(INTEGRATION_TO_CALLBACK)}, or 'none'.")
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        hint = " (pip install \"peft-transfer[tensorboard]\")" if missing == ["tensorboard"] else ""
        raise PreflightError(f"report_to asks for {', '.join(missing)}, whose package is not installed: install it"
                             f"{hint}, or leave it out of report_to.")


def run_name(config) -> str:
    return config.run_name or os.path.basename(os.path.abspath(config.output_dir))


class _Prefixed:
    """A Trainer integration callback whose logs carry the stage's name first (every other event unchanged)."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def __getattr__(self, name):
        if name in ("inner", "prefix"):  # not set yet (a copy being made): no recursion through `inner`
            raise AttributeError(name)
        return getattr(self.inner, name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {f"{self.prefix}/{k}": v for k, v in (logs or {}).items()}
        return self.inner.on_log(args, state, control, logs=logs, **kwargs)


def _into(cb, tracking_dir: str):
    """`cb`, with TensorBoard writing into `tracking_dir` (unless TENSORBOARD_LOGGING_DIR says otherwise)."""
    from transformers.integrations import TensorBoardCallback

    if isinstance(cb, TensorBoardCallback) and not os.getenv("TENSORBOARD_LOGGING_DIR"):
        cb.logging_dir = tracking_dir
    return cb


def prefix_trainer_logs(trainer, stage: str, tracking_dir: str) -> None:
    """Make `trainer`'s integration callbacks log under `stage/` and TensorBoard write into `tracking_dir`."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    kinds = tuple(INTEGRATION_TO_CALLBACK.values())
    handler = trainer.callback_handler
    for i, cb in enumerate(handler.callbacks):
        if isinstance(cb, kinds):
            handler.callbacks[i] = _Prefixed(_into(cb, tracking_dir), stage)


def _numbers(d: dict, *, skip=()) -> dict:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip and np.isfinite(v)}


class StageTracker:
    """The pipeline's own figures, one `log_stage` per stage, to the integrations of `config.report_to`.

    Nothing happens without a tracker, on processes other than the main one, or for `report_to: none`.
    """

    def __init__(self, config, dirs: rundir.RunDir):
        self.dirs = dirs
        self.names = integrations(config.report_to) if is_main_process() else []
        self.run_name = run_name(config)
        self._callbacks = None

    def _start(self):
        import torch
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        self.args = TrainingArguments(output_dir=self.dirs.tracking, report_to=self.names, run_name=self.run_name,
                                      use_cpu=not torch.cuda.is_available())
        self.state, self.control = TrainerState(), TrainerControl()
        self._callbacks = []
        for kind in get_reporting_integration_callbacks(self.names):
            cb = _into(kind(), self.dirs.tracking)
            cb.on_train_begin(self.args, self.state, self.control)
            self._callbacks.append(cb)

    def log(self, stage: str, figures: dict, step: int = 0) -> None:
        if not self.names or not figures:
            return
        if self._callbacks is None:
            self._start()
        self.state.global_step = step
        logs = {f"{stage}/{k}": v for k, v in figures.items()}
        for cb in self._callbacks:
            cb.on_log(self.args, self.state, self.control, logs=dict(logs))

    def histogram(self, stage: str, name: str, values) -> None:
        """A distribution, where the tracker draws one (TensorBoard); every tracker gets its median."""
        values = np.asarray([v for v in values if v is not None], dtype=float)
        if not self.names or not values.size:
            return
        self.log(stage, {f"{name}_median": float(np.median(values))})
        for cb in self._callbacks:
            writer = getattr(cb, "tb_writer", None)
            if writer is not None:
                writer.add_histogram(f"{stage}/{name}", values, 0)
                writer.flush()

    def log_stage(self, name: str, info: dict) -> None:
        """The figures of the finished stage `name` (its artifacts are in place) and `info` (seconds, peak RSS)."""
        if not self.names:
            return
        try:
            self._log_stage(name, info)
        except Exception as e:  # noqa: BLE001 - a tracker's failure never fails the run; its results are on disk
            logger.warning("The %s figures did not reach %s (%s: %s).", name, ", ".join(self.names),
                           type(e).__name__, e)

    def _log_stage(self, name: str, info: dict) -> None:
        dirs = self.dirs
        figures = _numbers({"seconds": info.get("seconds"), "peak_rss_gb": info.get("peak_rss_gb"),
                            "reused": 1.0 if info.get("skipped") else 0.0})
        if name == "discriminator" and os.path.exists(dirs.discriminator_metrics):
            metrics = read_json(dirs.discriminator_metrics)
            figures.update(_numbers(metrics))
            for kind, auc in (metrics.get("roc_auc_by_negative_kind") or {}).items():
                figures[f"roc_auc/{kind}"] = float(auc)
            self.histogram(name, "held_out_real_scores", metrics.get("held_out_positive_scores") or [])
            self.histogram(name, "held_out_synthetic_scores", metrics.get("held_out_negative_scores") or [])
        elif name == "synthesis":
            if os.path.exists(dirs.synthesis_stats):
                figures.update(_numbers(read_json(dirs.synthesis_stats)))
            if os.path.exists(dirs.diagnostics):
                figures.update(_numbers(read_json(dirs.diagnostics), skip=("num_real",)))
            self._log_rounds(name)
        elif name == "labels" and os.path.exists(dirs.label_stats):
            figures.update(_numbers(read_json(dirs.label_stats)))
        elif name == "target_adapter":
            selection = dirs("target_adapter", rundir.SELECTION)
            if os.path.exists(selection):
                figures.update(_numbers(read_json(selection)))
        elif name == "evaluation" and os.path.exists(dirs.evaluation):
            figures.update(_numbers(read_json(dirs.evaluation)))
        self.log(name, figures)

    def _log_rounds(self, name: str) -> None:
        from .report_html import candidate_columns, pass_rate_per_round, verdict_scores

        candidates = candidate_columns(self.dirs)
        if not candidates or "round" not in candidates:
            return
        for r, scored, rate in pass_rate_per_round(candidates):
            self.log(name, {"pass_rate_per_round": rate, "scored_per_round": float(scored)}, step=int(r))
        passed, rejected = verdict_scores(candidates)
        self.histogram(name, "passed_scores", passed)
        self.histogram(name, "rejected_scores", rejected)

    def close(self) -> None:
        for cb in self._callbacks or []:
            cb.on_train_end(self.args, self.state, self.control)
        self._callbacks = None
