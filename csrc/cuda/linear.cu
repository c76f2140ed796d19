// CUDA kernels of the fully connected layer's sparse gradients, `dw_spikes`, `dw_trace`
// (and `dw_trace_dense`) and `dx_masked`, and of its event-driven forward,
// `linear_fwd_events` (math: the functions of the same names in snntorch_sparse/reference.py).
// Rows of delta/eps are r = t*B + b; sparse inputs are CSC over [R, n_in] (by input neuron),
// the active set of dw_trace is CSR over [R, n_out]. Indices outside their range are skipped
// rather than checked on the host, which would need a device sync.
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "cuda_utils.cuh"
#include "sizes.h"

namespace snntorch_sparse {
namespace cuda {
namespace {

// ------------------------------------------------------------------------ dw_spikes
// Block i owns out[i, :]: its threads stride over j and sum x_k*delta[rows_k, j] over the
// column's nonzeros k in registers, then write once. xvals == nullptr: every x_k is 1.
template <typename scalar_t>
__global__ void dw_spikes_kernel(const scalar_t* __restrict__ delta,
                                 const int64_t* __restrict__ colptr,
                                 const int32_t* __restrict__ rows,
                                 const scalar_t* __restrict__ xvals, scalar_t* __restrict__ out,
                                 int64_t R, int64_t n_out, int64_t nnz) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t i = blockIdx.x;
  int64_t lo, hi;
  clamp_range(colptr, i, nnz, lo, hi);
  for (int64_t j = threadIdx.x; j < n_out; j += blockDim.x) {
    opmath_t acc = opmath_t(0);
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t r = rows[k];
      if (r < 0 || r >= R) continue;
      const opmath_t d = static_cast<opmath_t>(delta[r * n_out + j]);
      acc += xvals != nullptr ? static_cast<opmath_t>(xvals[k]) * d : d;
    }
    out[i * n_out + j] = static_cast<scalar_t>(acc);
  }
}

// ------------------------------------------------------------------------- dw_trace
// Sort key of input nonzero k of column i: column-major, then batch element b, then t, so
// that after sorting the nonzeros of one (i, b) are consecutive in time order. Rows outside
// [0, T*B) get the column's last key, which no (b, t) looks up.
__global__ void trace_keys_kernel(const int64_t* __restrict__ colptr,
                                  const int32_t* __restrict__ rows, int64_t* __restrict__ keys,
                                  int64_t T, int64_t B, int64_t nnz) {
  const int64_t i = blockIdx.x;
  const int64_t TB = T * B;
  int64_t lo, hi;
  clamp_range(colptr, i, nnz, lo, hi);
  for (int64_t k = lo + threadIdx.x; k < hi; k += blockDim.x) {
    const int64_t r = rows[k];
    const bool valid = r >= 0 && r < TB;
    keys[k] = i * (TB + 1) + (valid ? (r % B) * T + r / B : TB);
  }
}

// First index in [lo, hi) whose key is >= key (keys sorted ascending there).
__device__ __forceinline__ int64_t lower_bound(const int64_t* keys, int64_t lo, int64_t hi,
                                               int64_t key) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The input of dw_trace as a thread reads it, x[t, b, i] step by step: the CSC nonzeros
// sorted by trace_keys_kernel's key (xs == nullptr: all ones)...
template <typename scalar_t>
struct SortedCscReader {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t* colptr;
  const int64_t* keys;
  const scalar_t* xs;
  int64_t T, B, nnz;
  int64_t k = 0, hi = 0, first_key = 0;

  __device__ void begin(int64_t i, int64_t b) {
    int64_t lo;
    clamp_range(colptr, i, nnz, lo, hi);
    first_key = i * (T * B + 1) + b * T;  // key of (i, b, t = 0)
    k = lower_bound(keys, lo, hi, first_key);
  }
  __device__ opmath_t value(int64_t t) {
    opmath_t x = opmath_t(0);
    // A repeated (r, i) overwrites, as the reference's dense assignment does.
    for (; k < hi && keys[k] == first_key + t; ++k) {
      x = xs != nullptr ? static_cast<opmath_t>(xs[k]) : opmath_t(1);
    }
    return x;
  }
};

// ... or the dense input [T*B, n_in] of dw_trace_dense.
template <typename scalar_t>
struct DenseReader {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  int64_t B, n_in;
  int64_t i = 0, b = 0;

