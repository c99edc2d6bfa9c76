#!/usr/bin/env bash
# The Python wheels the lent GPU machine lacks (its image has torch, transformers, peft, accelerate, pandas, pyarrow;
# nothing can be fetched there), downloaded here into .whl/ for `benchmarks/device.sh`. The versions are the ones
# this project's CPU environment runs. DeepSpeed ships no wheel on PyPI, so the ZeRO-3 step is skipped there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
mkdir -p .whl
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for name in trl datasets dill multiprocess; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$name==$(version "$name")"
done
ls -l .whl
