#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most 9 minutes (each part has a limit), for a
# session lent one:
#
#   benchmarks/device_check.sh [OUT]          logs in OUT (default: device-check/)
#
# 1. tests/test_device.py on CUDA: the authors' results in float32 (the parity fixture; give its
#    path in SDFLOW_PARITY_FIXTURE where ../shared is not beside the checkout), the sampling form
#    against the modules and the CPU, bf16 / fp16, tiling, the command line, training with autocast
#    and an exact-enough resume;
# 2. bench_inference.py on CUDA: speed (authors / modules / library fp32 / bf16 / fp16, side by side),
#    several samples, peak memory, the bf16 / fp16 quality cost with the trained bundled model;
# 3. bench_train.py on CUDA: seconds per step and peak memory, tiny and paper configs.
#
# Runs from the source tree with the python that has CUDA's torch ($PYTHON, default python3) and
# the runtime packages (numpy, Pillow, safetensors, PyYAML, tqdm, pytest): no install. Each part
# has its own time limit so that one slow part leaves the others their turn. Exit status: 1 when
# a part failed or ran out of time, else 0. Record the figures in docs/performance.md.
# A dry run of the script itself without a GPU: SDFLOW_TEST_DEVICE=cpu QUICK=1 (small sizes).
# On a lent machine that gets only the checkout (not ../shared), copy the fixture into an ignored
# folder that travels (62 MiB with the tree: it fits a 64 MiB limit), e.g.
#   mkdir -p .fixture && cp ../shared/fixtures/official_parity.pt .fixture/ && echo /.fixture/ >> .git/info/exclude
#   SDFLOW_PARITY_FIXTURE=.fixture/official_parity.pt benchmarks/device_check.sh "$OUT"
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-device-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$REPO"

DEV=${SDFLOW_TEST_DEVICE:-cuda}
SR_SIZES="128 256 512" DS_SIZES="512 1024 2048" STEPS=20 CONFIGS="tiny paper"
if [ "${QUICK:-0}" = 1 ]; then SR_SIZES="16" DS_SIZES="64" STEPS=2 CONFIGS="tiny"; fi

status=0
part() {  # part NAME SECONDS COMMAND...: run, log to OUT/NAME.txt, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
    [ "$rc" = 0 ] || status=1
}

part device 30 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"NO CUDA DEVICE\")'"
part tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_device.py
# shellcheck disable=SC2086  # the size lists are meant to split
part speed 150 "$PY" benchmarks/bench_inference.py --devices "$DEV" --parts speed samples \
    --sr-sizes $SR_SIZES --ds-sizes $DS_SIZES --repeats 5
# Peak memory at the largest sizes only: every (path, task, size) is a fresh process.
part memory 90 "$PY" benchmarks/bench_inference.py --devices "$DEV" --parts memory \
    --sr-sizes "${SR_SIZES##* }" --ds-sizes "${DS_SIZES##* }"
part quality 60 "$PY" benchmarks/bench_inference.py --devices "$DEV" --parts quality --model default
# shellcheck disable=SC2086
part train 100 "$PY" benchmarks/bench_train.py --devices "$DEV" --configs $CONFIGS --steps "$STEPS"
exit $status
