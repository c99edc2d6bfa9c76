"""The `peft-transfer` command.

    peft-transfer demo                               # the built-in task on two tiny local model families
    peft-transfer run --config recipes/demo.yaml     # any recipe; flags override the YAML
    peft-transfer run --config recipe.yaml --output_dir runs/x --num_samples 500

Recipes are flat YAML files keyed by `TransferConfig` field names; unknown keys are refused. A run started again
with the same `output_dir` resumes after its last finished stage.
"""

from __future__ import annotations

import logging
import sys

from .config import TransferConfig

COMMANDS = ("run", "demo")


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


def main(argv: list[str] | None = None) -> int:
    from .pipeline import run_transfer
    from .testing import DEMO_SETTINGS

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    if argv[:1] in (["-h"], ["--help"]) and command == "run" and not argv[1:]:
        print(__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_config(argv, **(DEMO_SETTINGS if command == "demo" else {}))
    run_transfer(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
