"""Every path of a run directory, named once, and the record each finished stage leaves.

    output_dir/
      config.json                  the settings of the last start
      report.json                  what made the artifacts, the figures, the stage times
      report.html                  the same as a page: accuracy, acceptance, scores, projection, lineage
      push.json                    the Hub commits pushed from this run
      synthesis_progress.jsonl     generate -> filter rounds so far (while the synthesis stage runs)
      <stage>.incomplete/          a stage at work (a training stage keeps its checkpoints here)
      <stage>/stage.json           a finished stage: its fingerprint, the settings and inputs that made it, its time
      source_adapter/              θs (when trained here)
      discriminator/               the yes/no adapter, metrics.json
      synthesis/                   candidates/, accepted/, stats.json, diagnostics.json, projection.png
      labels/                      the teacher's answers (a `datasets` folder), label_stats.json, labelled/ (every
                                   answer before the selection, with its confidence)
      target_adapter/              θt, transfer.json (its lineage), selection.json (with token selection)
      evaluation/                  evaluation.json, predictions.json

The pipeline, the benchmarks and the tests all take their paths from `RunDir`.
"""

from __future__ import annotations

import hashlib
import json
import os

from .distillation import LINEAGE_FILE

STAGE_RECORD = "stage.json"
# What a stage writes inside its folder (the stage bodies join these to the folder they are given).
METRICS, ACCEPTED, CANDIDATES, STATS = "metrics.json", "accepted", "candidates", "stats.json"
DIAGNOSTICS, PROJECTION, EVALUATION, PREDICTIONS = "diagnostics.json", "projection.png", "evaluation.json", "predictions.json"
LABEL_STATS, SELECTION = "label_stats.json", "selection.json"
LABELLED = "labelled"  # in labels/: every answer before the selection
LM_EVAL, LM_EVAL_TABLE = "lm_eval.json", "lm_eval.md"


class RunDir:
    """The paths of one run directory."""

    def __init__(self, root: str):
        self.root = root

    def __repr__(self) -> str:
        return f"RunDir({self.root!r})"

    def __call__(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # -- files of the run ------------------------------------------------------------------------------------------
    @property
    def config(self) -> str:
        return self("config.json")

    @property
    def report(self) -> str:
        return self("report.json")

    @property
    def report_html(self) -> str:
        return self("report.html")

    @property
    def push_record(self) -> str:
        return self("push.json")

    @property
    def progress(self) -> str:
        return self("synthesis_progress.jsonl")

    @property
    def tracking(self) -> str:
        """Where local trackers (TensorBoard) write the run: every stage, one run."""
        return self("tracking")

    # -- stage folders ---------------------------------------------------------------------------------------------
    def stage(self, name: str) -> str:
        return self(name)

    def incomplete(self, name: str) -> str:
        return self(f"{name}.incomplete")

    def stage_record(self, name: str, *, incomplete: bool = False) -> str:
        return os.path.join(self.incomplete(name) if incomplete else self.stage(name), STAGE_RECORD)

    @staticmethod
    def trainer(folder: str) -> str:
        """Where a training stage keeps the Trainer's checkpoints while it runs (inside its `.incomplete` folder)."""
        return os.path.join(folder, "trainer")

    # -- artifacts -------------------------------------------------------------------------------------------------
    @property
    def source_adapter(self) -> str:
        return self.stage("source_adapter")

    @property
    def discriminator(self) -> str:
        return self.stage("discriminator")

    @property
    def discriminator_metrics(self) -> str:
        return self("discriminator", METRICS)

    @property
    def synthesis(self) -> str:
        return self.stage("synthesis")

    @property
    def accepted(self) -> str:
        return self("synthesis", ACCEPTED)

    @property
    def candidates(self) -> str:
        return self("synthesis", CANDIDATES)

    @property
    def synthesis_stats(self) -> str:
        return self("synthesis", STATS)

    @property
    def diagnostics(self) -> str:
        return self("synthesis", DIAGNOSTICS)

    @property
    def labels(self) -> str:
        return self.stage("labels")

    @property
    def label_stats(self) -> str:
        return self("labels", LABEL_STATS)

    @property
    def target_adapter(self) -> str:
        return self.stage("target_adapter")

    @property
    def lineage(self) -> str:
        return self("target_adapter", LINEAGE_FILE)

    @property
    def evaluation(self) -> str:
        return self("evaluation", EVALUATION)

    @property
    def lm_eval(self) -> str:
        """lm-evaluation-harness results of the three models (`evaluation_backend: lm_eval`)."""
        return self("evaluation", LM_EVAL)

    @property
    def predictions(self) -> str:
        return self("evaluation", PREDICTIONS)

    # -- records ---------------------------------------------------------------------------------------------------
    def finished(self, name: str) -> bool:
        return os.path.isdir(self.stage(name))

    def read_record(self, name: str, *, incomplete: bool = False) -> dict:
        return read_json(self.stage_record(name, incomplete=incomplete))


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    """Write `obj` as JSON atomically: a reader (or a kill) never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def hash_path(path: str) -> str:
    """sha256 (16 hex digits) of a file, or of a folder's files (names and contents, `stage.json` left out: it holds
    times, not content)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            if name == STAGE_RECORD and folder == path:
                continue
            full = os.path.join(folder, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]
