#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and torch installed: build invfast against that
# torch, run the CUDA tests, the sanitizer passes and the GPU benchmark, and
# leave everything under $OUT (default: outputs/gpu). Paste the summary into
# benchmarks/RESULTS.md with the date and the machine.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
arch=$($PY -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}")')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
status=0

step() {
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local start=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
  else
    echo "   FAILED ($((SECONDS - start)) s); tail of $name.log:" | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    status=1
  fi
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} | tee "$OUT/summary.txt"

step build $PY -m pip install --no-build-isolation --no-deps -e .
step info $PY -m invfast info
step tests $PY -m pytest -q -p no:logging tests -k cuda -x
tail -n 3 "$OUT/tests.log" >>"$OUT/summary.txt"
step bench $PY -m invfast bench --device cuda --min-time 0.3 --out "$OUT/bench"
cat "$OUT/bench.log" >>"$OUT/summary.txt"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      $PY -m pytest -q -p no:logging tests/test_affine_warp.py -k "cuda and not opcheck and not gradcheck" -x
  done
else
  echo "compute-sanitizer not found; sanitizer passes skipped" | tee -a "$OUT/summary.txt"
fi
exit $status
