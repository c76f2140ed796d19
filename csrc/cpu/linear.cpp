// CPU kernels of the fully connected layer's sparse gradients: `dw_spikes`, `dw_trace`
// and `dx_masked` (math: the functions of the same name in reference.py).
//
// Every output row belongs to exactly one thread (input neuron i for the weight
// gradients, sample-step r for the input gradient), so there are no atomics, and the
// innermost loops run over contiguous memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/band.h"
#include "cpu/scan.h"
#include "common.h"
#include "cpu/checks.h"
#include "cpu/sparse_args.h"
#include "sizes.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// dw_spikes: bytes of the delta row tile that the input columns of a thread sweep together.
constexpr int64_t kTileBytes = 384 << 10;

// o[:] += x_k * d[rows_k, :] for G consecutive k in one pass over o (fewer loads and
// stores of o). Per element the adds still run in k order, as the reference's index_add.
template <typename T, int G>
inline void add_rows(T* __restrict o, const T* delta, const int32_t* rows, const T* xvals, int64_t k,
                     int64_t n) {
  const T* __restrict d[G];
  T x[G];
  for (int g = 0; g < G; ++g) {
    d[g] = delta + rows[k + g] * n;
    x[g] = xvals ? xvals[k + g] : T(1);
  }
  if (xvals) {
    for (int64_t j = 0; j < n; ++j) {
      T s = o[j];
      for (int g = 0; g < G; ++g) s += x[g] * d[g][j];
      o[j] = s;
    }
  } else {  // binary input: x = 1 exactly, skip the products
    for (int64_t j = 0; j < n; ++j) {
      T s = o[j];
      for (int g = 0; g < G; ++g) s += d[g][j];
      o[j] = s;
    }
  }
}

// Output rows [i0, i1) of dw_spikes. A delta row is read by every input column that
// spiked in it (~n_in*activity of them): reading it once per input nonzero streams
// delta from memory again and again, so the columns sweep delta in row tiles together
// and the tile stays in cache.
// `next` (i1 - i0 entries) is scratch: the next unread input of each column.
template <typename T>
SNN_VECTOR_CLONES void dw_spikes_cols(const T* delta, const int64_t* colptr, const int32_t* rows,
                                      const T* xvals, T* out, int64_t R, int64_t n_out, int64_t i0,
                                      int64_t i1, int64_t* next) {
  std::fill(out + i0 * n_out, out + i1 * n_out, T(0));
  std::copy(colptr + i0, colptr + i1, next);
  const int64_t row_tile = std::max<int64_t>(1, kTileBytes / (std::max<int64_t>(n_out, 1) * sizeof(T)));
  // Unsorted rows are still all consumed: the last tile's bound is R.
  for (int64_t r_end = std::min(R, row_tile);; r_end = std::min(R, r_end + row_tile)) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t k = next[i - i0];
      int64_t k1 = k;
      while (k1 < colptr[i + 1] && rows[k1] < r_end) ++k1;
      next[i - i0] = k1;
      T* o = out + i * n_out;
      for (; k + 4 <= k1; k += 4) add_rows<T, 4>(o, delta, rows, xvals, k, n_out);
      switch (k1 - k) {
        case 3: add_rows<T, 3>(o, delta, rows, xvals, k, n_out); break;
        case 2: add_rows<T, 2>(o, delta, rows, xvals, k, n_out); break;
        case 1: add_rows<T, 1>(o, delta, rows, xvals, k, n_out); break;
        default: break;
      }
    }
    if (r_end >= R) break;
  }
}

Tensor dw_spikes_cpu(const Tensor& delta_in, const Tensor& colptr, const Tensor& rows,
                     const Tensor& xvals_in, int64_t n_in) {
  check_float(delta_in, "dw_spikes", "delta");
  TORCH_CHECK(delta_in.dim() == 2, "dw_spikes: `delta` must have shape [R, n_out], got ", delta_in.sizes());
  TORCH_CHECK(n_in >= 0, "dw_spikes: `n_in` must be >= 0, got ", n_in);
  const int64_t R = delta_in.size(0), n_out = delta_in.size(1);
  check_compressed(colptr, rows, n_in, R, "dw_spikes", "colptr", "rows");
  check_xvals(xvals_in, delta_in, rows.numel(), "dw_spikes", "delta");
  const Tensor delta = delta_in.contiguous(), cp = colptr.contiguous(), rw = rows.contiguous(),
               xvals = xvals_in.contiguous();
  Tensor out = empty_output({n_in, n_out}, delta.options());
  // No outputs is no work: the row-tile walk below would otherwise step through all R
  // rows of a zero-width delta (R can be huge at no memory cost), as the CUDA op avoids.
  if (n_in == 0 || n_out == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "dw_spikes_cpu", [&] {
    at::parallel_for(0, n_in, 1, [&](int64_t i0, int64_t i1) {
      std::vector<int64_t> next(i1 - i0);
      dw_spikes_cols<scalar_t>(delta.const_data_ptr<scalar_t>(), cp.const_data_ptr<int64_t>(),
                               rw.const_data_ptr<int32_t>(),
                               xvals.numel() ? xvals.const_data_ptr<scalar_t>() : nullptr,
                               out.mutable_data_ptr<scalar_t>(), R, n_out, i0, i1, next.data());
    });
  });
  return out;
}

// dw_trace: input columns per block (128 bytes of a trace row); a block's traces are
// updated and scattered as one short contiguous vector per (row, output). Its accumulator,
// n_out such vectors, then stays in a 512 KiB L2 up to n_out = 4096 (the Open Neuromorphic
// layer: 0.66 -> 0.49 s at 256 -> 128 bytes; 64 bytes: 1.5 s, the walk itself dominating).
template <typename T>
constexpr int64_t kTraceCols = 128 / sizeof(T);

// a[0:N] += e * x[0:N]
template <typename T, int64_t N>
inline void axpy(T* __restrict a, const T* __restrict x, T e) {
  for (int64_t c = 0; c < N; ++c) a[c] += e * x[c];
}

// The input of dw_trace, as CSC (rows sorted within each column): per step the block's
// traces decay, then the step's nonzeros add (a zero adds nothing, so this equals the
// dense update below bit for bit).
template <typename T>
struct CscInput {
  const int64_t* colptr;
  const int32_t* rows;
  const T* xvals;  // nullptr: all ones
  int64_t ptr[kTraceCols<T>], end[kTraceCols<T>];

