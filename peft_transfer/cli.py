"""The `peft-transfer` command.

    peft-transfer demo                               # SmolLM2-135M -> Gemma-3-270M on three-digit addition
    peft-transfer demo-tiny                          # the one-minute smoke run on two tiny local model families
    peft-transfer run --config recipes/demo.yaml     # any recipe; flags override the YAML
    peft-transfer run --config recipe.yaml --output_dir runs/x --num_samples 500

Recipes are flat YAML files keyed by `TransferConfig` field names; unknown keys are refused. A run started again
with the same `output_dir` resumes after its last finished stage.
"""

from __future__ import annotations

import logging
import sys

from .config import TransferConfig

COMMANDS = ("run", "demo", "demo-tiny")


def make_parser(**defaults):
    from trl import TrlParser

    parser = TrlParser((TransferConfig,))
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def parse_config(args: list[str] | None = None, **defaults) -> TransferConfig:
    """A `TransferConfig` from `--config recipe.yaml` and flags, the TRL way."""
    (config,) = make_parser(**defaults).parse_args_and_config(args=args)
    return config


def quiet_libraries() -> None:
    """The output of a tool: our one line per stage and the progress bars, not the libraries' logs and warnings."""
    import warnings

    import datasets
    import transformers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ours = logging.getLogger("peft_transfer")
    if not ours.handlers:  # main() may run several times in one process (tests, notebooks)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars; the stages keep theirs
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    from . import demos
    from .pipeline import run_transfer

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    if argv[:1] in (["-h"], ["--help"]) and command == "run" and not argv[1:]:
        print(__doc__)
    quiet_libraries()
    defaults = {"demo": lambda: demos.REAL_DEMO_SETTINGS, "demo-tiny": demos.tiny_demo_settings}.get(
        command, dict)()
    config = parse_config(argv, **defaults)
    run_transfer(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
