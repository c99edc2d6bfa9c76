"""The `peft-transfer` command.

    peft-transfer demo                               # SmolLM2-135M -> Gemma-3-270M on three-digit addition
    peft-transfer demo-tiny                          # the one-minute smoke run on two tiny local model families
    peft-transfer run --config recipes/demo.yaml     # any recipe; flags override the YAML
    peft-transfer run --config recipe.yaml --output_dir runs/x --num_samples 500

Recipes are flat YAML files keyed by `TransferConfig` field names; unknown keys are refused with the closest valid
names. A run started again with the same `output_dir` resumes after its last finished stage. A mistake the user can
fix ends the command with one line `error: <message>` and exit status 2; `--debug` (or `PEFT_TRANSFER_DEBUG=1`)
shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from .config import TransferConfig
from .errors import ConfigError, UserError
from .recipe import check_setting_names, read_recipe

COMMANDS = ("run", "demo", "demo-tiny")
USER_ERROR_STATUS = 2  # argparse's status for a bad command line, which this extends to bad files and settings
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def make_parser(**defaults):
    """A `TrlParser` for `TransferConfig` and the training fields of `DistillationConfig` whose mistakes are
    `ConfigError`s (see `TransferParser`)."""
    parser = _parser_class()((TransferConfig,))
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def _parser_class():
    from trl import TrlParser

    class TransferParser(TrlParser):
        """`TrlParser` with unknown YAML keys and flags refused by name, with the closest valid names.

        TRL (1.16) collects unknown YAML keys as `--key value` strings and raises a plain `ValueError` listing them
        only after the dataclass is built (so `__post_init__` may complain first about something else), and
        `HfArgumentParser` refuses unknown flags with "Some specified arguments are not used by the
        HfArgumentParser"; argparse itself prints the whole usage (a hundred settings) and exits on a bad value.
        Here each of those is one `ConfigError` that names the setting.

        Beside `TransferConfig`'s own fields it takes the `DistillationConfig` fields a run passes to its trainings
        (`config.training_field_names()`, one group in `--help` with TRL's and transformers' own help texts): those
        given, on the command line or in the recipe, land in `TransferConfig.training_kwargs`.
        """

        def __init__(self, dataclass_types, **kwargs):
            kwargs.setdefault("formatter_class", _help_formatter())
            super().__init__(dataclass_types, **kwargs)
            import dataclasses
            from typing import get_type_hints

            from .distillation import DistillationConfig
            from .recipe import training_field_names

            group = self.add_argument_group("training (DistillationConfig / TrainingArguments fields)")
            hints, names = get_type_hints(DistillationConfig), set(training_field_names())
            for f in dataclasses.fields(DistillationConfig):
                if f.name in names:
                    field = _copy_field(f, hints[f.name])
                    self._parse_dataclass_field(group, field)
            # What each parses to when not given (argparse converts string defaults with the field's type).
            self._training_defaults = {}
            for a in group._group_actions:  # the first action per name: a `--no_<name>` complement follows it
                self._training_defaults.setdefault(
                    a.dest, a.type(a.default) if isinstance(a.default, str) and callable(a.type) else a.default)

        def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
            *outputs, remaining = super().parse_args_into_dataclasses(args=args, return_remaining_strings=True,
                                                                      **kwargs)
            config, extra = outputs[0], (outputs[1] if len(outputs) > 1 else None)
            given = {name: value for name, value in vars(extra or {}).items()
                     if name in self._training_defaults and value != self._training_defaults[name]}
            if given:  # a new config, validated again with its training fields
                import dataclasses

                config = dataclasses.replace(config, training_kwargs={**config.training_kwargs, **given})
            return (config, remaining) if return_remaining_strings else (config,)

        def parse_args_and_config(self, args=None, **kwargs):
            args = list(sys.argv[1:] if args is None else args)
            for i, arg in enumerate(args):  # TRL reads only `--config PATH`; accept `--config=PATH` too
                if arg.startswith("--config="):
                    args[i : i + 1] = ["--config", arg.split("=", 1)[1]]
            if "--config" in args:
                i = args.index("--config")
                if i + 1 >= len(args):
                    raise ConfigError("--config needs the path of a YAML recipe.")
                recipe = read_recipe(args[i + 1])
                # `env` is TRL's: environment variables to set.
                check_setting_names([key for key in recipe if key != "env"], where=f"in {args[i + 1]}")
                if not recipe:  # TRL refuses an empty file ("must contain a YAML mapping"); it sets nothing
                    del args[i : i + 2]
            return super().parse_args_and_config(args=args, **kwargs)

        def parse_known_args(self, args=None, namespace=None):
            namespace, remaining = super().parse_known_args(args=args, namespace=namespace)
            flags = [arg.split("=", 1)[0] for arg in remaining if arg.startswith("-")]
            if flags:
                check_setting_names([flag.lstrip("-") for flag in flags], where="on the command line", prefix="--")
            if remaining:
                raise ConfigError(
                    f"Unexpected argument {remaining[0]!r} on the command line: settings are given as "
                    "`--name value` (`peft-transfer run --help` lists them)."
                )
            return namespace, remaining

        def error(self, message):  # argparse would print the full usage and exit
            raise ConfigError(f"{message} (`peft-transfer run --help` lists every setting).")

    return TransferParser


def _help_formatter():
    import argparse
    import re

    class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
        """`HfArgumentParser`'s formatter, with a literal `%` in a help text ("80% of num_samples") kept as it is:
        argparse formats every help text with `%`, and a lone one would end `--help` in a `TypeError`."""

        def _get_help_string(self, action):
            return re.sub(r"%(?![(%])", "%%", super()._get_help_string(action))

    return HelpFormatter


def _copy_field(f, type_):
    """A copy of the dataclass field `f` with its resolved type (HfArgumentParser rewrites the type it parses)."""
    import dataclasses

    copy = dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
    copy.name, copy.type = f.name, type_
    return copy


def parse_config(args: list[str] | None = None, **defaults) -> TransferConfig:
    """A `TransferConfig` from `--config recipe.yaml` and flags, the TRL way."""
    (config,) = make_parser(**defaults).parse_args_and_config(args=args)
    return config


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug`, and whether tracebacks should be shown (`--debug` or `PEFT_TRANSFER_DEBUG=1`)."""
    debug = "--debug" in argv or os.environ.get("PEFT_TRANSFER_DEBUG", "").lower() in ("1", "true", "yes")
    return [arg for arg in argv if arg != "--debug"], debug


