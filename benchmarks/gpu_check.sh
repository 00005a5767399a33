#!/usr/bin/env bash
# The GPU check on a fresh machine with one H100/H200 (16 cores): install, then measure in one
# run of at most 8 minutes; JSON to $OUT/gpu_check.json (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: small slide, short rows, CPU without a GPU
#
# The machine has PyTorch but no registry: the project's other dependencies travel as wheels in
# .whl/ (made here with benchmarks/gpu_wheels.sh), and CMU-1-Small-Region.svs (the tissue the
# Camelyon-sized slide is made from) in .gpu-data/ when /work/shared/data is not there.
# Extra arguments go to gpu_check.py (e.g. --before /path/to/82efa83-tree).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out/gpu-check}"
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the project from its own files, no build step
export PYTHONUNBUFFERED=1
if [ -f .gpu-data/CMU-1-Small-Region.svs ]; then export WSISCAN_BENCH_SOURCE=.gpu-data/CMU-1-Small-Region.svs; fi
PY="${PYTHON:-python3}"
"$PY" -c "import torch, wsiscan; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'wsiscan', wsiscan.__file__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
exec timeout 480 "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
