#!/usr/bin/env bash
# The demo: a real transfer, three-digit addition from SmolLM2-135M-Instruct to Gemma-3-270M (packaged real models,
# no download), the transfer-time stages on CPU (about 10 minutes with bf16; several times that in float32). Extra
# flags are passed on, e.g. `--output_dir runs/other`, `--report_to tensorboard`, `--evaluation_backend lm_eval`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/peft-transfer demo "$@"
