#!/usr/bin/env bash
# Everything the GPU machine is needed for, in one call (device time is scarce):
# build with CUDA for sm_90, backend report, CUDA tests, GPU benchmark, demo on CUDA.
# Run from the repository root: `bash benchmarks/gpu_session.sh` ($OUT receives logs).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
# The image's default /opt/gcc miscompiles TORCH_CHECK messages in extensions: use Debian's.
export CC=/usr/bin/gcc CXX=/usr/bin/g++
if ls .whl/*.whl >/dev/null 2>&1; then  # snnTorch is not in the device image
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -m snntorch_sparse info | tee "$OUT/info.txt"
timeout ${TEST_TIMEOUT:-90} python3 -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py tests/test_cuda_layers.py 2>&1 | tee "$OUT/tests_ops.log" | tail -8
timeout ${TEST_TIMEOUT:-90} python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_pack.py tests/test_fused.py tests/test_spiking_linear.py 2>&1 | tee "$OUT/tests_layers.log" | tail -8
timeout ${BENCH_TIMEOUT:-200} python3 -m snntorch_sparse bench --device cuda --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -40
if [ -n "${DEMO:-}" ]; then
  timeout 120 python3 -m snntorch_sparse demo --device cuda --out "$OUT/demo" 2>&1 | tail -15
fi
