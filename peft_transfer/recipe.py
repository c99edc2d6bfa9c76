"""Recipes and setting names: reading a YAML recipe, refusing unknown keys with the closest valid names, and the
`DistillationConfig` / `TrainingArguments` fields a run takes by their own names into `training_kwargs`."""

from __future__ import annotations

from dataclasses import fields

from .config import SETTING_NAMES
from .errors import ConfigError

# `DistillationConfig` fields the run sets itself, with what to do instead.
RUN_SETS = {
    **dict.fromkeys(("save_strategy", "save_total_limit", "save_only_model", "save_on_each_node",
                     "resume_from_checkpoint", "restore_callback_states_from_checkpoint", "enable_jit_checkpoint"),
                    "checkpoints are the run's: set `save_steps` (0: none); a run resumes by itself"),
    **dict.fromkeys(("hub_strategy", "hub_always_push", "hub_revision"),
                    "the run pushes the finished adapter with its card: see `push_to_hub` and `hub_model_id`"),
    **dict.fromkeys(("use_cpu", "local_rank", "disable_tqdm", "do_train", "do_eval", "do_predict",
                     "model_init_kwargs", "remove_unused_columns", "label_names"),
                    "the run sets it from the machine, the models and `show_progress`"),
    "loss_type": "the distillation loss is `kd_loss` (sequence, forward_kl, reverse_kl or jsd)",
    **dict.fromkeys(("completion_only_loss", "assistant_only_loss"), "the loss is on the teacher's completion only"),
}


def training_field_names() -> tuple[str, ...]:
    """The `DistillationConfig` fields a run takes through `training_kwargs` (and as flags and recipe keys): all of
    them but those `TransferConfig` has itself and those the run sets (`RUN_SETS`, evaluation during training)."""
    from .distillation import DistillationConfig

    own = set(SETTING_NAMES)
    return tuple(f.name for f in fields(DistillationConfig) if f.init and f.name not in own
                 and f.name not in RUN_SETS and not _evaluates(f.name))


def _evaluates(name: str) -> bool:
    """Evaluation during training: the run has no eval dataset in its trainings (the evaluation stage does that)."""
    return name.startswith("eval_") or name.endswith("_eval") or name in (
        "per_device_eval_batch_size", "prediction_loss_only", "include_for_metrics", "batch_eval_metrics",
        "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "eval_packing")


def training_kwargs_problems(kwargs) -> list[str]:
    """What is wrong with a `training_kwargs` mapping, one line per problem (empty: nothing)."""
    import difflib

    if not isinstance(kwargs, dict):
        return [f"training_kwargs must be a mapping of DistillationConfig fields to values (got {kwargs!r})."]
    if not kwargs:
        return []
    allowed = training_field_names()
    problems = []
    for name in kwargs:
        if name in allowed:
            continue
        if name in SETTING_NAMES:
            problems.append(f"training_kwargs: {name!r} is a setting of its own: set `{name}` instead.")
        elif name in RUN_SETS or _evaluates(name):
            why = RUN_SETS.get(name, "the evaluation stage evaluates the adapters; the trainings have no eval set")
            problems.append(f"training_kwargs: {name!r} cannot be set: {why}.")
        else:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "it is not a DistillationConfig field."
            problems.append(f"training_kwargs: unknown field {name!r}: {hint}")
    return problems


def gather_training_settings(data: dict) -> dict:
    """`data` with its top-level `DistillationConfig` fields (`lr_scheduler_type: cosine`) moved into
    `training_kwargs`, as a recipe may write them."""
    names = set(training_field_names())
    moved = {k: data[k] for k in data if k in names}
    if not moved:
        return data
    rest = {k: v for k, v in data.items() if k not in moved}
    rest["training_kwargs"] = {**(rest.get("training_kwargs") or {}), **moved}
    return rest


def check_setting_names(names, *, where: str, prefix: str = "") -> None:
    """Refuse names that are neither `TransferConfig` fields nor the `DistillationConfig` fields a run takes,
    suggesting the closest valid ones.

    Raises:
        `ConfigError`: one line per unknown name, e.g. "Unknown setting 'num_sampels' in recipe.yaml: did you mean
        'num_samples'?"; `prefix` ("--" for flags) is put before both names.
    """
    import difflib

    lines, training = [], training_field_names()
    for name in names:
        if name in SETTING_NAMES or name in training:
            continue
        if name in RUN_SETS or _evaluates(name):
            why = RUN_SETS.get(name, "the evaluation stage evaluates the adapters; the trainings have no eval set")
            lines.append(f"The setting {prefix + str(name)!r} {where} cannot be set: {why}.")
            continue
        close = difflib.get_close_matches(str(name), SETTING_NAMES + training, n=1)
        hint = f"did you mean {prefix + close[0]!r}?" if close else "`peft-transfer run --help` lists every setting."
        lines.append(f"Unknown setting {prefix + str(name)!r} {where}: {hint}")
    if lines:
        raise ConfigError("\n".join(lines))


def read_recipe(path: str) -> dict:
    """The mapping in a YAML recipe, or a `ConfigError` that names the file and the problem."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"The recipe {path!r} does not exist: give the path of a YAML file.") from None
    except IsADirectoryError:
        raise ConfigError(f"The recipe {path!r} is a directory: give the path of a YAML file.") from None
    except PermissionError:
        raise ConfigError(f"The recipe {path!r} cannot be read (permission denied): check its permissions.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"The recipe {path!r} is not UTF-8 text (byte {e.start}): save it as UTF-8.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"The recipe {path!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"The recipe {path!r} must be a YAML mapping of settings (`name: value` per line).")
    return data
