#!/usr/bin/env bash
# Creates ./.venv (once) and installs the package with its test extras into it.
# torch is pinned first to the CPU build that the machine provides, so nothing pulls a CUDA build on a CPU machine;
# where a torch is already importable by the venv's python (a GPU machine), it is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