def run_cli(run: Callable[[TransferConfig], object], argv: list[str] | None = None, *, debug: bool | None = None,
            **defaults) -> int:
    """Parse `argv` (default `sys.argv[1:]`) into a `TransferConfig` and call `run(config)`, ending as a tool does.

    Returns the exit status: 0; 2 after a `UserError` (or a `ValueError` from parsing the settings), printed as one
    line `error: <message>` without a traceback; 130 after Ctrl-C, with where the finished stages are. With `debug`
    (default: `--debug` in `argv` or `PEFT_TRANSFER_DEBUG=1`) both are re-raised so that the traceback shows. Under
    `accelerate launch` only the main process prints; every process returns the same status.
    """
    argv, asked = debug_requested(list(sys.argv[1:] if argv is None else argv))
    debug = asked if debug is None else debug
    config = None
    try:
        try:
            config = parse_config(argv, **defaults)
        except UserError:
            raise
        except ValueError as e:  # TRL's and HfArgumentParser's own refusals of a recipe or flag
            raise ConfigError(str(e)) from e
        run(config)
        return 0
    except UserError as e:
        if debug:
            raise
        _say(f"error: {e}")
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        if debug:
            raise
        _say(f"Interrupted.{_kept(config.output_dir) if config else ''}")
        return INTERRUPTED_STATUS


def _kept(output_dir: str) -> str:
    """What an interrupted run leaves for the next start, in words."""
    from .rundir import RunDir
    from .stages import STAGE_NAMES

    dirs = RunDir(output_dir)
    done = [name for name in STAGE_NAMES if dirs.finished(name)]
    kept = ", ".join(done) if done else "no finished stage yet"
    if os.path.exists(dirs.progress):
        kept += " and the synthesis progress so far"
    return f" Finished stages are kept in {output_dir} ({kept}); run the same command to resume."


def _say(message: str) -> None:
    """`message` as the last thing this process writes (stdout flushed first, so it cannot land after it)."""
    from .distributed import is_main_process

    if not is_main_process():
        return
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)


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
    from . import demos, pipeline

    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    if argv[:1] in (["-h"], ["--help"]) and command == "run" and not argv[1:]:
        print(__doc__)
    quiet_libraries()
    defaults = {"demo": demos.REAL_DEMO_SETTINGS, "demo-tiny": demos.TINY_DEMO_SETTINGS}.get(command, {})
    return run_cli(lambda config: pipeline.run_transfer(config), argv, debug=debug, **defaults)


if __name__ == "__main__":
    sys.exit(main())
