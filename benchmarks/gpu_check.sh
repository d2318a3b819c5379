#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU (about 5 minutes on an H200):
#   1. the GPU tests (pytest -m gpu),
#   2. CPU vs GPU agreement on the same batches and the throughput table of every algorithm
#      (benchmarks/gpu_check.py; eager, torch.compile and CUDA graphs),
#   3. Enhanced-State RL trained end to end on the GPU through the CLI, timed.
# Uses .venv if there is one, else the machine's python3 with src/ on the path (a GPU image that has
# torch, numpy, pyarrow, typer and rich). Results go to $OUT (or runs/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-runs/gpu_check}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. GPU tests"
$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_device_path.py 2>&1 | tail -5 | tee "$OUT_DIR/pytest_gpu.txt"

echo "== 2. agreement and throughput"
$PY benchmarks/gpu_check.py --devices cpu,cuda --json "$OUT_DIR/gpu_check.json" 2>&1 | tee "$OUT_DIR/gpu_check.txt"
status=${PIPESTATUS[0]}

echo "== 3. rlmtf train --algo esrl --device cuda, end to end"
tmp=$(mktemp -d)
$PY -m rlmtf simulate --policy baseline --explore uniform --per item --sessions 3000 --seed 1 --out "$tmp/explore" --workers 8
/usr/bin/time -v $PY -m rlmtf train --algo esrl --data "$tmp/explore" --out "$tmp/run" --steps 3000 --device cuda \
    --eval-every 1000 --json 2>&1 | grep -E '"steps"|val_weighted|Elapsed|Maximum resident' | tee "$OUT_DIR/train_cuda.txt"
tail -1 "$tmp/run/metrics.jsonl" >> "$OUT_DIR/train_cuda.txt"
exit $status
