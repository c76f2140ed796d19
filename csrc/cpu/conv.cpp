// CPU kernels of the 2-D convolution's sparse gradients, `conv_dw_spikes` and `conv_dx_masked`,
// and of its event-driven forward, `conv_fwd_events` (math: the functions of the same names in
// reference.py).
//
// Both read delta channels-last ([Ho, Wo, C_out] per sample: in place when it comes so, as the
// event-driven forward's currents' gradient does, else transposed a sample at a time) and
// the weight as
// [C_in/groups, kH, kW, C_out], so that the innermost loop runs over the contiguous output
// channels of a group. No atomics: a weight-gradient task accumulates into its own buffer
// (summed at the end), and each sample's input gradient belongs to one thread.
// The workers do not throw (see SNN_VECTOR_CLONES): inputs are checked, and scratch
// allocated, before they run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/alloc.h"
#include "common.h"
#include "conv_geometry.h"
#include "cpu/checks.h"
#include "cpu/sparse_args.h"
#include "sizes.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// The kernel taps of each input row (or column) y: the pairs (k, o) with o = (y + p - k*d)/s
// integral and in [0, out), k ascending. Found once per call, so that no division by the
// stride runs per input element.
struct AxisTaps {
  std::vector<int64_t> start, k, o;  // the pairs of y: [start[y], start[y + 1])

  AxisTaps(int64_t n, int64_t kn, int64_t s, int64_t p, int64_t d, int64_t out) : start(n + 1, 0) {
    for (int64_t y = 0; y < n; ++y) {
      for (int64_t ki = 0; ki < kn; ++ki) {
        const int64_t t = y + p - ki * d;
        if (t < 0 || t % s != 0 || t / s >= out) continue;
        k.push_back(ki);
        o.push_back(t / s);
      }
      start[y + 1] = static_cast<int64_t>(k.size());
    }
  }
};

struct Taps {
  AxisTaps rows, cols;
  explicit Taps(const ConvGeometry& g)
      : rows(g.H, g.kH, g.sH, g.pH, g.dH, g.Ho), cols(g.W, g.kW, g.sW, g.pW, g.dW, g.Wo) {}
};

// The kernel taps that connect input position (y, x) to an output position: writes
// tap = ky*kW + kx and pos = oy*Wo + ox of each (kH*kW entries at most, ky then kx
// ascending) and returns their count.
inline int64_t taps_of(const ConvGeometry& g, const Taps& tt, int64_t y, int64_t x, int64_t* tap,
                       int64_t* pos) {
  int64_t n = 0;
  for (int64_t a = tt.rows.start[y]; a < tt.rows.start[y + 1]; ++a) {
    for (int64_t b = tt.cols.start[x]; b < tt.cols.start[x + 1]; ++b) {
      tap[n] = tt.rows.k[a] * g.kW + tt.cols.k[b];
      pos[n] = tt.rows.o[a] * g.Wo + tt.cols.o[b];
      ++n;
    }
  }
  return n;
}

// ------------------------------------------------------------------- conv_dw_spikes
// The samples are cut into one range per thread, each with its own accumulator (summed at the
// end), so a thread reads only its samples' delta. When there are fewer samples than threads,
// the channels are cut as well (their accumulator slices are disjoint). A task sweeps its
// samples in tiles of this many bytes of delta, transposed into a cache-resident buffer that
// all its channels then read.
constexpr int64_t kTileBytes = 512 << 10;

// Output channels summed at a time in registers by conv_dx_rows (two AVX2 or one AVX-512
// register of float32).
constexpr int64_t kLanes = 16;

// Sample r of delta channels-last ([Ho*Wo, C_out]): in place when delta is laid out so
// (`cl`: the event-driven currents' gradient), else transposed into `scratch`.
template <typename T>
const T* sample_channels_last(const T* delta, bool cl, const ConvGeometry& g, int64_t r,
                              T* scratch) {
  const T* d = delta + r * g.out_sample;
  if (cl) return d;
  const int64_t HoWo = g.Ho * g.Wo;
  for (int64_t o = 0; o < g.C_out; ++o)
    for (int64_t p = 0; p < HoWo; ++p) scratch[p * g.C_out + o] = d[o * HoWo + p];
  return scratch;
}

