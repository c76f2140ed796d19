#!/usr/bin/env bash
# Compile check of the CUDA kernels without a GPU: builds the whole extension (csrc/ops.cpp,
# csrc/cpu/*.cpp, csrc/cuda/*.cu) with nvcc against a CUDA build of torch, in a throwaway
# venv and build directory. Fails if anything does not compile; leaves nothing in the repo.
#
#   bash .ci/cuda_build_check.sh [VENV_DIR]
#
# VENV_DIR: where to create the venv (reused if it already holds torch $TORCH_VERSION);
# default: a temporary directory removed at exit. Needs nvcc (CUDA 13, like torch's wheels).
set -euo pipefail

TORCH_VERSION=2.14.1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VENV=${1:-$WORK/venv}
start=$SECONDS

# The toolkit: $CUDA_HOME if set, else the one that holds the nvcc on PATH (which may be a
# wrapper script in /usr/local/bin, hence the fallback to /usr/local/cuda).
if [[ -z "${CUDA_HOME:-}" ]]; then
  nvcc_path=$(command -v nvcc) || { echo "cuda_build_check: nvcc not found (set CUDA_HOME)" >&2; exit 1; }
  for cand in "$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")" /usr/local/cuda; do
    if [[ -x "$cand/bin/nvcc" && -f "$cand/include/cuda_runtime.h" ]]; then CUDA_HOME=$cand; break; fi
  done
fi
[[ -x "${CUDA_HOME:-}/bin/nvcc" ]] || { echo "cuda_build_check: no CUDA toolkit found (set CUDA_HOME)" >&2; exit 1; }
export CUDA_HOME
"$CUDA_HOME/bin/nvcc" --version | tail -n 2

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" numpy
fi
"$VENV/bin/python" -c "import torch; assert torch.version.cuda, 'torch is not a CUDA build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# torch's CUDA headers include cuBLAS/cuSPARSE headers, which ship in torch's nvidia wheels.
export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
export TORCH_CUDA_ARCH_LIST="8.0;9.0"  # A100, H100/H200 (the second arch adds ~5% to the build)
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
unset SNNTORCH_SPARSE_NO_CUDA

# Build from a copy so that setup.py's egg-info and friends never land in the repo.
mkdir -p "$WORK/src"
cp -r "$REPO/setup.py" "$REPO/pyproject.toml" "$REPO/csrc" "$REPO/snntorch_sparse" "$WORK/src/"
[[ -f "$REPO/README.md" ]] && cp "$REPO/README.md" "$WORK/src/"
cd "$WORK/src"
if ! "$VENV/bin/python" setup.py build_ext --build-lib "$WORK/lib" --build-temp "$WORK/tmp" \
    >"$WORK/build.log" 2>&1; then
  cat "$WORK/build.log"
  echo "cuda_build_check: FAILED to compile (log above)" >&2
  exit 1
fi
# nvcc and the host compiler print warnings without failing: show them.
grep -iE "warning" "$WORK/build.log" | grep -v -i "setuptools\|project.license" || true

n_cu=$(ls csrc/cuda/*.cu | wc -l)
n_obj=$(find "$WORK/tmp" -path '*/csrc/cuda/*.o' | wc -l)
[[ "$n_obj" -eq "$n_cu" ]] || { echo "cuda_build_check: $n_obj of $n_cu .cu files compiled" >&2; exit 1; }
[[ -n "$(find "$WORK/lib" -name '_C*.so')" ]] || { echo "cuda_build_check: no library built" >&2; exit 1; }
echo "cuda_build_check: OK, $n_cu CUDA sources compiled for sm_80 and sm_90 in $((SECONDS - start)) s"
