#!/usr/bin/env bash
# The README's ahead-of-time install with a CUDA build of torch on a machine with nvcc but
# no GPU (a login node, this CI box): `pip install --no-build-isolation .` must compile the
# C++ and every CUDA kernel for the default architectures, and `info` must say so.
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
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
nvcc --version | tail -n 2

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" numpy
fi
"$VENV/bin/python" -c "import torch; assert torch.version.cuda, 'torch is not a CUDA build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# torch's CUDA headers include cuBLAS/cuSPARSE headers, which ship in torch's nvidia wheels.
export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
unset SNNTORCH_SPARSE_NO_CUDA TORCH_CUDA_ARCH_LIST  # the defaults are what is checked

# Build from a copy so that the build folder and egg-info never land in the repo.
mkdir -p "$WORK/src"
cp -r "$REPO/setup.py" "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/csrc" "$WORK/src/"
mkdir "$WORK/src/snntorch_sparse" && cp "$REPO"/snntorch_sparse/*.py "$WORK/src/snntorch_sparse/"
if ! (cd "$WORK/src" && "$VENV/bin/pip" install -v --no-build-isolation . >"$WORK/build.log" 2>&1); then
  tail -n 200 "$WORK/build.log"
  echo "cuda_build_check: FAILED to build (log above)" >&2
  exit 1
fi
# nvcc and the host compiler print warnings without failing: show them.
grep -iE "warning" "$WORK/build.log" | grep -v -i "setuptools\|project.license\|pip\|deprecat" || true
n_cu=$(ls "$REPO"/csrc/cuda/*.cu | wc -l)
n_obj=$(grep -cE "nvcc.*csrc/cuda/[a-z_]+\.cu" "$WORK/build.log" || true)
(cd "$WORK" && "$VENV/bin/python" -m snntorch_sparse info | tee "$WORK/info.txt")
grep -q "^CPU: compiled (AOT)" "$WORK/info.txt" || { echo "cuda_build_check: CPU kernels not built" >&2; exit 1; }
archs=$("$VENV/bin/python" -c "import runpy; print(runpy.run_path('$REPO/snntorch_sparse/_build.py')['DEFAULT_CUDA_ARCHS'])")
grep -qF "CUDA: compiled (AOT) for CUDA architectures $archs" "$WORK/info.txt" \
  || { echo "cuda_build_check: CUDA kernels not built for the default architectures" >&2; exit 1; }
echo "cuda_build_check: OK, $n_cu CUDA sources ($n_obj nvcc commands seen) in $((SECONDS - start)) s"
