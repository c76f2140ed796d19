#!/usr/bin/env bash
# Everything the GPU machine is needed for, in one call (device time is scarce): build with
# CUDA for sm_90, backend report, the CUDA tests, a launch/sync probe, the GPU benchmark.
# Run from the repository root: `bash benchmarks/gpu_session.sh` ($OUT receives the logs).
# At most 8 files come back: the logs build, tests, probe, bench and two json/md pairs.
# Wheels of packages the device image lacks (snnTorch, SpikingJelly, loguru) go in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
# The image's default /opt/gcc miscompiles TORCH_CHECK messages in extensions: use Debian's.
export CC=/usr/bin/gcc CXX=/usr/bin/g++
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
t0=$(date +%s)
python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -m snntorch_sparse info | head -5
t0=$(date +%s)
# every test that runs on a GPU: the CUDA-only files and the [cuda] cases of the op suites
# (-v: a run stopped by the timeout still names each test's outcome in the log)
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -v -p no:cacheprovider -p no:benchmark \
  -n ${TEST_WORKERS:-16} --timeout 60 --tb=line -rfE \
  -k "${TEST_SELECT:-cuda}" ${TEST_FILES:-tests} > "$OUT/tests.log" 2>&1
echo "tests: rc $? in $(( $(date +%s) - t0 )) s"; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-200 | head -30
grep -cE " PASSED " "$OUT/tests.log"; tail -1 "$OUT/tests.log"
if [ -z "${NO_PROBE:-}" ]; then
  timeout ${PROBE_TIMEOUT:-70} python3 benchmarks/gpu_probe.py --config shd --batch 32 --batch 256 \
    > "$OUT/probe.log" 2>&1; echo "probe: rc $?"
fi
t0=$(date +%s)
timeout ${BENCH_TIMEOUT:-170} python3 -m snntorch_sparse bench --device cuda --no-plot \
  --config ${BENCH_CONFIGS:-paper,onb-4096,onb-8192} --out "$OUT/bench" ${BENCH_ARGS:-} >> "$OUT/bench.log" 2>&1
echo "bench: rc $? in $(( $(date +%s) - t0 )) s"
if [ -z "${NO_B32:-}" ]; then
  timeout ${B32_TIMEOUT:-60} python3 -m snntorch_sparse bench --device cuda --no-plot --config shd \
    --batch 32 --out "$OUT/bench32" >> "$OUT/bench.log" 2>&1; echo "bench32: rc $?"
fi
grep -E "^\|" "$OUT/bench/"*.md 2>/dev/null | head -40
grep -E "^===|fused_|sync x" "$OUT/probe.log" 2>/dev/null | head -30
