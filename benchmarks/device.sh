#!/usr/bin/env bash
# Every GPU figure still missing, in one command of about 8 minutes on one H200; everything lands under $OUT.
#
#   bash scripts/device_wheels.sh                  # here, once: the wheels the GPU machine lacks, into .whl/
#   bash benchmarks/device.sh                      # there (the device tool carries .whl; $OUT is set there)
#   DRY_RUN=1 OUT=/tmp/dev bash benchmarks/device.sh   # the CPU dry run on tiny shapes, as the tests run it
#
# Steps, each under its own time limit, each logged to $OUT/device.log (one file: the device tool brings back at
# most 8):
#   speed             benchmarks/speed.py on random-weight 7B Llama models: the paper-style loop against the pipeline
#   kd_memory         token-level KD with a 256k vocabulary: full logits against the chunked loss
#   stage_throughput  every stage at 7B shapes, with the compiled static-cache generation
#   zero3             the training stage under DeepSpeed ZeRO-3 in one process (skipped when deepspeed is missing)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheels did not install" | tee -a "$OUT/device.log"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

if [ "${DRY_RUN:-0}" = 1 ]; then
    PRESET=tiny LIMIT=300
    SPEED_ARGS="--candidates 8 --samples 4 --epochs 1"
    KD_ARGS="--vocab 2048 --seq 64 --batch 2 --hidden 64 --dtype fp32 --steps 2"
else
    PRESET=7b LIMIT=240
    SPEED_ARGS="--candidates 64 --samples 64 --epochs 1"
    KD_ARGS="--vocab 256000 --seq 512 --batch 8 --hidden 4096 --dtype bf16"
fi

status=0
step() {  # step NAME LIMIT_S COMMAND...: run it, log it, remember a failure and go on
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*" >>"$OUT/device.log"
    timeout "$limit" "$@" >>"$OUT/device.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$OUT/device.log"
    [ "$rc" = 0 ] || status=1
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >>"$OUT/device.log" 2>&1
step speed "$LIMIT" "$PY" benchmarks/speed.py --world random --preset "$PRESET" $SPEED_ARGS --out "$OUT/speed"
step kd_memory 120 "$PY" benchmarks/kd_memory.py $KD_ARGS --out "$OUT/kd_memory.json"
step stage_throughput "$LIMIT" "$PY" benchmarks/stage_throughput.py --preset "$PRESET" --static-cache \
    --out "$OUT/stage_throughput.json"
if "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    step zero3 180 "$PY" -m accelerate.commands.launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 \
        benchmarks/stage_throughput.py --preset "$PRESET" --deepspeed zero3 --stages train \
        --out "$OUT/stage_throughput_zero3.json"
else
    echo "== zero3: skipped (deepspeed is not installed)" | tee -a "$OUT/device.log"
fi
exit $status