  void begin(int64_t i0, int64_t n_in) {
    for (int64_t c = 0; c < kTraceCols<T>; ++c) {
      const bool in = i0 + c < n_in;
      ptr[c] = in ? colptr[i0 + c] : 0;
      end[c] = in ? colptr[i0 + c + 1] : 0;
    }
  }
  void step(int64_t t, int64_t B, T beta, T* trace) {
    constexpr int64_t C = kTraceCols<T>;
    for (int64_t k = 0; k < B * C; ++k) trace[k] = beta * trace[k];
    const int64_t r_end = (t + 1) * B;
    for (int64_t c = 0; c < C; ++c) {
      // Sorted rows keep r - t*B in [0, B): the previous step stopped at a row >= t*B.
      for (; ptr[c] < end[c] && rows[ptr[c]] < r_end; ++ptr[c])
        trace[(rows[ptr[c]] - t * B) * C + c] += xvals ? xvals[ptr[c]] : T(1);
    }
  }
};

// The input of dw_trace_dense, [T*B, n_in] row-major: trace = beta * trace + x.
template <typename T>
struct DenseInput {
  const T* x;
  int64_t n_in, i0 = 0, width = 0;

  void begin(int64_t first, int64_t n) {
    i0 = first;
    width = std::min(kTraceCols<T>, n - first);  // columns past n_in keep a zero trace
  }
  void step(int64_t t, int64_t B, T beta, T* trace) {
    for (int64_t b = 0; b < B; ++b) {
      T* __restrict tr = trace + b * kTraceCols<T>;
      const T* __restrict xr = x + (t * B + b) * n_in + i0;
      for (int64_t c = 0; c < width; ++c) tr[c] = beta * tr[c] + xr[c];
    }
  }
};

// Input columns [i0, i0 + C) of dw_trace: walk t forward keeping trace[b, c] for the
// block, and for every active (r, j) add eps * trace[b, :] to acc[j, :] (= dW[j, i], out
// laid out as dW [n_out, n_in]). `trace` (B*C) and `acc` (n_out*C) are scratch.
template <typename T, typename Input>
SNN_VECTOR_CLONES void dw_trace_block(const int64_t* rowptr, const int32_t* cols, const T* eps,
                                      Input input, T beta, int64_t steps, int64_t B, int64_t n_out,
                                      int64_t n_in, int64_t i0, T* out, T* trace, T* acc) {
  constexpr int64_t C = kTraceCols<T>;
  std::fill(trace, trace + B * C, T(0));
  std::fill(acc, acc + n_out * C, T(0));
  input.begin(i0, n_in);
  for (int64_t t = 0; t < steps; ++t) {
    input.step(t, B, beta, trace);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r = t * B + b;
      const T* tr = trace + b * C;
      for (int64_t k = rowptr[r]; k < rowptr[r + 1]; ++k) axpy<T, C>(acc + cols[k] * C, tr, eps[k]);
    }
  }
  const int64_t width = std::min(C, n_in - i0);
  for (int64_t j = 0; j < n_out; ++j)
    std::copy(acc + j * C, acc + j * C + width, out + j * n_in + i0);
}

// The active set (CSR over T*B rows, eps_vals) of dw_trace and dw_trace_dense.
void check_active(const Tensor& rowptr, const Tensor& cols, const Tensor& eps, int64_t T, int64_t B,
                  int64_t n_out, const char* op) {
  TORCH_CHECK(T >= 0 && B >= 0 && n_out >= 0, op, ": `T`, `B` and `n_out` must be >= 0, got ", T,
              ", ", B, ", ", n_out);
  check_float(eps, op, "eps_vals");
  TORCH_CHECK(eps.dim() == 1 && eps.numel() == cols.numel(), op,
              ": `eps_vals` must be 1-D with one value per entry of `cols` (", cols.numel(),
              "), got shape ", eps.sizes());
  check_compressed(rowptr, cols, checked_mul(T, B, op, "T*B"), n_out, op, "rowptr", "cols");
}

// dWᵀ [n_in, n_out] by dw_trace_block over blocks of kTraceCols input columns, returned as
// the transpose of a contiguous dW [n_out, n_in] (so the caller's dW is contiguous: no copy
// of a large weight gradient); make_input(scalar_t tag) gives each block's input reader.
template <typename MakeInput>
Tensor run_dw_trace(const Tensor& rowptr, const Tensor& cols, const Tensor& eps_in, double beta,
                    int64_t T, int64_t B, int64_t n_in, int64_t n_out, const char* op,
                    MakeInput make_input) {
  const Tensor rp = rowptr.contiguous(), cl = cols.contiguous(), eps = eps_in.contiguous();
  if (T * B == 0 || n_in == 0 || n_out == 0) return zeros_output({n_out, n_in}, eps.options()).t();
  Tensor out = empty_output({n_out, n_in}, eps.options());
  AT_DISPATCH_FLOATING_TYPES(eps.scalar_type(), "dw_trace_cpu", [&] {
    constexpr int64_t C = kTraceCols<scalar_t>;
    checked_mul(std::max(B, n_out), C, op, "per-thread scratch");
    at::parallel_for(0, (n_in + C - 1) / C, 1, [&](int64_t k0, int64_t k1) {
      std::vector<scalar_t> trace(B * C), acc(n_out * C);  // per thread, reused across blocks
      for (int64_t k = k0; k < k1; ++k)
        dw_trace_block<scalar_t>(rp.const_data_ptr<int64_t>(), cl.const_data_ptr<int32_t>(),
                                 eps.const_data_ptr<scalar_t>(), make_input(scalar_t(0)),
                                 static_cast<scalar_t>(beta), T, B, n_out, n_in, k * C,
                                 out.mutable_data_ptr<scalar_t>(), trace.data(), acc.data());
    });
  });
  return out.t();
}

