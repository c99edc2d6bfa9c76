"""What a user sees when something they can fix is wrong: one `error:` line and exit status 2, no traceback.

Everything here fails before a model is loaded (or replaces `run_transfer`), so it runs in seconds on CPU.
"""

import os
import subprocess
import sys

import pytest

from peft_transfer import TransferConfig
from peft_transfer.cli import main
from peft_transfer.data import DataError
from peft_transfer.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["--source_model", "x", "--target_model", "y", "--source_adapter", "a", "--filter_mode", "none"]


def _error_line(err: str) -> str:
    """The last line written to stderr, which must be the one error message."""
    lines = err.strip().splitlines()
    assert lines, "nothing was written to stderr"
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


def _seeds(tmp_path, data: bytes):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(data)
    return str(path)


def test_missing_seed_file_is_one_line_and_status_2_before_any_model_is_loaded(tmp_path):
    # `x` and `y` are not models: reaching a model load would end with another error than the seed file's.
    result = subprocess.run(
        [sys.executable, "-m", "peft_transfer.cli", "run", *MODELS, "--seed_file", "/nonexistent.jsonl",
         "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PEFT_TRANSFER_DEBUG": ""},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert _error_line(result.stderr) == (
        "error: The seed file '/nonexistent.jsonl' does not exist: give the path of a JSONL file with one JSON "
        "object per line."
    )


def test_recipe_script_ends_the_same_way(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("source_model: s\ntarget_model: t\ntrain_file: x.jsonl\nnum_sampels: 40\n")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", "transfer.py"), "--config", str(recipe)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PEFT_TRANSFER_DEBUG": ""},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert _error_line(result.stderr) == f"error: Unknown setting 'num_sampels' in {recipe}: did you mean 'num_samples'?"


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    args = ["run", *MODELS, "--seed_file", "/nonexistent.jsonl", "--output_dir", str(tmp_path / "run")]
    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    with pytest.raises(DataError, match="'/nonexistent.jsonl' does not exist"):
        main(["--debug", *args])  # stripped before parsing, wherever it stands
    with pytest.raises(DataError, match="'/nonexistent.jsonl' does not exist"):
        main([*args, "--debug"])
    monkeypatch.setenv("PEFT_TRANSFER_DEBUG", "1")
    with pytest.raises(DataError, match="'/nonexistent.jsonl' does not exist"):
        main(args)


def test_typo_in_recipe_names_the_closest_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    recipe = tmp_path / "recipe.yaml"
    # No models given either: the typo is what the user must see, not "source_model is required".
    recipe.write_text("num_sampels: 40\nseed_file: s.jsonl\n")
    expected = f"Unknown setting 'num_sampels' in {recipe}: did you mean 'num_samples'?"
    assert main(["run", "--config", str(recipe)]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    with pytest.raises(ConfigError) as error:
        TransferConfig.from_yaml(str(recipe))
    assert str(error.value) == expected


def test_typo_in_flag_and_bad_value_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    assert main(["demo-tiny", "--num_sampels", "40"]) == 2
    assert capsys.readouterr().err == (
        "error: Unknown setting '--num_sampels' on the command line: did you mean '--num_samples'?\n"
    )
    assert main(["demo-tiny", "--num_samples", "many"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err  # not argparse's usage of a hundred settings
    assert err.startswith("error: argument --num_samples") and "invalid int value: 'many'" in err


def test_impossible_settings_are_one_message(capsys, monkeypatch):
    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    assert main(["demo-tiny", "--kd_loss", "kl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid TransferConfig:\n- kd_loss='kl' is not one of")
    assert "Traceback" not in err


def test_non_utf8_seed_file_names_file_offset_line_and_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    seeds = _seeds(tmp_path, '{"input": "one"}\n{"input": "café"}\n'.encode("latin-1"))
    assert main(["run", *MODELS, "--seed_file", seeds, "--num_seeds", "1", "--output_dir", str(tmp_path / "run")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (
        f"error: The seed file {seeds!r} is not UTF-8 text: byte 0xe9 at offset 31 (line 2) cannot be decoded. "
        "Save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`, or your editor's 'Save with encoding')."
    )


def test_directory_and_unreadable_file_are_data_errors(tmp_path, monkeypatch):
    from peft_transfer import data

    with pytest.raises(DataError, match=f"The seed file '{tmp_path}' is a directory"):
        data.load_examples(str(tmp_path), what="seed file")
    seeds = _seeds(tmp_path, b'{"input": "one"}\n')

    def refuse(*args, **kwargs):  # chmod 000 does not stop root, who runs these tests in containers
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "open", refuse, raising=False)
    with pytest.raises(DataError, match=r"cannot be read \(permission denied\): check its permissions"):
        data.load_examples(seeds, what="seed file")


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    from peft_transfer.data import load_examples

    seeds = _seeds(tmp_path, '\ufeff{"input": "café"}\r\n'.encode("utf-8"))
    assert load_examples(seeds) == [{"input": "café"}]


def test_ctrl_c_says_where_the_finished_stages_are(tmp_path, capsys, monkeypatch):
    import peft_transfer.pipeline

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    monkeypatch.setattr(peft_transfer.pipeline, "run_transfer", interrupted)
    out = str(tmp_path / "run")
    assert main(["demo-tiny", "--output_dir", out]) == 130
    assert capsys.readouterr().err == (
        f"Interrupted. Finished stages are kept in {out} (no finished stage yet); run the same command to resume.\n"
    )
    os.makedirs(os.path.join(out, "source_adapter"))
    open(os.path.join(out, "synthesis_progress.jsonl"), "w").close()
    assert main(["demo-tiny", "--output_dir", out]) == 130
    assert "(source_adapter and the synthesis progress so far); run the same" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        main(["demo-tiny", "--output_dir", out, "--debug"])


def test_ctrl_c_before_the_settings_are_read(capsys, monkeypatch):
    import peft_transfer.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    monkeypatch.setattr(peft_transfer.cli, "parse_config", interrupted)
    assert main(["demo-tiny"]) == 130
    assert capsys.readouterr().err == "Interrupted.\n"


def test_only_the_main_process_prints(capsys, monkeypatch):
    # As `accelerate launch` (torchrun) sets it for the second process, before any process group exists: the error
    # path must neither print there nor try to form a group (which would wait for the other ranks).
    monkeypatch.delenv("PEFT_TRANSFER_DEBUG", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["demo-tiny", "--num_sampels", "40"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["demo-tiny", "--num_sampels", "40"]) == 2
    assert capsys.readouterr().err.startswith("error: Unknown setting '--num_sampels'")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["demo", "-h"]])
def test_help_lists_every_setting(argv, capsys):
    # Help texts carry literal `%` signs ("80% of num_samples"), which argparse would take for a format.
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "--candidate_budget" in out and "80% of num_samples" in out
    assert "--learning_rate" in out  # the training group
