// Host-side argument checks and device helpers shared by the CUDA kernels in this folder.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common.h"

namespace snntorch_sparse {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items; the cap keeps the grid legal for any n.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

// Threads for a block whose threads stride over n items: a whole number of warps, at most kThreads.
inline int threads_for(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + 31) / 32 * 32, 32, kThreads));
}

// Grid of one block per item (input neuron or row): at most 2^31 - 1 blocks.
inline unsigned block_per_item(int64_t n, const char* op, const char* what) {
  TORCH_CHECK(n <= INT32_MAX, op, ": at most 2^31 - 1 ", what, " are supported, got ", n);
  return static_cast<unsigned>(n);
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// ---------------------------------------------------------------- argument checks
// Every message names the op and the argument, and says what was expected.

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": `", name, "` must be a CUDA tensor, got one on ", t.device());
}

// `t` must live where `first` (the op's first tensor argument) lives.
inline void check_same_device(const at::Tensor& t, const at::Tensor& first, const char* op,
                              const char* name) {
  TORCH_CHECK(t.device() == first.device(), op, ": `", name, "` must be on ", first.device(),
              " like the other tensor arguments, got ", t.device());
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op,
              ": `", name, "` must be float16, bfloat16, float32 or float64, got ", s);
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& like, const char* op,
                             const char* name, const char* like_name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` must have the dtype of `",
              like_name, "` (", like.scalar_type(), "), got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": `", name, "` must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_numel(const at::Tensor& t, int64_t n, const char* op, const char* name,
                        const char* what) {
  TORCH_CHECK(t.numel() == n, op, ": `", name, "` must have ", n, " elements (", what, "), got ",
              t.numel());
}

inline void check_bits(const at::Tensor& t, const at::Tensor& first, const char* op,
                       const char* name) {
  check_same_device(t, first, op, name);
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": `", name, "` must be int32 packed bits, got ",
              t.scalar_type());
  check_dim(t, 1, op, name);
}

// CSR/CSC arrays: pointers are int64, indices int32 (as the CPU kernels and the Python
// layers use them).
inline at::Tensor index_arg(const at::Tensor& t, at::ScalarType dtype, const at::Tensor& first,
                            const char* op, const char* name) {
  check_same_device(t, first, op, name);
  TORCH_CHECK(t.scalar_type() == dtype, op, ": `", name, "` must be ", dtype, ", got ",
              t.scalar_type());
  check_dim(t, 1, op, name);
  return t.contiguous();
}

// The CSC input of dw_spikes/dw_trace/conv_dw_spikes, checked (indices are not range-checked:
// the kernels skip those out of range).
struct Csc {
  at::Tensor colptr, rows, xvals;
  int64_t n_in, nnz;
};

inline Csc csc_arg(const at::Tensor& colptr_in, const at::Tensor& rows_in,
                   const at::Tensor& xvals_in, const at::Tensor& first, const char* op,
                   const char* dtype_name) {
  Csc c;
  c.colptr = index_arg(colptr_in, at::kLong, first, op, "colptr");
  c.rows = index_arg(rows_in, at::kInt, first, op, "rows");
  TORCH_CHECK(c.colptr.numel() >= 1, op, ": `colptr` must have n_in + 1 elements, got 0");
  c.n_in = c.colptr.numel() - 1;
  c.nnz = c.rows.numel();
  check_same_device(xvals_in, first, op, "xvals");
  check_same_dtype(xvals_in, first, op, "xvals", dtype_name);
  check_dim(xvals_in, 1, op, "xvals");
  TORCH_CHECK(xvals_in.numel() == 0 || xvals_in.numel() == c.nnz, op,
              ": `xvals` must be empty (all ones) or have one value per entry of `rows` (", c.nnz,
              "), got ", xvals_in.numel());
  c.xvals = xvals_in.contiguous();
  return c;
}

inline void check_shape_id(int64_t shape, const char* op) {
  TORCH_CHECK(shape >= FAST_SIGMOID && shape <= STRAIGHT_THROUGH, op,
              ": `shape` must be a surrogate id 0..4 (reference.SHAPES), got ", shape);
}

inline void check_reset_id(int64_t reset, const char* op) {
  TORCH_CHECK(reset >= SUBTRACT && reset <= NONE, op,
              ": `reset` must be 0 (subtract), 1 (zero) or 2 (none), got ", reset);
}

// ---------------------------------------------------------------- device helpers

// A product that nvcc never fuses with a following add into an FMA, so that float64
// results match the CPU kernels (and reference.py) bit for bit.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Clamp a CSR/CSC range [ptr[i], ptr[i+1]) into [0, n]: malformed pointers cannot make a
// kernel read out of bounds (checking them on the host would need a device sync).
__device__ __forceinline__ void clamp_range(const int64_t* ptr, int64_t i, int64_t n,
                                            int64_t& lo, int64_t& hi) {
  lo = ptr[i] < 0 ? 0 : (ptr[i] > n ? n : ptr[i]);
  hi = ptr[i + 1] < lo ? lo : (ptr[i + 1] > n ? n : ptr[i + 1]);
}

}  // namespace cuda
}  // namespace snntorch_sparse
