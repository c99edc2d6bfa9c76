#!/usr/bin/env bash
# The test suite, on CPU. Extra arguments go to pytest, e.g. `-m "not slow"` (the fast lane) or `-k hub`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# With the vLLM environment (`generation_backend: vllm`), whose tests then must run rather than skip.
bash "$root/scripts/setup.sh" --vllm
export PEFT_TRANSFER_REQUIRE_VLLM="${PEFT_TRANSFER_REQUIRE_VLLM:-1}"
# The report test opens report.html in headless Chromium: Debian's package, installed where this runs as root.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "warning: could not install chromium; the report test will be skipped" >&2
fi
cd "$root"
exec .venv/bin/python -m pytest -q "$@"
