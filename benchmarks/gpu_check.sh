#!/usr/bin/env bash
# The GPU checks of issues 12, 17 and 19 in one run of < 7 minutes (one H200: ~4 min before the
# CNN and central-flow stages were added; those two are unmeasured on a GPU so far).
#
# From the repository root of a session that has a device (see benchmarks/README.md):
#   1. here, once:  bash benchmarks/gpu_wheels.sh     (wheels the device image lacks → .whl/)
#   2. device run:  command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
# Results land in $OUT: pytest-cuda.txt, gpu-check.json (numbers), gpu-check.log, nvidia-smi.txt.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, pydantic, h5netcdf, implicit_bias; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  || { echo "missing packages: run benchmarks/gpu_wheels.sh here and carry .whl"; exit 1; }

# 1. pytest -m cuda: GPU == CPU, and no host sync in the step loop (set_sync_debug_mode("error"))
timeout 100 "$PY" -m pytest -q -p no:cacheprovider -m cuda -n 0 \
  tests/test_cuda.py tests/test_sync.py 2>&1 | tee "$OUT/pytest-cuda.txt"

# 2. syncs counted by the profiler, the phase diagram (highest, high), the reference vs the loop,
#    the CNN sweep vs its loop (goal ≥ 20×), GD + central flow vs GD (goal ≤ 10×); each stage is
#    saved as it ends, so a run cut short keeps what it measured
timeout 330 "$PY" benchmarks/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu-check.log"
echo "done: $OUT/gpu-check.json"