// delta as the kernels take it: as is when channels-last or contiguous (`cl` says which).
inline Tensor delta_arg(const Tensor& delta_in, bool& cl) {
  cl = !delta_in.is_contiguous() && delta_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  return cl ? delta_in : delta_in.contiguous();
}

// Task (samples [r0, r1), channels [c0, c1)) of conv_dw_spikes: acc[c, tap, o] (o over c's
// group) += x * delta[r, pos, o] (channels-last) over the nonzeros (r, c, y, x) and the taps
// (tap, pos) of (y, x), walking the samples tile_rows at a time so that a tile of delta stays
// in cache. Scratch: tile (tile_rows samples, used unless `cl`), next (one entry per input
// column), tap and pos (kH*kW).
template <typename T>
SNN_VECTOR_CLONES void conv_dw_task(const T* delta, bool cl, const int64_t* colptr,
                                    const int32_t* rows, const T* xvals, const ConvGeometry& g,
                                    const Taps& tt, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                    int64_t tile_rows, T* acc, T* tile, int64_t* next,
                                    int64_t* tap, int64_t* pos) {
  const int64_t K = g.kH * g.kW, n = g.cout_g, HW = g.H * g.W;
  // Rows ascend within a column: skip those of earlier tasks' samples.
  for (int64_t i = c0 * HW; i < c1 * HW; ++i)
    next[i] = std::lower_bound(rows + colptr[i], rows + colptr[i + 1], r0) - rows;
  for (int64_t t0 = r0; t0 < r1; t0 += tile_rows) {
    const int64_t t1 = std::min(r1, t0 + tile_rows);
    if (!cl)
      for (int64_t r = t0; r < t1; ++r)
        sample_channels_last(delta, cl, g, r, tile + (r - t0) * g.out_sample);
    const T* tile_cl = cl ? delta + t0 * g.out_sample : tile;
    for (int64_t c = c0; c < c1; ++c) {
      const T* group_tile = tile_cl + c / g.cin_g * n;
      T* acc_c = acc + c * K * n;
      for (int64_t y = 0; y < g.H; ++y) {
        for (int64_t x = 0; x < g.W; ++x) {
          const int64_t i = (c * g.H + y) * g.W + x, end = colptr[i + 1];
          int64_t k = next[i];
          if (k == end || rows[k] >= t1) continue;
          const int64_t nt = taps_of(g, tt, y, x, tap, pos);
          for (; k < end && rows[k] < t1; ++k) {
            const T v = xvals ? xvals[k] : T(1);
            const T* d = group_tile + (rows[k] - t0) * g.out_sample;
            for (int64_t j = 0; j < nt; ++j) {
              T* __restrict a = acc_c + tap[j] * n;
              const T* __restrict s = d + pos[j] * g.C_out;
              for (int64_t o = 0; o < n; ++o) a[o] += v * s[o];
            }
          }
          next[i] = k;
        }
      }
    }
  }
}

