"""The package's rooms: the transfer imports nothing of the demo world, and `distillation/` nothing of the pipeline."""

import json
import os
import subprocess
import sys

import peft_transfer

PACKAGE = os.path.dirname(peft_transfer.__file__)
OPTIONAL = {"peft_transfer.vllm_server", "peft_transfer.lm_evaluation"}  # import their extras lazily; still checked


def _modules(package: str = "peft_transfer", skip: tuple[str, ...] = ()) -> list[str]:
    names = []
    root = os.path.join(os.path.dirname(PACKAGE), *package.split("."))
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, os.path.dirname(PACKAGE)).replace(os.sep, ".")
        if any(rel == s or rel.startswith(s + ".") for s in skip) or "demo_models" in rel:
            continue
        names += [rel if f == "__init__.py" else f"{rel}.{f[:-3]}" for f in files if f.endswith(".py")]
    return sorted(names)


def _imported_after(modules: list[str]) -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('peft_transfer'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_transfer_never_imports_the_demo_world():
    core = _modules(skip=("peft_transfer.worlds",))
    assert "peft_transfer.pipeline" in core and "peft_transfer.cli" in core and len(core) > 30
    loaded = _imported_after(core)
    assert set(core) - OPTIONAL <= loaded  # every module really was imported
    assert not {m for m in loaded if m.startswith("peft_transfer.worlds")}


def test_distillation_imports_nothing_of_the_pipeline():
    loaded = _imported_after(_modules("peft_transfer.distillation"))
    leaves = {"peft_transfer", "peft_transfer.citation"}  # the package's lazy __init__ and the citation string
    assert loaded - leaves <= set(_modules("peft_transfer.distillation"))
    assert "peft_transfer.distillation.trainer" in loaded