  __device__ void begin(int64_t i_, int64_t b_) {
    i = i_;
    b = b_;
  }
  __device__ opmath_t value(int64_t t) { return static_cast<opmath_t>(x[(t * B + b) * n_in + i]); }
};

// Block i (input neuron), thread b (batch element) walks t with trace = beta*trace + x[t, b, i]
// and adds eps*trace to acc[j, i] (dW [n_out, n_in]) for every active (r = t*B + b, j).
// Threads of a block may hit the same entry, hence atomics (on a float/double accumulator).
template <typename scalar_t, typename Reader>
__global__ void dw_trace_kernel(const int64_t* __restrict__ rowptr,
                                const int32_t* __restrict__ cols,
                                const scalar_t* __restrict__ eps_vals, Reader reader,
                                at::opmath_type<scalar_t> beta,
                                at::opmath_type<scalar_t>* __restrict__ acc, int64_t T, int64_t B,
                                int64_t n_in, int64_t n_out, int64_t nnz_a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t i = blockIdx.x;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    Reader x = reader;
    x.begin(i, b);
    opmath_t trace = opmath_t(0);
    for (int64_t t = 0; t < T; ++t) {
      trace = beta * trace + x.value(t);
      int64_t qlo, qhi;
      clamp_range(rowptr, t * B + b, nnz_a, qlo, qhi);
      for (int64_t q = qlo; q < qhi; ++q) {
        const int64_t j = cols[q];
        if (j < 0 || j >= n_out) continue;
        atomicAdd(acc + j * n_in + i, static_cast<opmath_t>(eps_vals[q]) * trace);
      }
    }
  }
}

// ------------------------------------------------------------------------ dx_masked
// Rows of delta up to this many bytes (in opmath) are staged in shared memory: the default
// dynamic shared-memory limit of a block. Longer rows are read from global memory.
constexpr int64_t kMaxStagedBytes = 48 * 1024;

// Block r: each warp takes words of the row's bits (bits r*n_in .. r*n_in + n_in - 1), skips
// empty ones, and for each set bit i reduces dot(delta[r, :], weight_t[i, :]) over its lanes.
// out must be zero-filled: positions without a bit are not written.
template <typename scalar_t>
__global__ void dx_masked_kernel(const scalar_t* __restrict__ delta,
                                 const scalar_t* __restrict__ weight_t,
                                 const int32_t* __restrict__ bits, scalar_t* __restrict__ out,
                                 int64_t n_in, int64_t n_out, bool staged) {
  using opmath_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char smem[];
  opmath_t* row = reinterpret_cast<opmath_t*>(smem);
  const int64_t r = blockIdx.x;
  const scalar_t* drow = delta + r * n_out;
  if (staged) {
    for (int64_t j = threadIdx.x; j < n_out; j += blockDim.x) row[j] = static_cast<opmath_t>(drow[j]);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t first = r * n_in;  // bits of row r: [first, last)
  const int64_t last = first + n_in;
  const int64_t w_end = (last + 31) / 32;
  for (int64_t w = first / 32 + threadIdx.x / 32; w < w_end; w += blockDim.x / 32) {
    uint32_t word = static_cast<uint32_t>(bits[w]);  // the same for all lanes of the warp
    const int64_t base = w * 32;
    if (base < first) word &= ~0u << (first - base);          // drop the previous row's bits
    if (base + 32 > last) word &= ~0u >> (base + 32 - last);  // and the next row's
    while (word != 0u) {
      const int64_t i = base + __ffs(word) - 1 - first;
      word &= word - 1u;
      const scalar_t* wrow = weight_t + i * n_out;
      opmath_t sum = opmath_t(0);
      for (int64_t j = lane; j < n_out; j += 32) {
        const opmath_t d = staged ? row[j] : static_cast<opmath_t>(drow[j]);
        sum += d * static_cast<opmath_t>(wrow[j]);
      }
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
      if (lane == 0) out[first + i] = static_cast<scalar_t>(sum);
    }
  }
}

// --------------------------------------------------------------------------- host
at::Tensor dw_spikes_cuda(const at::Tensor& delta_in, const at::Tensor& colptr_in,
                          const at::Tensor& rows_in, const at::Tensor& xvals_in, int64_t n_in) {
  constexpr const char* op = "dw_spikes";
  check_cuda(delta_in, op, "delta");
  check_floating(delta_in, op, "delta");
  check_dim(delta_in, 2, op, "delta");
  TORCH_CHECK(n_in >= 0, op, ": `n_in` must be >= 0, got ", n_in);
  const Csc x = csc_arg(colptr_in, rows_in, xvals_in, delta_in, op, "delta");
  check_numel(x.colptr, checked_add(n_in, 1, op, "n_in + 1"), op, "colptr", "n_in + 1");
  const c10::cuda::CUDAGuard guard(delta_in.device());
  const at::Tensor delta = delta_in.contiguous();
  const int64_t R = delta.size(0);
  const int64_t n_out = delta.size(1);
  at::Tensor out = at::empty({n_in, n_out}, delta.options());
  if (n_in == 0 || n_out == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "dw_spikes", [&] {
    dw_spikes_kernel<scalar_t><<<block_per_item(n_in, op, "input neurons"), threads_for(n_out), 0, stream()>>>(
        delta.data_ptr<scalar_t>(), x.colptr.data_ptr<int64_t>(), x.rows.data_ptr<int32_t>(),
        x.xvals.numel() ? x.xvals.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), R,
        n_out, x.nnz);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// The active set of dw_trace / dw_trace_dense: CSR over the R = T*B rows (rowptr, cols) with
// one eps_vals entry per column index.
struct Active {
  at::Tensor rowptr, cols;
  int64_t R;
};

Active active_arg(const at::Tensor& rowptr_in, const at::Tensor& cols_in,
                  const at::Tensor& eps_vals_in, int64_t T, int64_t B, int64_t n_out, const char* op) {
  check_cuda(eps_vals_in, op, "eps_vals");
  check_floating(eps_vals_in, op, "eps_vals");
  check_dim(eps_vals_in, 1, op, "eps_vals");
  TORCH_CHECK(T >= 0 && B >= 0 && n_out >= 0, op, ": `T`, `B` and `n_out` must be >= 0, got ", T, ", ",
              B, ", ", n_out);
  const at::Tensor rowptr = index_arg(rowptr_in, at::kLong, eps_vals_in, op, "rowptr");
  const at::Tensor cols = index_arg(cols_in, at::kInt, eps_vals_in, op, "cols");
  const int64_t R = checked_mul(T, B, op, "T*B");
  check_numel(rowptr, checked_add(R, 1, op, "T*B + 1"), op, "rowptr", "T*B + 1");
  check_numel(eps_vals_in, cols.numel(), op, "eps_vals", "one value per entry of cols");
  return {rowptr, cols, R};
}

at::Tensor dw_trace_cuda(const at::Tensor& rowptr_in, const at::Tensor& cols_in,
                         const at::Tensor& eps_vals_in, const at::Tensor& colptr_in,
                         const at::Tensor& rows_in, const at::Tensor& xvals_in, double beta,
                         int64_t T, int64_t B, int64_t n_out) {
  constexpr const char* op = "dw_trace";
  const Active active = active_arg(rowptr_in, cols_in, eps_vals_in, T, B, n_out, op);
  const at::Tensor &rowptr = active.rowptr, &cols = active.cols;
  const int64_t R = active.R;
  const Csc x = csc_arg(colptr_in, rows_in, xvals_in, eps_vals_in, op, "eps_vals");
  const c10::cuda::CUDAGuard guard(eps_vals_in.device());
  const at::Tensor eps_vals = eps_vals_in.contiguous();
  const auto opmath_dtype = at::toOpMathType(eps_vals.scalar_type());
  at::Tensor acc = at::zeros({n_out, x.n_in}, eps_vals.options().dtype(opmath_dtype));
  if (x.n_in > 0 && n_out > 0 && R > 0) {
    // Order the nonzeros of each column by (b, t) so that thread b finds x[t, b, i] in step.
    at::Tensor keys = at::empty({x.nnz}, x.colptr.options());
    if (x.nnz > 0) {
      trace_keys_kernel<<<block_per_item(x.n_in, op, "input neurons"), kThreads, 0, stream()>>>(
          x.colptr.data_ptr<int64_t>(), x.rows.data_ptr<int32_t>(), keys.data_ptr<int64_t>(), T,
          B, x.nnz);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    at::Tensor sorted_keys, perm;
    std::tie(sorted_keys, perm) = at::sort(keys);
    const at::Tensor xs = x.xvals.numel() ? x.xvals.index_select(0, perm) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, eps_vals.scalar_type(), "dw_trace", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      const SortedCscReader<scalar_t> reader{
          x.colptr.data_ptr<int64_t>(), sorted_keys.data_ptr<int64_t>(),
          xs.defined() ? xs.data_ptr<scalar_t>() : nullptr, T, B, x.nnz};
      dw_trace_kernel<scalar_t><<<block_per_item(x.n_in, op, "input neurons"), threads_for(B), 0, stream()>>>(
          rowptr.data_ptr<int64_t>(), cols.data_ptr<int32_t>(), eps_vals.data_ptr<scalar_t>(), reader,
          static_cast<opmath_t>(beta), acc.data_ptr<opmath_t>(), T, B, x.n_in, n_out, eps_vals.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // dWᵀ as the transpose of a contiguous dW (see the CPU kernel); no copy for float/double.
  return acc.to(eps_vals.scalar_type()).t();
}

at::Tensor dw_trace_dense_cuda(const at::Tensor& rowptr_in, const at::Tensor& cols_in,
                               const at::Tensor& eps_vals_in, const at::Tensor& x_in, double beta,
                               int64_t T, int64_t B, int64_t n_out) {
  constexpr const char* op = "dw_trace_dense";
  const Active active = active_arg(rowptr_in, cols_in, eps_vals_in, T, B, n_out, op);
  const at::Tensor &rowptr = active.rowptr, &cols = active.cols;
  const int64_t R = active.R;
  check_cuda(x_in, op, "x");
  check_same_dtype(x_in, eps_vals_in, op, "x", "eps_vals");
  check_dim(x_in, 2, op, "x");
  TORCH_CHECK(x_in.size(0) == R, op, ": `x` must be [T*B, n_in] with T*B = ", R, ", got shape ",
              x_in.sizes());
  TORCH_CHECK(x_in.device() == eps_vals_in.device(), op, ": `x` must be on the device of `eps_vals` (",
              eps_vals_in.device(), "), got ", x_in.device());
  const c10::cuda::CUDAGuard guard(eps_vals_in.device());
  const at::Tensor eps_vals = eps_vals_in.contiguous(), x = x_in.contiguous();
  const int64_t n_in = x.size(1);
  const auto opmath_dtype = at::toOpMathType(eps_vals.scalar_type());
  at::Tensor acc = at::zeros({n_out, n_in}, eps_vals.options().dtype(opmath_dtype));
  if (n_in > 0 && n_out > 0 && R > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, eps_vals.scalar_type(), op, [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      const DenseReader<scalar_t> reader{x.data_ptr<scalar_t>(), B, n_in};
      dw_trace_kernel<scalar_t><<<block_per_item(n_in, op, "input neurons"), threads_for(B), 0, stream()>>>(
          rowptr.data_ptr<int64_t>(), cols.data_ptr<int32_t>(), eps_vals.data_ptr<scalar_t>(), reader,
          static_cast<opmath_t>(beta), acc.data_ptr<opmath_t>(), T, B, n_in, n_out, eps_vals.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return acc.to(eps_vals.scalar_type()).t();
}

// ----------------------------------------------------------------- linear_fwd_events
// Block i takes input column i of the compact input: for each of its entries (r, i) the
// threads add x * weight_t[i, :] to row r of an opmath accumulator that starts at the
// bias. Columns share rows, hence atomics (the order of the sums is not fixed).
template <typename scalar_t>
__global__ void linear_fwd_events_kernel(const int64_t* __restrict__ colptr,
                                         const int32_t* __restrict__ rows,
                                         const scalar_t* __restrict__ xvals,
                                         const scalar_t* __restrict__ weight_t,
                                         at::opmath_type<scalar_t>* __restrict__ acc, int64_t R,
                                         int64_t n_out, int64_t nnz) {
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t lo, hi;
  clamp_range(colptr, blockIdx.x, nnz, lo, hi);
  const scalar_t* w = weight_t + blockIdx.x * n_out;
  for (int64_t k = lo; k < hi; ++k) {
    const int64_t r = rows[k];
    if (r < 0 || r >= R) continue;
    const opmath_t v = xvals != nullptr ? static_cast<opmath_t>(xvals[k]) : opmath_t(1);
    for (int64_t j = threadIdx.x; j < n_out; j += blockDim.x)
      atomicAdd(acc + r * n_out + j, mul_rn(v, static_cast<opmath_t>(w[j])));
  }
}

at::Tensor linear_fwd_events_cuda(const at::Tensor& colptr_in, const at::Tensor& rows_in,
                                  const at::Tensor& xvals_in, const at::Tensor& weight_t_in,
                                  const std::optional<at::Tensor>& bias_in, int64_t R) {
  constexpr const char* op = "linear_fwd_events";
  check_cuda(weight_t_in, op, "weight_t");
  check_floating(weight_t_in, op, "weight_t");
  check_dim(weight_t_in, 2, op, "weight_t");
  TORCH_CHECK(R >= 0 && R <= INT32_MAX, op, ": `R` (rows of the input) must lie in [0, 2^31 - 1], got ", R);
  const Csc x = csc_arg(colptr_in, rows_in, xvals_in, weight_t_in, op, "weight_t");
  TORCH_CHECK(x.n_in == weight_t_in.size(0), op, ": `colptr` must have n_in + 1 = ", weight_t_in.size(0) + 1,
              " entries (n_in = weight_t.shape[0]), got ", x.n_in + 1);
  const int64_t n_in = x.n_in, n_out = weight_t_in.size(1);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  if (has_bias) {
    check_same_device(*bias_in, weight_t_in, op, "bias");
    check_same_dtype(*bias_in, weight_t_in, op, "bias", "weight_t");
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == n_out, op, ": `bias` must be [n_out] = [",
                n_out, "], got shape ", bias_in->sizes());
  }
  const c10::cuda::CUDAGuard guard(weight_t_in.device());
  const at::Tensor weight_t = weight_t_in.contiguous();
  const auto opmath = at::toOpMathType(weight_t.scalar_type());
  // A copy: for R = 1 the expanded bias is already contiguous and would be written into.
  at::Tensor acc = has_bias ? bias_in->to(opmath).expand({R, n_out}).clone(at::MemoryFormat::Contiguous)
                            : at::zeros({R, n_out}, weight_t.options().dtype(opmath));
  if (R == 0 || n_out == 0 || n_in == 0) return acc.to(weight_t.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_t.scalar_type(), "linear_fwd_events", [&] {
    linear_fwd_events_kernel<scalar_t><<<block_per_item(n_in, op, "input neurons"), threads_for(n_out), 0,
                                         stream()>>>(
        x.colptr.data_ptr<int64_t>(), x.rows.data_ptr<int32_t>(),
        x.xvals.numel() ? x.xvals.data_ptr<scalar_t>() : nullptr, weight_t.data_ptr<scalar_t>(),
        acc.data_ptr<at::opmath_type<scalar_t>>(), R, n_out, x.nnz);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return acc.to(weight_t.scalar_type());
}

at::Tensor dx_masked_cuda(const at::Tensor& delta_in, const at::Tensor& weight_t_in,
                          const at::Tensor& bits_in) {
  constexpr const char* op = "dx_masked";
  check_cuda(delta_in, op, "delta");
  check_floating(delta_in, op, "delta");
  check_dim(delta_in, 2, op, "delta");
  check_same_device(weight_t_in, delta_in, op, "weight_t");
  check_same_dtype(weight_t_in, delta_in, op, "weight_t", "delta");
  check_dim(weight_t_in, 2, op, "weight_t");
  TORCH_CHECK(weight_t_in.size(1) == delta_in.size(1), op,
              ": `weight_t` must be [n_in, n_out] with n_out = delta.shape[1] = ", delta_in.size(1),
              ", got shape ", weight_t_in.sizes());
  const int64_t R = delta_in.size(0);
  const int64_t n_in = weight_t_in.size(0);
  const int64_t n_out = delta_in.size(1);
  check_bits(bits_in, delta_in, op, "bits");
  check_numel(bits_in, (R * n_in + 31) / 32, op, "bits",
              "one int32 word per 32 elements of the [delta.shape[0], weight_t.shape[0]] output");
  const c10::cuda::CUDAGuard guard(delta_in.device());
  const at::Tensor delta = delta_in.contiguous();
  const at::Tensor weight_t = weight_t_in.contiguous();
  const at::Tensor bits = bits_in.contiguous();
  at::Tensor out = at::zeros({R, n_in}, delta.options());
  if (R == 0 || n_in == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "dx_masked", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const int64_t row_bytes = n_out * static_cast<int64_t>(sizeof(opmath_t));
    const bool staged = row_bytes <= kMaxStagedBytes;
    dx_masked_kernel<scalar_t><<<block_per_item(R, op, "rows"), kThreads, staged ? row_bytes : 0, stream()>>>(
        delta.data_ptr<scalar_t>(), weight_t.data_ptr<scalar_t>(), bits.data_ptr<int32_t>(),
        out.data_ptr<scalar_t>(), n_in, n_out, staged);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse

TORCH_LIBRARY_IMPL(snntorch_sparse, CUDA, m) {
  m.impl("dw_spikes", &snntorch_sparse::cuda::dw_spikes_cuda);
  m.impl("dw_trace", &snntorch_sparse::cuda::dw_trace_cuda);
  m.impl("dw_trace_dense", &snntorch_sparse::cuda::dw_trace_dense_cuda);
  m.impl("dx_masked", &snntorch_sparse::cuda::dx_masked_cuda);
  m.impl("linear_fwd_events", &snntorch_sparse::cuda::linear_fwd_events_cuda);
}
