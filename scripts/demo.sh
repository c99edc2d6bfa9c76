#!/usr/bin/env bash
# The demo: a whole transfer of the built-in task between two tiny local model families (built and pretrained
# here, no download), on CPU in a few minutes. Extra flags are passed on, e.g. `--output_dir runs/other`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/peft-transfer demo "$@"