Tensor dw_trace_cpu(const Tensor& rowptr, const Tensor& cols, const Tensor& eps_in, const Tensor& colptr,
                    const Tensor& rows, const Tensor& xvals_in, double beta, int64_t T, int64_t B,
                    int64_t n_out) {
  check_active(rowptr, cols, eps_in, T, B, n_out, "dw_trace");
  const int64_t R = T * B;
  TORCH_CHECK(colptr.dim() == 1 && colptr.numel() >= 1,
              "dw_trace: `colptr` must be 1-D with n_in + 1 entries, got shape ", colptr.sizes());
  const int64_t n_in = colptr.numel() - 1;
  check_compressed(colptr, rows, n_in, R, "dw_trace", "colptr", "rows");
  check_xvals(xvals_in, eps_in, rows.numel(), "dw_trace", "eps_vals");
  const Tensor cp = colptr.contiguous(), rw = rows.contiguous(), xvals = xvals_in.contiguous();
  {  // the trace walk advances one pointer per column with t
    const int64_t* pp = cp.const_data_ptr<int64_t>();
    const int32_t* rr = rw.const_data_ptr<int32_t>();
    for (int64_t i = 0; i < n_in; ++i)
      for (int64_t k = pp[i] + 1; k < pp[i + 1]; ++k)
        TORCH_CHECK(rr[k - 1] < rr[k], "dw_trace: `rows` must be strictly increasing within each "
                    "column (column ", i, ")");
  }
  return run_dw_trace(rowptr, cols, eps_in, beta, T, B, n_in, n_out, "dw_trace", [&](auto tag) {
    using scalar_t = decltype(tag);
    return CscInput<scalar_t>{cp.const_data_ptr<int64_t>(), rw.const_data_ptr<int32_t>(),
                              xvals.numel() ? xvals.const_data_ptr<scalar_t>() : nullptr, {}, {}};
  });
}

Tensor dw_trace_dense_cpu(const Tensor& rowptr, const Tensor& cols, const Tensor& eps_in,
                          const Tensor& x_in, double beta, int64_t T, int64_t B, int64_t n_out) {
  constexpr const char* op = "dw_trace_dense";
  check_active(rowptr, cols, eps_in, T, B, n_out, op);
  check_float(x_in, op, "x");
  TORCH_CHECK(x_in.scalar_type() == eps_in.scalar_type(), op, ": `x` must have the dtype of `eps_vals` (",
              eps_in.scalar_type(), "), got ", x_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(0) == T * B, op, ": `x` must be [T*B, n_in] with T*B = ",
              T * B, ", got shape ", x_in.sizes());
  const Tensor x = x_in.contiguous();
  const int64_t n_in = x.size(1);
  return run_dw_trace(rowptr, cols, eps_in, beta, T, B, n_in, n_out, op, [&](auto tag) {
    using scalar_t = decltype(tag);
    return DenseInput<scalar_t>{x.const_data_ptr<scalar_t>(), n_in};
  });
}

// Σ_j a[j]·b[j], summed in the vector lanes' order (dx_masked, linear_lif_bwd).
template <typename T>
SNN_CLONE_INLINE T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

// Row r of dx_masked from its Delta row d: a dot product per set bit, zeros elsewhere.
template <typename T>
SNN_CLONE_INLINE void dx_masked_row(const T* __restrict d, const T* wt, const int32_t* bits, T* out, int64_t r,
                                    int64_t n_in, int64_t n_out) {
  T* o = out + r * n_in;
  std::fill(o, o + n_in, T(0));
  const int64_t k0 = r * n_in, k1 = k0 + n_in;
  for (int64_t w = k0 >> 5; w < (k1 + 31) >> 5; ++w) {
    // Keep the bits of this word that belong to row r.
    const int64_t lo = std::max<int64_t>(k0 - w * 32, 0), hi = std::min<int64_t>(k1 - w * 32, 32);
    const uint32_t mask = (hi == 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u);
    for (uint32_t word = static_cast<uint32_t>(bits[w]) & mask; word; word &= word - 1) {
      const int64_t i = w * 32 + __builtin_ctz(word) - k0;
      o[i] = dot(d, wt + i * n_out, n_out);
    }
  }
}

// Rows [r0, r1) of dx_masked.
template <typename T>
SNN_VECTOR_CLONES void dx_masked_rows(const T* delta, const T* wt, const int32_t* bits, T* out,
                                      int64_t n_in, int64_t n_out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    dx_masked_row(delta + r * n_out, wt, bits, out, r, n_in, n_out);
  }
}

Tensor dx_masked_cpu(const Tensor& delta_in, const Tensor& wt_in, const Tensor& bits_in) {
  check_float(delta_in, "dx_masked", "delta");
  check_float(wt_in, "dx_masked", "weight_t");
  TORCH_CHECK(wt_in.scalar_type() == delta_in.scalar_type(), "dx_masked: `weight_t` must have the dtype of `delta` (",
              delta_in.scalar_type(), "), got ", wt_in.scalar_type());
  TORCH_CHECK(delta_in.dim() == 2, "dx_masked: `delta` must have shape [R, n_out], got ", delta_in.sizes());
  TORCH_CHECK(wt_in.dim() == 2 && wt_in.size(1) == delta_in.size(1),
              "dx_masked: `weight_t` must have shape [n_in, n_out] with n_out = ", delta_in.size(1), ", got ",
              wt_in.sizes());
  check_index(bits_in, at::kInt, "dx_masked", "bits");
  const int64_t R = delta_in.size(0), n_out = delta_in.size(1), n_in = wt_in.size(0);
  TORCH_CHECK(bits_in.numel() == (R * n_in + 31) / 32, "dx_masked: `bits` must have ceil(R*n_in/32) = ",
              (R * n_in + 31) / 32, " words, got ", bits_in.numel());
  const Tensor delta = delta_in.contiguous(), wt = wt_in.contiguous(), bits = bits_in.contiguous();
  Tensor out = empty_output({R, n_in}, delta.options());
  if (R * n_in == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "dx_masked_cpu", [&] {
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
      dx_masked_rows<scalar_t>(delta.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                               bits.const_data_ptr<int32_t>(), out.mutable_data_ptr<scalar_t>(), n_in,
                               n_out, r0, r1);
    });
  });
  return out;
}

}  // namespace

// ---------------------------------------------------------------- linear_fwd_events
// The input comes compact (CSC, the form the backward keeps), so the dense input is never
// read again. Threads own blocks of output rows, small enough to stay in L2 while every
// column adds its weight row to the block's rows that it holds: out[r] = bias + Σ over
// the column's entries (r, i) of x * weight_t[i, :], the columns in ascending i — each
// output's sum in the order of a walk along its row.