Tensor conv_dw_spikes_cpu(const Tensor& delta_in, const Tensor& colptr, const Tensor& rows,
                          const Tensor& xvals_in, at::IntArrayRef in_shape, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          int64_t groups) {
  constexpr const char* op = "conv_dw_spikes";
  check_float(delta_in, op, "delta");
  const ConvGeometry g =
      conv_geometry(delta_in.sizes(), in_shape, kernel, stride, padding, dilation, groups, op);
  check_compressed(colptr, rows, g.chw, g.R, op, "colptr", "rows");
  check_xvals(xvals_in, delta_in, rows.numel(), op, "delta");
  const Tensor cp = colptr.contiguous(), rw = rows.contiguous(), xvals = xvals_in.contiguous();
  const int64_t* pp = cp.const_data_ptr<int64_t>();
  const int32_t* rr = rw.const_data_ptr<int32_t>();
  for (int64_t i = 0; i < g.chw; ++i)  // the tasks find their samples by binary search
    for (int64_t k = pp[i] + 1; k < pp[i + 1]; ++k)
      TORCH_CHECK(rr[k - 1] <= rr[k], op, ": `rows` must be ascending within each column (as ",
                  "nonzero_csc gives them), column ", i, " is not");
  if (g.weight_numel == 0 || rows.numel() == 0)
    return zeros_output({g.C_out, g.cin_g, g.kH, g.kW}, delta_in.options());
  bool cl;
  const Tensor delta = delta_arg(delta_in, cl);
  const int64_t threads = at::get_num_threads();
  const int64_t n_r = std::min(g.R, threads);
  const int64_t n_c = std::min(g.C_in, (threads + n_r - 1) / n_r);
  const int64_t tile_rows = std::max<int64_t>(1, kTileBytes / (g.out_sample * delta.element_size()));
  // acc[task's sample range, c, tap, o]: o innermost; summed and permuted at the end.
  Tensor acc = zeros_output({n_r, g.groups, g.cin_g, g.kH, g.kW, g.cout_g}, delta.options());
  const int64_t K = g.kH * g.kW;
  const Taps tt(g);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "conv_dw_spikes_cpu", [&] {
    const scalar_t* xv = xvals.numel() ? xvals.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n_r * n_c, 1, [&](int64_t j0, int64_t j1) {
      std::vector<scalar_t> tile(cl ? 0 : std::min(tile_rows, g.R) * g.out_sample);
      std::vector<int64_t> next(g.chw), tap(K), pos(K);
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t jr = j / n_c, jc = j % n_c;
        conv_dw_task<scalar_t>(delta.const_data_ptr<scalar_t>(), cl, pp, rr, xv, g, tt,
                               g.R * jr / n_r, g.R * (jr + 1) / n_r, g.C_in * jc / n_c,
                               g.C_in * (jc + 1) / n_c, tile_rows,
                               acc.mutable_data_ptr<scalar_t>() + jr * g.weight_numel, tile.data(),
                               next.data(), tap.data(), pos.data());
      }
    });
  });
  // [groups, cin_g, kH, kW, cout_g] -> [groups*cout_g, cin_g, kH, kW]
  return acc.sum(0).permute({0, 4, 1, 2, 3}).reshape({g.C_out, g.cin_g, g.kH, g.kW});
}

// ------------------------------------------------------------------- conv_dx_masked
// Samples [r0, r1) of conv_dx_masked: for each set bit (c, y, x) of a sample, the dot product
// of the group's delta and weight over the taps and output channels; zeros elsewhere. A
// sample with a set bit reads its delta channels-last ([Ho*Wo, C_out]: in place when `cl`,
// else transposed once into row_t), which makes the loop over o contiguous in both
// operands. weight_t: the weight as [cin_g, kH*kW, C_out]. Scratch: row_t (unless `cl`),
// sums (cout_g), tap and pos (kH*kW).
template <typename T>
SNN_VECTOR_CLONES void conv_dx_rows(const T* delta, bool cl, const T* weight_t, const int32_t* bits,
                                    const ConvGeometry& g, const Taps& tt, int64_t r0, int64_t r1, T* out,
                                    T* row_t, T* sums, int64_t* tap, int64_t* pos) {
  const int64_t K = g.kH * g.kW, n = g.cout_g, HW = g.H * g.W;
  for (int64_t r = r0; r < r1; ++r) {
    T* o_row = out + r * g.chw;
    std::fill(o_row, o_row + g.chw, T(0));
    const T* d_cl = nullptr;  // sample r channels-last, once a set bit needs it
    const int64_t k0 = r * g.chw, k1 = k0 + g.chw;
    const int64_t w0 = k0 >> 5, w1 = (k1 + 31) >> 5;
    for (int64_t w = w0; w < w1; ++w) {
      // Keep the bits of this word that belong to sample r.
      const int64_t lo = std::max<int64_t>(k0 - w * 32, 0), hi = std::min<int64_t>(k1 - w * 32, 32);
      const uint32_t mask = (hi == 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u);
      uint32_t word = static_cast<uint32_t>(bits[w]) & mask;
      if (word && !d_cl) d_cl = sample_channels_last(delta, cl, g, r, row_t);
      for (; word; word &= word - 1) {
        const int64_t i = w * 32 + __builtin_ctz(word) - k0;
        const int64_t c = i / HW, y = (i % HW) / g.W, x = i % g.W;
        const int64_t grp = c / g.cin_g;
        const int64_t nt = taps_of(g, tt, y, x, tap, pos);
        const T* wc = weight_t + (c % g.cin_g) * K * g.C_out + grp * n;
        const T* dg = d_cl + grp * n;
        // Per-channel partial sums across the taps, reduced once: the tap loop is then
        // plain vertical vector arithmetic, kLanes channels at a time in registers.
        for (int64_t o0 = 0; o0 < n; o0 += kLanes) {
          if (n - o0 >= kLanes) {
            T acc[kLanes] = {};
            for (int64_t t = 0; t < nt; ++t) {
              const T* __restrict wv = wc + tap[t] * g.C_out + o0;
              const T* __restrict dv = dg + pos[t] * g.C_out + o0;
              for (int64_t j = 0; j < kLanes; ++j) acc[j] += dv[j] * wv[j];
            }
            std::copy(acc, acc + kLanes, sums + o0);
          } else {
            std::fill(sums + o0, sums + n, T(0));
            for (int64_t t = 0; t < nt; ++t) {
              const T* __restrict wv = wc + tap[t] * g.C_out;
              const T* __restrict dv = dg + pos[t] * g.C_out;
              for (int64_t o = o0; o < n; ++o) sums[o] += dv[o] * wv[o];
            }
          }
        }
        T s = 0;
        for (int64_t o = 0; o < n; ++o) s += sums[o];
        o_row[i] = s;
      }
    }
  }
}

Tensor conv_dx_masked_cpu(const Tensor& delta_in, const Tensor& weight_in, const Tensor& bits_in,
                          at::IntArrayRef in_shape, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "conv_dx_masked";
  check_float(delta_in, op, "delta");
  check_float(weight_in, op, "weight");
  TORCH_CHECK(weight_in.scalar_type() == delta_in.scalar_type(), op,
              ": `weight` must have the dtype of `delta` (", delta_in.scalar_type(), "), got ",
              weight_in.scalar_type());
  TORCH_CHECK(weight_in.dim() == 4, op, ": `weight` must be 4-D [C_out, C_in/groups, kH, kW], got shape ",
              weight_in.sizes());
  const ConvGeometry g = conv_geometry(delta_in.sizes(), in_shape, weight_in.sizes().slice(2), stride,
                                       padding, dilation, groups, op);
  TORCH_CHECK(weight_in.size(0) == g.C_out && weight_in.size(1) == g.cin_g, op,
              ": `weight` must be [C_out, C_in/groups, kH, kW] = [", g.C_out, ", ", g.cin_g, ", ", g.kH,
              ", ", g.kW, "], got shape ", weight_in.sizes());
  check_index(bits_in, at::kInt, op, "bits");
  const int64_t words = g.in_numel / 32 + (g.in_numel % 32 != 0);
  TORCH_CHECK(bits_in.numel() == words, op, ": `bits` must have ceil(R*C_in*H*W/32) = ", words,
              " words, got ", bits_in.numel());
  Tensor out = empty_output({g.R, g.C_in, g.H, g.W}, delta_in.options());
  if (g.in_numel == 0) return out;
  bool cl;
  const Tensor delta = delta_arg(delta_in, cl);
  const Tensor bits = bits_in.contiguous();
  const Tensor weight_t = weight_in.permute({1, 2, 3, 0}).contiguous();
  const int64_t K = g.kH * g.kW;
  const Taps tt(g);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "conv_dx_masked_cpu", [&] {
    at::parallel_for(0, g.R, 1, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> row_t(cl ? 0 : g.out_sample), sums(g.cout_g);
      std::vector<int64_t> tap(K), pos(K);
      conv_dx_rows<scalar_t>(delta.const_data_ptr<scalar_t>(), cl, weight_t.const_data_ptr<scalar_t>(),
                             bits.const_data_ptr<int32_t>(), g, tt, r0, r1, out.mutable_data_ptr<scalar_t>(),
                             row_t.data(), sums.data(), tap.data(), pos.data());
    });
  });
  return out;
}

// ------------------------------------------------------------------ conv_fwd_events
// Samples [r0, r1) of conv_fwd_events, into `out` laid out channels-last: a sample's block
// is [Ho*Wo, C_out], so that a tap adds one contiguous run of the group's output channels.
// It starts at the bias; every nonzero (c, y, x) of the sample adds x * weight_t[c mod
// cin_g, tap, group's o] at each of its taps. Zeros cost one comparison.
template <typename T>
SNN_VECTOR_CLONES void conv_fwd_rows(const T* x, const T* weight_t, const T* bias,
                                     const ConvGeometry& g, const Taps& tt, int64_t r0, int64_t r1,
                                     T* out, int64_t* tap, int64_t* pos) {
  const int64_t n = g.cout_g, HoWo = g.Ho * g.Wo;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * g.chw;
    T* acc = out + r * g.out_sample;
    for (int64_t p = 0; p < HoWo; ++p)
      for (int64_t o = 0; o < g.C_out; ++o) acc[p * g.C_out + o] = bias ? bias[o] : T(0);
    for (int64_t c = 0; c < g.C_in; ++c) {
      const T* wc = weight_t + (c % g.cin_g) * g.kH * g.kW * g.C_out + c / g.cin_g * n;
      T* ac = acc + c / g.cin_g * n;
      for (int64_t y = 0; y < g.H; ++y) {
        const T* xrow = xr + (c * g.H + y) * g.W;
        for (int64_t xx = 0; xx < g.W; ++xx) {
          const T v = xrow[xx];
          if (v == T(0)) continue;
          const int64_t nt = taps_of(g, tt, y, xx, tap, pos);
          for (int64_t t = 0; t < nt; ++t) {
            T* __restrict a = ac + pos[t] * g.C_out;
            const T* __restrict w = wc + tap[t] * g.C_out;
            for (int64_t o = 0; o < n; ++o) a[o] += v * w[o];
          }
        }
      }
    }
  }
}

Tensor conv_fwd_events_cpu(const Tensor& x_in, const Tensor& weight_in,
                           const std::optional<Tensor>& bias_in, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "conv_fwd_events";
  check_float(x_in, op, "x");
  check_float(weight_in, op, "weight");
  TORCH_CHECK(x_in.dim() == 4, op, ": `x` must be 4-D [R, C_in, H, W], got shape ", x_in.sizes());
  TORCH_CHECK(weight_in.dim() == 4, op, ": `weight` must be 4-D [C_out, C_in/groups, kH, kW], got shape ",
              weight_in.sizes());
  TORCH_CHECK(weight_in.scalar_type() == x_in.scalar_type(), op, ": `weight` must have the dtype of `x` (",
              x_in.scalar_type(), "), got ", weight_in.scalar_type());
  const ConvGeometry g =
      conv_geometry_of_input(x_in.sizes(), weight_in.sizes(), stride, padding, dilation, groups, op);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  if (has_bias) {
    check_float(*bias_in, op, "bias");
    TORCH_CHECK(bias_in->scalar_type() == x_in.scalar_type() && bias_in->dim() == 1 &&
                    bias_in->size(0) == g.C_out,
                op, ": `bias` must be [C_out] = [", g.C_out, "] of the dtype of `x` (",
                x_in.scalar_type(), "), got ", bias_in->scalar_type(), " of shape ", bias_in->sizes());
  }
  // Channels-last: the layout the sums are formed in (no transpose), and the one in which
  // a following max pooling and the backward's kernels read it fastest.
  Tensor out = empty_output({g.R, g.C_out, g.Ho, g.Wo},
                         x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const Tensor x = x_in.contiguous();
  const Tensor weight_t = weight_in.permute({1, 2, 3, 0}).contiguous();
  const Tensor bias = has_bias ? bias_in->contiguous() : Tensor();
  const int64_t K = g.kH * g.kW;
  const Taps tt(g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_fwd_events_cpu", [&] {
    at::parallel_for(0, g.R, 1, [&](int64_t r0, int64_t r1) {
      std::vector<int64_t> tap(K), pos(K);
      conv_fwd_rows<scalar_t>(x.const_data_ptr<scalar_t>(), weight_t.const_data_ptr<scalar_t>(),
                              has_bias ? bias.const_data_ptr<scalar_t>() : nullptr, g, tt, r0, r1,
                              out.mutable_data_ptr<scalar_t>(), tap.data(), pos.data());
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("conv_dw_spikes", &conv_dw_spikes_cpu);
  m.impl("conv_dx_masked", &conv_dx_masked_cpu);
  m.impl("conv_fwd_events", &conv_fwd_events_cpu);
}

}  // namespace snntorch_sparse
