#!/usr/bin/env bash
# The test suite, on CPU. Extra arguments go to pytest, e.g. `-m "not slow"` or `-k hub`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m pytest -q "$@"