// out[r - r0, :width] = bias[:width] + Σ over the entries (r, i) of rows [r0, r1) of
// x * wt[i, :width] (weight rows `ldw` apart, output rows `width` apart), the columns in
// ascending i. next[i] (n_in entries): column i's first entry at or after r0 (rows ascend
// within a column); left at its first entry at or after r1.
template <typename T>
SNN_CLONE_INLINE void add_events(const int64_t* colptr, const int32_t* rows, const T* xvals, const T* wt,
                       int64_t ldw, const T* bias, T* out, int64_t width, int64_t r0, int64_t r1,
                       int64_t n_in, int64_t* next) {
  for (int64_t r = r0; r < r1; ++r) {
    T* __restrict o = out + (r - r0) * width;
    for (int64_t j = 0; j < width; ++j) o[j] = bias ? bias[j] : T(0);
  }
  for (int64_t i = 0; i < n_in; ++i) {
    const T* __restrict w = wt + i * ldw;
    int64_t k = next[i];
    for (; k < colptr[i + 1] && rows[k] < r1; ++k) {
      T* __restrict o = out + (static_cast<int64_t>(rows[k]) - r0) * width;
      if (xvals) {
        const T v = xvals[k];
        for (int64_t j = 0; j < width; ++j) o[j] += v * w[j];
      } else {  // binary input: x = 1 exactly, skip the products
        for (int64_t j = 0; j < width; ++j) o[j] += w[j];
      }
    }
    next[i] = k;
  }
}

// Column i's first entry at or after row `first`, for each i.
inline void first_entries(const int64_t* colptr, const int32_t* rows, int64_t n_in, int64_t first,
                          int64_t* next) {
  for (int64_t i = 0; i < n_in; ++i)
    next[i] = std::lower_bound(rows + colptr[i], rows + colptr[i + 1], static_cast<int32_t>(first)) - rows;
}

// The arguments of an event-driven forward (linear_fwd_events, linear_lif_events): the
// input's CSC over R rows, weight_t [n_in, n_out], an optional bias [n_out]. Returns
// whether there is a bias.
bool check_events_args(const Tensor& colptr, const Tensor& rows, const Tensor& xvals, const Tensor& wt,
                       const std::optional<Tensor>& bias, int64_t R, const char* op) {
  check_float(wt, op, "weight_t");
  TORCH_CHECK(wt.dim() == 2, op, ": `weight_t` must be 2-D [n_in, n_out], got shape ", wt.sizes());
  TORCH_CHECK(R >= 0 && R <= INT32_MAX, op, ": `R` (rows of the input) must lie in [0, 2^31 - 1], got ", R);
  const int64_t n_in = wt.size(0), n_out = wt.size(1);
  check_compressed(colptr, rows, n_in, R, op, "colptr", "rows");
  check_xvals(xvals, wt, rows.numel(), op, "weight_t");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_float(*bias, op, "bias");
    TORCH_CHECK(bias->scalar_type() == wt.scalar_type() && bias->dim() == 1 && bias->size(0) == n_out, op,
                ": `bias` must be [n_out] = [", n_out, "] of the dtype of `weight_t` (", wt.scalar_type(),
                "), got ", bias->scalar_type(), " of shape ", bias->sizes());
  }
  return has_bias;
}

template <typename T>
SNN_VECTOR_CLONES void fwd_events_blocks(const int64_t* colptr, const int32_t* rows, const T* xvals,
                                         const T* wt, const T* bias, T* out, int64_t R, int64_t n_in,
                                         int64_t n_out, int64_t block, int64_t b0, int64_t b1,
                                         int64_t* next) {
  first_entries(colptr, rows, n_in, b0 * block, next);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t r0 = b * block, r1 = std::min(R, r0 + block);
    add_events(colptr, rows, xvals, wt, n_out, bias, out + r0 * n_out, n_out, r0, r1, n_in, next);
  }
}

// Bytes of output rows per block of linear_fwd_events (a block and the weight rows it
// reads share a 1 MiB L2).
constexpr int64_t kEventBlockBytes = 256 << 10;

Tensor linear_fwd_events_cpu(const Tensor& colptr_in, const Tensor& rows_in, const Tensor& xvals_in,
                             const Tensor& wt_in, const std::optional<Tensor>& bias_in, int64_t R) {
  constexpr const char* op = "linear_fwd_events";
  const bool has_bias = check_events_args(colptr_in, rows_in, xvals_in, wt_in, bias_in, R, op);
  const int64_t n_in = wt_in.size(0), n_out = wt_in.size(1);
  const Tensor colptr = colptr_in.contiguous(), rows = rows_in.contiguous(), xvals = xvals_in.contiguous();
  const int64_t* cp = colptr.const_data_ptr<int64_t>();
  const int32_t* rp = rows.const_data_ptr<int32_t>();
  check_rows_ascend(cp, rp, n_in, op);  // the blocks walk each column in row order
  Tensor out = empty_output({R, n_out}, wt_in.options());
  if (out.numel() == 0) return out;
  const Tensor wt = wt_in.contiguous();
  const Tensor bias = has_bias ? bias_in->contiguous() : Tensor();
  const int64_t block = std::max<int64_t>(1, kEventBlockBytes / (n_out * wt.element_size()));
  AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "linear_fwd_events_cpu", [&] {
    at::parallel_for(0, (R + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> next(n_in);
      fwd_events_blocks<scalar_t>(cp, rp, xvals.numel() ? xvals.const_data_ptr<scalar_t>() : nullptr,
                                  wt.const_data_ptr<scalar_t>(),
                                  has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
                                  out.mutable_data_ptr<scalar_t>(), R, n_in, n_out, block, b0, b1,
                                  next.data());
    });
  });
  return out;
}

// The input by row (CSR) from its columns (CSC): rowptr [R + 1] and each row's columns in
// ascending order, with their values `xv` if `xvals` is given (else the input is binary).
// Threads take blocks of rows whose entries stay in cache; in each block a cursor per
// column (first_entries) walks the block's entries twice: to count them per row, and
// after the prefix sum to place them.
template <typename T>
void csr_from_csc(const int64_t* cp, const int32_t* rp, const T* xvals, int64_t n_in, int64_t R,
                  std::vector<int64_t>& rowptr, std::vector<int32_t>& cols, std::vector<T>& xv) {
  const int64_t nnz = cp[n_in];
  rowptr.assign(R + 1, 0);
  cols.resize(nnz);
  xv.resize(xvals ? nnz : 0);
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(R, 1));
  const int64_t block = std::max<int64_t>(256, (int64_t(32) << 10) / per_row);  // ~128 KiB of cols
  const int64_t blocks = (R + block - 1) / block;
  std::vector<int64_t> next(blocks * n_in);
  auto walk = [&](int64_t blk, auto&& visit) {
    const int64_t r1 = std::min(R, (blk + 1) * block);
    const int64_t* at = next.data() + blk * n_in;
    for (int64_t i = 0; i < n_in; ++i)
      for (int64_t k = at[i]; k < cp[i + 1] && rp[k] < r1; ++k) visit(i, k);
  };
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      first_entries(cp, rp, n_in, blk * block, next.data() + blk * n_in);
      walk(blk, [&](int64_t, int64_t k) { ++rowptr[rp[k] + 1]; });
    }
  });
  for (int64_t r = 0; r < R; ++r) rowptr[r + 1] += rowptr[r];
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * block;
      std::vector<int64_t> fill(rowptr.begin() + r0, rowptr.begin() + std::min(R, r0 + block));
      walk(blk, [&](int64_t i, int64_t k) {
        const int64_t at = fill[rp[k] - r0]++;
        cols[at] = static_cast<int32_t>(i);
        if (xvals) xv[at] = xvals[k];
      });
    }
  });
}

