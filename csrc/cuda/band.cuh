// The compact band on CUDA (format: reference.py's module docstring): the pieces that
// `band_grad` (band.cu) and `lif_bwd_band` (lif.cu) share — argument checks and the rank
// of each in-band element in `vals`, all on the device (no host sync).
#pragma once

#include "cuda_utils.cuh"

namespace snntorch_sparse {
namespace cuda {
namespace {

// Offset in vals of in-band element k: the exclusive scan of the word popcounts (taken from
// the inclusive scan `incl`) plus the set bits below k in its word.
__device__ __forceinline__ int64_t band_rank(uint32_t word, const int64_t* incl, int64_t k) {
  const uint32_t below = (1u << (k & 31)) - 1u;
  return incl[k >> 5] - __popc(word) + __popc(word & below);
}

// Whether element k is in the band, and its position in vals (k itself in dense mode,
// bits == nullptr).
__device__ __forceinline__ bool band_position(const int32_t* bits, const int64_t* incl, int64_t k,
                                              int64_t& pos) {
  pos = k;
  if (bits == nullptr) return true;
  const uint32_t word = static_cast<uint32_t>(bits[k >> 5]);
  if (!((word >> (k & 31)) & 1u)) return false;
  pos = band_rank(word, incl, k);
  return true;
}

__global__ void popcount_kernel(const int32_t* __restrict__ bits, int32_t* __restrict__ counts,
                                int64_t nwords) {
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < nwords;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    counts[w] = __popc(static_cast<uint32_t>(bits[w]));
  }
}

// Inclusive scan of the popcounts (int64, on the device; no host sync).
inline at::Tensor scan_counts(const at::Tensor& counts) { return at::cumsum(counts, 0, at::kLong); }

// The inclusive popcount scan of a band's bits, the input of band_rank.
inline at::Tensor band_ranks(const at::Tensor& bits) {
  const int64_t nwords = bits.numel();
  at::Tensor counts = at::empty({nwords}, bits.options());
  if (nwords > 0) {
    popcount_kernel<<<grid_for(nwords), kThreads, 0, stream()>>>(bits.data_ptr<int32_t>(),
                                                                 counts.data_ptr<int32_t>(), nwords);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return scan_counts(counts);
}

// The band (bits, vals) of `grad`'s n elements: dense mode when bits is empty (one u per
// element), else one word per 32 elements (vals' length needs the band size, which the host
// cannot check without a sync; kernels never read past vals' end).
inline void check_band(const at::Tensor& grad, const at::Tensor& bits, const at::Tensor& vals,
                       int64_t shape, const char* op, const char* grad_name) {
  check_cuda(grad, op, grad_name);
  check_floating(grad, op, grad_name);
  check_bits(bits, grad, op, "bits");
  check_same_device(vals, grad, op, "vals");
  check_same_dtype(vals, grad, op, "vals", grad_name);
  check_dim(vals, 1, op, "vals");
  check_shape_id(shape, op);
  if (bits.numel() == 0) {
    check_numel(vals, grad.numel(), op, "vals", "dense mode: one u per element of the gradient");
  } else {
    check_numel(bits, (grad.numel() + 31) / 32, op, "bits",
                "one int32 word per 32 elements of the gradient");
  }
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse
