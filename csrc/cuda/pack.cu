// CUDA kernel of the op `nonzero_csc`; the math is reference.nonzero_csc (the nonzeros of a
// row-major x [R, n_in] in column-major order, as dw_spikes / dw_trace read them).
//
// The work item is (column c, chunk k of kChunkRows rows). Adjacent threads take adjacent
// columns of the same rows, so every load of x is coalesced. Item (c, k) counts its
// nonzeros into counts[c * chunks + k]: in that order an exclusive scan of the counts is
// each item's first slot in `rows`, so the rows of a column come out ascending, no sort.
#include <torch/library.h>

#include <tuple>

#include "cuda_utils.cuh"

namespace snntorch_sparse {
namespace cuda {
namespace {

// Rows per work item: long enough to amortise a thread, short enough that even a small
// n_in gives tens of thousands of threads.
constexpr int64_t kChunkRows = 64;

// Pass 1: counts[c * chunks + k] = nonzeros of column c in chunk k; *not_binary = 1 if any
// nonzero differs from 1.
template <typename scalar_t>
__global__ void count_kernel(const scalar_t* __restrict__ x, int32_t* __restrict__ counts,
                             int64_t* __restrict__ not_binary, int64_t R, int64_t n_in,
                             int64_t chunks) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t items = n_in * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // The loop bound is rounded up to whole strides so that every thread of a block runs the
  // same number of iterations, as __syncthreads_or requires.
  const int64_t bound = (items + stride - 1) / stride * stride;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < bound;
       t += stride) {
    bool other = false;
    if (t < items) {
      const int64_t c = t % n_in, k = t / n_in;
      const int64_t r1 = min(R, (k + 1) * kChunkRows);
      int32_t cnt = 0;
      for (int64_t r = k * kChunkRows; r < r1; ++r) {
        const opmath_t v = static_cast<opmath_t>(x[r * n_in + c]);
        cnt += v != opmath_t(0);
        other |= (v != opmath_t(0)) & (v != opmath_t(1));
      }
      counts[c * chunks + k] = cnt;
    }
    // One store per block at most; racing stores all write 1.
    if (__syncthreads_or(other) && threadIdx.x == 0) *not_binary = 1;
  }
}

// Pass 2: item (c, k) writes its nonzeros from slot incl - count (the exclusive scan);
// chunk 0 of each column also writes colptr[c], and the last item colptr[n_in] = nnz.
// vals == nullptr: spikes, no values.
template <typename scalar_t>
__global__ void fill_kernel(const scalar_t* __restrict__ x, const int32_t* __restrict__ counts,
                            const int64_t* __restrict__ incl, int64_t* __restrict__ colptr,
                            int32_t* __restrict__ rows, scalar_t* __restrict__ vals, int64_t R,
                            int64_t n_in, int64_t chunks) {
  const int64_t items = n_in * chunks;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < items;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = t % n_in, k = t / n_in;
    const int64_t slot = c * chunks + k;
    int64_t o = incl[slot] - counts[slot];
    if (k == 0) colptr[c] = o;
    if (slot == items - 1) colptr[n_in] = incl[slot];
    const int64_t r1 = min(R, (k + 1) * kChunkRows);
    for (int64_t r = k * kChunkRows; r < r1; ++r) {
      const scalar_t v = x[r * n_in + c];
      if (static_cast<at::opmath_type<scalar_t>>(v) == 0) continue;
      if (vals != nullptr) vals[o] = v;
      rows[o++] = static_cast<int32_t>(r);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nonzero_csc_cuda(const at::Tensor& x_in,
                                                                double max_density) {
  constexpr const char* op = "nonzero_csc";
  check_cuda(x_in, op, "x");
  check_floating(x_in, op, "x");
  check_dim(x_in, 2, op, "x");
  TORCH_CHECK(x_in.size(0) <= INT32_MAX, op, ": `x` may have at most 2^31 - 1 rows (int32 row "
              "indices), got ", x_in.size(0));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), n_in = x.size(1);
  const auto long_opts = x.options().dtype(at::kLong);
  at::Tensor rows_empty = at::empty({0}, x.options().dtype(at::kInt));
  // No elements: never too dense (0 > max_density * 0 is false for every density).
  if (R * n_in == 0) return {at::zeros({n_in + 1}, long_opts), rows_empty, at::empty({0}, x.options())};
  const int64_t chunks = (R + kChunkRows - 1) / kChunkRows;
  const int64_t items = n_in * chunks;
  at::Tensor counts = at::empty({items}, x.options().dtype(at::kInt));
  at::Tensor not_binary = at::zeros({1}, long_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    count_kernel<scalar_t><<<grid_for(items), kThreads, 0, stream()>>>(
        x.data_ptr<scalar_t>(), counts.data_ptr<int32_t>(), not_binary.data_ptr<int64_t>(), R,
        n_in, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor incl = at::cumsum(counts, 0, at::kLong);
  // The op's only host sync: nnz decides "too dense" and sizes rows/xvals, and the flag
  // decides whether xvals is stored; an output's size must be known on the host.
  const at::Tensor info = at::cat({incl.narrow(0, items - 1, 1), not_binary}).cpu();
  const int64_t nnz = info.const_data_ptr<int64_t>()[0];
  const bool with_vals = info.const_data_ptr<int64_t>()[1] != 0;
  if (static_cast<double>(nnz) > max_density * static_cast<double>(R * n_in)) {
    return {at::empty({0}, long_opts), rows_empty, at::empty({0}, x.options())};
  }
  at::Tensor colptr = at::empty({n_in + 1}, long_opts);
  at::Tensor rows = at::empty({nnz}, x.options().dtype(at::kInt));
  at::Tensor xvals = at::empty({with_vals ? nnz : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    fill_kernel<scalar_t><<<grid_for(items), kThreads, 0, stream()>>>(
        x.data_ptr<scalar_t>(), counts.data_ptr<int32_t>(), incl.data_ptr<int64_t>(),
        colptr.data_ptr<int64_t>(), rows.data_ptr<int32_t>(),
        with_vals ? xvals.data_ptr<scalar_t>() : nullptr, R, n_in, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {colptr, rows, xvals};
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse

TORCH_LIBRARY_IMPL(snntorch_sparse, CUDA, m) {
  m.impl("nonzero_csc", &snntorch_sparse::cuda::nonzero_csc_cuda);
}