// ---------------------------------------------------------------- linear_lif_events
// A hidden layer's forward from its compact input in one sweep over time: currents
// (linear_fwd_events), membrane (lif_fwd), spikes and band (spike of U - theta) and the
// spikes' own compact form (nonzero_csc, the next layer's input), without forming the
// [R, n_out] currents or membrane. The recurrence runs along t independently per neuron,
// so threads own tiles of neurons (batch entries, then columns) for the whole sequence and
// never wait for each other: row by row (the input turned to rows once, csr_from_csc) a
// thread sums its tile's currents into a small buffer, steps their membranes, writes their
// spikes and lists its band entries and spikes; the lists are merged in row-major order at
// the end.
// Every value is computed by the expressions, in the order, of the unfused ops (a row's
// input columns ascend, as in linear_fwd_events), so the results are theirs bit for bit.

// Bytes of a thread's block of currents (in L1 while its rows are stepped and listed).
constexpr int64_t kLifBlockBytes = 16 << 10;

// One row of a thread's n columns: U from the previous U (`state`, updated) and the current
// `c` (overwritten by u = U - theta), the spikes `s`; bit j % 32 of band[j / 32] / fire[j / 32]
// says |u| < b_th / s != 0 for column j.
template <typename T, int64_t RST>
SNN_CLONE_INLINE void lif_spike_row(T* c, T* state, const T* be, const T* th, T* s, int64_t n, T g, T bth,
                          uint32_t* band, uint32_t* fire) {
  auto lane = [&](int64_t k, int j, uint32_t& bw, uint32_t& fw) {
    const T mem = lif_update<T, RST>(state[k], c[k], be[k], th[k]);
    state[k] = mem;
    const T u = mem - th[k];
    c[k] = u;
    const T sv = spike_value(u, g);
    s[k] = sv;
    bw |= in_band(u, bth) << j;
    fw |= static_cast<uint32_t>(sv != T(0)) << j;
  };
  for (int64_t w0 = 0; w0 < n; w0 += 32) {
    uint32_t bw = 0, fw = 0;
    if (n - w0 >= 32) {  // a whole word's lanes in one loop that vectorises
      for (int j = 0; j < 32; ++j) lane(w0 + j, j, bw, fw);
    } else {
      for (int j = 0; j < n - w0; ++j) lane(w0 + j, j, bw, fw);
    }
    band[w0 / 32] = bw;
    fire[w0 / 32] = fw;
  }
}

// What a thread keeps of its tile, batch entries [b0, b0 + nb) x columns [n0, n0 + n),
// across the blocks of rows: U of its nb x n neurons (`state`) with their beta and theta;
// and what it reads: the input by row.
template <typename T>
struct LifTile {
  const int64_t* rowptr;
  const int32_t* cols;
  const T* xv;     // nullptr: binary input
  const T* wt;     // weight_t, offset to column n0
  const T* bias;   // offset to n0, or nullptr
  int64_t n_out, n0, n, B, b0;
  T* state;
  const T* beta;
  const T* theta;
};

// Rows [r0, r1) of a thread's tile (one step's, or all rows when the tile spans the
// batch): per row the currents into `cur` (bias, then the
// weight rows of the row's input columns in ascending order, as add_events), the
// membranes, spikes (into spk) and the band / fire words of the row (`words` apart). Does
// not throw (SNN_VECTOR_CLONES): all buffers are allocated by the caller.
template <typename T, int64_t RST>
SNN_VECTOR_CLONES void lif_block(const LifTile<T>& p, T* cur, T* spk, int64_t r0, int64_t r1, T g,
                                 T bth, uint32_t* band, uint32_t* fire, int64_t words) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = (r % p.B - p.b0) * p.n, i = r - r0;
    T* __restrict o = cur + i * p.n;
    for (int64_t j = 0; j < p.n; ++j) o[j] = p.bias ? p.bias[j] : T(0);
    for (int64_t k = p.rowptr[r]; k < p.rowptr[r + 1]; ++k) {
      const T* __restrict w = p.wt + static_cast<int64_t>(p.cols[k]) * p.n_out;
      if (p.xv) {
        const T v = p.xv[k];
        for (int64_t j = 0; j < p.n; ++j) o[j] += v * w[j];
      } else {  // binary input: x = 1 exactly, skip the products
        for (int64_t j = 0; j < p.n; ++j) o[j] += w[j];
      }
    }
    lif_spike_row<T, RST>(o, p.state + b, p.beta + b, p.theta + b, spk + r * p.n_out + p.n0, p.n, g, bth,
                          band + i * words, fire + i * words);
  }
}

// What one thread records over its tile (batch entries [b0, b0 + nb), columns
// [n0, n0 + n)): its band entries in row-major order (column and u of each, and how many
// per row) and its spikes (row, column) in row order.
template <typename T>
struct LifPart {
  int64_t b0 = 0, nb = 0, n0 = 0, n = 0;
  std::vector<T> band_vals;
  std::vector<int32_t> band_cols, row_counts, fired_rows, fired_cols;
};

template <typename T, int64_t RST>
void lif_part(LifPart<T>& part, const int64_t* rowptr, const int32_t* cols, const T* xv, const T* wt,
              const T* bias, const T* mem0, const T* beta, const T* theta, T* spk, T* mem_last, int64_t R,
              int64_t B, int64_t n_out, T g, T bth) {
  const int64_t b0 = part.b0, nb = part.nb, n0 = part.n0, n = part.n, words = (n + 31) / 32;
  const int64_t block = std::max<int64_t>(1, kLifBlockBytes / (n * static_cast<int64_t>(sizeof(T))));
  std::vector<T> cur(block * n), state(nb * n), be(nb * n), th(nb * n);
  std::vector<uint32_t> band(block * words), fire(block * words);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t m = (b0 + b) * n_out + n0 + j;
      state[b * n + j] = mem0[m];
      be[b * n + j] = beta[m];
      th[b * n + j] = theta[m];
    }
  part.row_counts.assign(R, 0);
  const LifTile<T> p{rowptr, cols, xv, wt + n0, bias ? bias + n0 : nullptr, n_out, n0, n, B, b0,
                     state.data(), be.data(), th.data()};
  // The tile's rows: nb consecutive rows per step, or all R when it spans the batch.
  const bool whole = nb == B;
  const int64_t span = whole ? R : nb, spans = whole ? 1 : R / B;
  for (int64_t sp = 0; sp < spans; ++sp) {
    const int64_t first = sp * B + b0, end = first + span;  // whole: b0 = 0, one span
    for (int64_t r0 = first; r0 < end; r0 += block) {
      const int64_t r1 = std::min(end, r0 + block);
      lif_block<T, RST>(p, cur.data(), spk, r0, r1, g, bth, band.data(), fire.data(), words);
      for (int64_t r = r0; r < r1; ++r) {  // the lists (which allocate) outside the clones
        const int64_t i = r - r0;
        for (int64_t w = 0; w < words; ++w) {
          for (uint32_t word = band[i * words + w]; word; word &= word - 1) {
            const int64_t j = w * 32 + __builtin_ctz(word);
            part.band_vals.push_back(cur[i * n + j]);
            part.band_cols.push_back(static_cast<int32_t>(n0 + j));
            ++part.row_counts[r];
          }
          for (uint32_t word = fire[i * words + w]; word; word &= word - 1) {
            part.fired_rows.push_back(static_cast<int32_t>(r));
            part.fired_cols.push_back(static_cast<int32_t>(n0 + w * 32 + __builtin_ctz(word)));
          }
        }
      }
    }
  }
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t j = 0; j < n; ++j) mem_last[(b0 + b) * n_out + n0 + j] = state[b * n + j];
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_lif_events_cpu(
    const Tensor& colptr_in, const Tensor& rows_in, const Tensor& xvals_in, const Tensor& wt_in,
    const std::optional<Tensor>& bias_in, const Tensor& mem0_in, const Tensor& beta_in,
    const Tensor& theta_in, int64_t R, int64_t reset, double b_th, double gamma, double max_density) {
  constexpr const char* op = "linear_lif_events";
  const bool has_bias = check_events_args(colptr_in, rows_in, xvals_in, wt_in, bias_in, R, op);
  const int64_t n_in = wt_in.size(0), n_out = wt_in.size(1);
  TORCH_CHECK(n_out > 0, op, ": `weight_t` must have at least one output column, got shape ", wt_in.sizes());
  check_float(mem0_in, op, "mem0");
  const int64_t M = mem0_in.numel();
  TORCH_CHECK(mem0_in.dim() == 1 && M > 0 && M % n_out == 0, op, ": `mem0` must be [B * n_out] (one step ",
              "of B rows of ", n_out, " neurons), got shape ", mem0_in.sizes());
  const int64_t B = M / n_out;
  TORCH_CHECK(R > 0 && R % B == 0, op, ": `R` (", R, ") must be a whole number (>= 1) of steps of B = ", B,
              " rows");
  check_vec(mem0_in, wt_in, M, op, "mem0", "weight_t");
  check_vec(beta_in, wt_in, M, op, "beta", "weight_t");
  check_vec(theta_in, wt_in, M, op, "theta", "weight_t");
  check_reset(reset, op);
  check_b_th(b_th, op);
  TORCH_CHECK(std::isfinite(b_th), op, ": `b_th` must be finite (the compact band), got ", b_th);
  const Tensor colptr = colptr_in.contiguous(), rows = rows_in.contiguous(), xvals = xvals_in.contiguous();
  const int64_t* cp = colptr.const_data_ptr<int64_t>();
  const int32_t* rp = rows.const_data_ptr<int32_t>();
  check_rows_ascend(cp, rp, n_in, op);
  const Tensor wt = wt_in.contiguous(), mem0 = mem0_in.contiguous(), beta = beta_in.contiguous(),
               theta = theta_in.contiguous();
  const Tensor bias = has_bias ? bias_in->contiguous() : Tensor();
  const int64_t n = R * n_out;
  Tensor spk = empty_output({R, n_out}, wt.options());
  Tensor bits = zeros_output({(n + 31) / 32}, wt.options().dtype(at::kInt));
  Tensor mem_last = empty_output({M}, wt.options());
  Tensor vals, out_colptr, out_rows, out_xvals;
  // One tile per thread: batch entries split first (a thread then writes whole rows of
  // spikes; threads writing parts of the same rows slowed each other down: 2 threads took
  // longer than 1), then columns, at least 16 per part (a vector's worth per row).
  const int64_t threads = at::get_num_threads(), bparts = std::min(threads, B),
                cparts = std::max<int64_t>(1, std::min<int64_t>(threads / bparts, n_out / 16)),
                parts = bparts * cparts;
  AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "linear_lif_events_cpu", [&] {
    using T = scalar_t;
    std::vector<int64_t> rowptr;
    std::vector<int32_t> cols;
    std::vector<T> xv;
    csr_from_csc(cp, rp, xvals.numel() ? xvals.const_data_ptr<T>() : nullptr, n_in, R, rowptr, cols, xv);
    std::vector<LifPart<T>> part(parts);
    for (int64_t q = 0; q < parts; ++q) {  // ordered by batch entries, then columns
      const int64_t bq = q / cparts, cq = q % cparts;
      part[q].b0 = B * bq / bparts;
      part[q].nb = B * (bq + 1) / bparts - part[q].b0;
      part[q].n0 = n_out * cq / cparts;
      part[q].n = n_out * (cq + 1) / cparts - part[q].n0;
    }
    const T g = static_cast<T>(gamma), bth = static_cast<T>(b_th);
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        auto run = [&](auto kernel) {
          kernel(part[q], rowptr.data(), cols.data(), xv.empty() ? nullptr : xv.data(), wt.const_data_ptr<T>(),
                 has_bias ? bias.const_data_ptr<T>() : nullptr, mem0.const_data_ptr<T>(),
                 beta.const_data_ptr<T>(), theta.const_data_ptr<T>(), spk.mutable_data_ptr<T>(),
                 mem_last.mutable_data_ptr<T>(), R, B, n_out, g, bth);
        };
        if (reset == SUBTRACT) run(lif_part<T, SUBTRACT>);
        else if (reset == ZERO) run(lif_part<T, ZERO>);
        else run(lif_part<T, NONE>);
      }
    });
    // The band, row by row: a row's parts are consecutive, their columns ascending.
    int64_t nnz = 0, fired = 0;
    for (const auto& pt : part) {
      nnz += static_cast<int64_t>(pt.band_vals.size());
      fired += static_cast<int64_t>(pt.fired_rows.size());
    }
    vals = empty_output({nnz}, wt.options());
    T* vp = vals.mutable_data_ptr<T>();
    uint32_t* bp = reinterpret_cast<uint32_t*>(bits.mutable_data_ptr<int32_t>());
    std::vector<int64_t> at_entry(parts, 0);
    int64_t o = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t q = 0; q < parts; ++q)
        for (int32_t e = 0; e < part[q].row_counts[r]; ++e, ++o) {
          const int64_t k = r * n_out + part[q].band_cols[at_entry[q]];
          bp[k >> 5] |= 1u << (k & 31);
          vp[o] = part[q].band_vals[at_entry[q]++];
        }
    // The spikes by column (each part lists its columns' rows in ascending order).
    if (static_cast<double>(fired) > max_density * static_cast<double>(n)) {  // as nonzero_csc
      out_colptr = empty_output({0}, wt.options().dtype(at::kLong));
      out_rows = empty_output({0}, wt.options().dtype(at::kInt));
      out_xvals = empty_output({0}, wt.options());
      return;
    }
    out_colptr = zeros_output({n_out + 1}, wt.options().dtype(at::kLong));
    int64_t* ocp = out_colptr.mutable_data_ptr<int64_t>();
    for (const auto& pt : part)
      for (int32_t c : pt.fired_cols) ++ocp[c + 1];
    for (int64_t c = 0; c < n_out; ++c) ocp[c + 1] += ocp[c];
    out_rows = empty_output({fired}, wt.options().dtype(at::kInt));
    int32_t* orp = out_rows.mutable_data_ptr<int32_t>();
    std::vector<int64_t> fill(ocp, ocp + n_out);
    std::vector<size_t> at_fired(parts, 0);
    // Rows ascend within a part's list; step by step, the parts in order of their batch
    // entries, so that rows ascend within each column.
    for (int64_t t = 0; t < R / B; ++t)
      for (int64_t q = 0; q < parts; ++q) {
        const auto& pt = part[q];
        const int64_t end = t * B + pt.b0 + pt.nb;  // past the part's rows of step t
        for (size_t& e = at_fired[q]; e < pt.fired_rows.size() && pt.fired_rows[e] < end; ++e)
          orp[fill[pt.fired_cols[e]]++] = pt.fired_rows[e];
      }
    out_xvals = g == T(1) ? empty_output({0}, wt.options()) : at::full({fired}, g, wt.options());
  });
  return {spk, bits, vals, mem_last, out_colptr, out_rows, out_xvals};
}

// ---------------------------------------------------------------- linear_lif_bwd
// A hidden layer's backward in one sweep back in time, for a compact input and a band-
// limited input gradient: the reverse scan of lif_bwd_band, and at each row (t, b), as soon
// as its Delta row is known, that row's terms of dW (dw_spikes: Delta[r] added to the weight
// row of each input nonzero of row r), of the bias and of the masked input gradient
// (dx_masked) — so Delta [T*B, n_out] is never stored. Threads own batch entries b (a
// Delta row needs all its neurons), each summing dW into its own buffer.

// Batch entries [b0, b1) through all steps, backwards; `carry` [B * n_out] (or nullptr):
// the gradient reaching the last membranes from later steps. `dnext`: Delta of the part's rows
// at the step after (B1 x n_out), `ebuf`: n_out scratch; `dwt` [n_in, n_out] and `db`
// [n_out] accumulate (zeroed by the caller). Does not throw (SNN_VECTOR_CLONES).
template <typename T, typename Eps>
SNN_VECTOR_CLONES void lif_bwd_part(const Eps& eps, const T* carry, const T* beta, const int64_t* rowptr,
                                    const int32_t* cols,
                                    const T* xv, const T* wt, const int32_t* up_bits, T* dx, T* dwt, T* db,
                                    T* dmem0, T* dnext, T* ebuf, int64_t steps, int64_t B, int64_t n_in,
                                    int64_t n_out, int64_t b0, int64_t b1) {
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = t * B + b;
      const T* __restrict e = eps.row(t, b * n_out, n_out, ebuf);
      const T* __restrict be = beta + b * n_out;
      T* __restrict d = dnext + (b - b0) * n_out;
      // as lif_bwd_block: at the last step e + carry (a[T]*Delta[T] from later steps) or
      // "+ 0" (it turns -0 into +0), then e + a * next
      if (t == steps - 1) {
        const T* __restrict c = carry ? carry + b * n_out : nullptr;
        for (int64_t j = 0; j < n_out; ++j) d[j] = e[j] + (c ? c[j] : T(0));
      } else {
        for (int64_t j = 0; j < n_out; ++j) d[j] = e[j] + be[j] * d[j];
      }
      for (int64_t k = rowptr[r]; k < rowptr[r + 1]; ++k) {
        T* __restrict w = dwt + static_cast<int64_t>(cols[k]) * n_out;
        if (xv) {
          const T v = xv[k];
          for (int64_t j = 0; j < n_out; ++j) w[j] += v * d[j];
        } else {
          for (int64_t j = 0; j < n_out; ++j) w[j] += d[j];
        }
      }
      if (db) for (int64_t j = 0; j < n_out; ++j) db[j] += d[j];
      if (dx) dx_masked_row(d, wt, up_bits, dx, r, n_in, n_out);
    }
  }
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t j = 0; j < n_out; ++j) dmem0[b * n_out + j] = beta[b * n_out + j] * dnext[(b - b0) * n_out + j];
}

