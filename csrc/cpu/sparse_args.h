// Shared by the CPU kernels of the sparse gradients (linear.cpp, conv.cpp, pack.cpp) and
// the spike op (band.cpp): checks of the compact input formats (every error names the op
// and the argument) and the vector-width clones of their per-thread workers.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "cpu/checks.h"
#include "sizes.h"

// The weight/input gradients are arithmetic-bound once their data sits in cache, so
// their per-thread workers are compiled for several vector widths and the best one for
// the running CPU is picked at load time (GCC function multiversioning). Their results
// are compared with a tolerance anyway (sums run in a different order than a GEMM).
// The workers must not throw: with GCC 12.2 an exception unwinding out of a clone
// corrupted the caller's frame (a crash). Inputs are checked, and buffers allocated, before the call.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SNN_VECTOR_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define SNN_VECTOR_CLONES
#endif
// For a helper of several workers: inlined into each clone, so compiled for its width.
#if defined(__GNUC__)
#define SNN_CLONE_INLINE __attribute__((always_inline)) inline
#else
#define SNN_CLONE_INLINE inline
#endif

namespace snntorch_sparse {

inline void check_index(const at::Tensor& t, at::ScalarType dtype, const char* op,
                        const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": `", name, "` must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": `", name, "` must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, op, ": `", name, "` must be 1-D, got shape ", t.sizes());
}

// A compressed sparse structure (CSC by input column or CSR by row): `ptr` int64
// [n_major + 1] running from 0 to nnz without decreasing, `idx` int32 [nnz] in [0, n_minor).
// Checked before any kernel indexes memory with it.
inline void check_compressed(const at::Tensor& ptr, const at::Tensor& idx, int64_t n_major,
                             int64_t n_minor, const char* op, const char* ptr_name, const char* idx_name) {
  check_index(ptr, at::kLong, op, ptr_name);
  check_index(idx, at::kInt, op, idx_name);
  const int64_t n_ptr = checked_add(n_major, 1, op, "pointer count");
  TORCH_CHECK(ptr.numel() == n_ptr, op, ": `", ptr_name, "` must have ", n_ptr,
              " entries, got ", ptr.numel());
  const at::Tensor p = ptr.contiguous();
  const int64_t* pp = p.const_data_ptr<int64_t>();
  TORCH_CHECK(pp[0] == 0 && pp[n_major] == idx.numel(), op, ": `", ptr_name, "` must run from 0 to len(",
              idx_name, ") = ", idx.numel(), ", got ", pp[0], " .. ", pp[n_major]);
  for (int64_t k = 0; k < n_major; ++k)
    TORCH_CHECK(pp[k] <= pp[k + 1], op, ": `", ptr_name, "` must not decrease (entry ", k + 1, ")");
  if (idx.numel()) {  // one serial pass: no parallel region (their start-up dominates here)
    const at::Tensor ic = idx.contiguous();
    const int32_t* ip = ic.const_data_ptr<int32_t>();
    int32_t lo = ip[0], hi = ip[0];
    for (int64_t k = 1; k < ic.numel(); ++k) {
      lo = std::min(lo, ip[k]);
      hi = std::max(hi, ip[k]);
    }
    TORCH_CHECK(lo >= 0 && hi < n_minor, op, ": `", idx_name, "` must lie in [0, ", n_minor,
                "), got values in [", lo, ", ", hi, "]");
  }
}

// Rows ascending within each column of a checked CSC (kernels that walk a column in time).
inline void check_rows_ascend(const int64_t* colptr, const int32_t* rows, int64_t n_in, const char* op) {
  for (int64_t i = 0; i < n_in; ++i)
    for (int64_t k = colptr[i] + 1; k < colptr[i + 1]; ++k)
      TORCH_CHECK(rows[k - 1] < rows[k], op, ": `rows` must ascend within each column (column ", i,
                  ", entry ", k, ")");
}

// `xvals`: empty (binary input, every value 1) or one value per input nonzero.
inline void check_xvals(const at::Tensor& xvals, const at::Tensor& like, int64_t nnz,
                        const char* op, const char* like_name) {
  check_float(xvals, op, "xvals");
  TORCH_CHECK(xvals.scalar_type() == like.scalar_type(), op, ": `xvals` must have the dtype of `",
              like_name, "` (", like.scalar_type(), "), got ", xvals.scalar_type());
  TORCH_CHECK(xvals.numel() == 0 || (xvals.dim() == 1 && xvals.numel() == nnz), op,
              ": `xvals` must be empty (binary input) or have one value per entry of `rows` (", nnz,
              "), got shape ", xvals.sizes());
}

}  // namespace snntorch_sparse