// Partial dW buffers of the threads together stay below this.
constexpr int64_t kPartialDwBytes = int64_t(64) << 20;

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_lif_bwd_cpu(
    const Tensor& grad_in, const Tensor& bits_in, const Tensor& vals_in,
    const std::optional<Tensor>& dmem_last_in, const Tensor& beta_in,
    const Tensor& colptr_in, const Tensor& rows_in, const Tensor& xvals_in, const Tensor& wt_in,
    const Tensor& up_bits_in, int64_t shape, double p, double gamma, bool need_x, bool need_b) {
  constexpr const char* op = "linear_lif_bwd";
  check_float(grad_in, op, "grad_spk");
  TORCH_CHECK(grad_in.dim() == 2, op, ": `grad_spk` must have shape [T, M], got ", grad_in.sizes());
  std::vector<int64_t> offs;
  check_band(grad_in, bits_in, vals_in, shape, op, offs, "grad_spk");
  TORCH_CHECK(bits_in.numel() > 0 || grad_in.numel() == 0, op, ": `bits` must hold the band (a finite b_th)");
  check_float(wt_in, op, "weight_t");
  TORCH_CHECK(wt_in.scalar_type() == grad_in.scalar_type(), op, ": `weight_t` must have the dtype of `grad_spk` (",
              grad_in.scalar_type(), "), got ", wt_in.scalar_type());
  TORCH_CHECK(wt_in.dim() == 2 && wt_in.size(1) > 0, op, ": `weight_t` must be 2-D [n_in, n_out], got shape ",
              wt_in.sizes());
  const int64_t n_in = wt_in.size(0), n_out = wt_in.size(1), steps = grad_in.size(0), M = grad_in.size(1);
  TORCH_CHECK(M > 0 && M % n_out == 0, op, ": `grad_spk` [T, M] must have M = B * n_out (n_out = ", n_out,
              "), got shape ", grad_in.sizes());
  const int64_t B = M / n_out, R = steps * B;
  check_vec(beta_in, grad_in, M, op, "beta", "grad_spk");
  const bool has_carry = dmem_last_in.has_value() && dmem_last_in->defined();
  if (has_carry) check_vec(*dmem_last_in, grad_in, M, op, "dmem_last", "grad_spk");
  check_compressed(colptr_in, rows_in, n_in, R, op, "colptr", "rows");
  check_xvals(xvals_in, grad_in, rows_in.numel(), op, "grad_spk");
  if (need_x) {
    check_index(up_bits_in, at::kInt, op, "up_bits");
    TORCH_CHECK(up_bits_in.numel() == (R * n_in + 31) / 32, op, ": `up_bits` must have ceil(R*n_in/32) = ",
                (R * n_in + 31) / 32, " words, got ", up_bits_in.numel());
  }
  const Tensor grad = grad_in.contiguous(), bits = bits_in.contiguous(), vals = vals_in.contiguous(),
               beta = beta_in.contiguous(), colptr = colptr_in.contiguous(), rows = rows_in.contiguous(),
               xvals = xvals_in.contiguous(), wt = wt_in.contiguous(),
               up_bits = need_x ? up_bits_in.contiguous() : up_bits_in,
               carry = has_carry ? dmem_last_in->contiguous() : Tensor();
  // csr_from_csc walks each column in row order
  check_rows_ascend(colptr.const_data_ptr<int64_t>(), rows.const_data_ptr<int32_t>(), n_in, op);
  Tensor dwt = zeros_output({n_in, n_out}, grad.options());
  Tensor db = need_b ? zeros_output({n_out}, grad.options()) : at::empty({0}, grad.options());
  Tensor dx = need_x ? empty_output({R, n_in}, grad.options()) : at::empty({0}, grad.options());
  Tensor dmem0 = empty_output({M}, grad.options());
  const int64_t per_part = n_in * n_out * static_cast<int64_t>(grad.element_size());
  const int64_t parts = std::max<int64_t>(
      1, std::min({static_cast<int64_t>(at::get_num_threads()), B, kPartialDwBytes / std::max<int64_t>(per_part, 1)}));
  const Tensor expu = band_exp(vals, shape, p);
  const int64_t words = bits.numel();
  const std::vector<int64_t> woff =
      words ? word_offsets(bits.const_data_ptr<int32_t>(), words, grad.numel(), offs) : std::vector<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "linear_lif_bwd_cpu", [&] {
    using T = scalar_t;
    std::vector<int64_t> rowptr;
    std::vector<int32_t> cols;
    std::vector<T> xv;
    csr_from_csc(colptr.const_data_ptr<int64_t>(), rows.const_data_ptr<int32_t>(),
                 xvals.numel() ? xvals.const_data_ptr<T>() : nullptr, n_in, R, rowptr, cols, xv);
    // Part 0 sums into the outputs, the others into buffers added afterwards.
    std::vector<std::vector<T>> dw_part(parts - 1, std::vector<T>(n_in * n_out, T(0)));
    std::vector<std::vector<T>> db_part(parts - 1, std::vector<T>(need_b ? n_out : 0, T(0)));
    std::vector<std::vector<T>> dnext(parts), ebuf(parts);
    for (int64_t q = 0; q < parts; ++q) {
      const int64_t nb = B * (q + 1) / parts - B * q / parts;
      dnext[q].assign(nb * n_out, T(0));
      ebuf[q].assign(n_out, T(0));
    }
    with_shape(shape, [&](auto s) {
      constexpr int64_t S = decltype(s)::value;
      const BandSurrogate<T, S> sg{grad.const_data_ptr<T>(), vals.const_data_ptr<T>(),
                                   expu.defined() ? expu.const_data_ptr<T>() : nullptr, p, static_cast<T>(gamma)};
      const BandEps<T, S> eps{sg, bits.const_data_ptr<int32_t>(), woff.data(), nullptr, M};
      at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q)
          lif_bwd_part<T>(eps, has_carry ? carry.const_data_ptr<T>() : nullptr, beta.const_data_ptr<T>(), rowptr.data(), cols.data(), xv.empty() ? nullptr : xv.data(),
                          wt.const_data_ptr<T>(), need_x ? up_bits.const_data_ptr<int32_t>() : nullptr,
                          need_x ? dx.mutable_data_ptr<T>() : nullptr,
                          q ? dw_part[q - 1].data() : dwt.mutable_data_ptr<T>(),
                          need_b ? (q ? db_part[q - 1].data() : db.mutable_data_ptr<T>()) : nullptr,
                          dmem0.mutable_data_ptr<T>(), dnext[q].data(), ebuf[q].data(), steps, B, n_in, n_out,
                          B * q / parts, B * (q + 1) / parts);
      });
    });
    T* dwp = dwt.mutable_data_ptr<T>();
    for (const auto& part : dw_part)
      for (int64_t k = 0; k < n_in * n_out; ++k) dwp[k] += part[k];
    if (need_b)
      for (const auto& part : db_part)
        for (int64_t j = 0; j < n_out; ++j) db.mutable_data_ptr<T>()[j] += part[j];
  });
  return {dwt, db, dx, dmem0};
}

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("dw_spikes", &dw_spikes_cpu);
  m.impl("dw_trace", &dw_trace_cpu);
  m.impl("dw_trace_dense", &dw_trace_dense_cpu);
  m.impl("dx_masked", &dx_masked_cpu);
  m.impl("linear_fwd_events", &linear_fwd_events_cpu);
  m.impl("linear_lif_events", &linear_lif_events_cpu);
  m.impl("linear_lif_bwd", &linear_lif_bwd_cpu);
}

}  // namespace snntorch_sparse
