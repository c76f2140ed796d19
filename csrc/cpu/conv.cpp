// CPU kernels of the 2-D convolution's sparse gradients: `conv_dw_spikes` and `conv_dx_masked`
// (math: the functions of the same names in reference.py).
//
// Both read delta channels-last ([Ho, Wo, C_out] per sample) and the weight as
// [C_in/groups, kH, kW, C_out], so that the innermost loop runs over the contiguous output
// channels of a group. Every output element belongs to one thread (input channel c for the
// weight gradient, sample r for the input gradient): no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "conv_geometry.h"
#include "cpu/checks.h"
#include "cpu/sparse_args.h"
#include "sizes.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// The kernel taps that connect input position (y, x) to an output position: (ky, kx) with
// oy = (y + pH - ky*dH)/sH integral and in [0, Ho), likewise ox. Writes tap = ky*kW + kx and
// pos = oy*Wo + ox of each (kH*kW entries at most) and returns their count.
inline int64_t taps_of(const ConvGeometry& g, int64_t y, int64_t x, int64_t* tap, int64_t* pos) {
  int64_t n = 0;
  for (int64_t ky = 0; ky < g.kH; ++ky) {
    const int64_t ty = y + g.pH - ky * g.dH;
    if (ty < 0 || ty % g.sH != 0 || ty / g.sH >= g.Ho) continue;
    for (int64_t kx = 0; kx < g.kW; ++kx) {
      const int64_t tx = x + g.pW - kx * g.dW;
      if (tx < 0 || tx % g.sW != 0 || tx / g.sW >= g.Wo) continue;
      tap[n] = ky * g.kW + kx;
      pos[n] = (ty / g.sH) * g.Wo + tx / g.sW;
      ++n;
    }
  }
  return n;
}

// ------------------------------------------------------------------- conv_dw_spikes
// Input channel c of conv_dw_spikes: acc[tap, o] (o over the group's output channels) sums
// x * delta_t[r, pos, o] over the channel's nonzeros and their taps, then lands in
// out[o, c mod cin_g, tap], which no other channel writes.
// delta_t: delta as [R, Ho*Wo, C_out]. Scratch: acc (kH*kW*cout_g), tap and pos (kH*kW).
template <typename T>
SNN_VECTOR_CLONES void conv_dw_channel(const T* delta_t, const int64_t* colptr, const int32_t* rows,
                                       const T* xvals, const ConvGeometry& g, int64_t c, T* out,
                                       T* acc, int64_t* tap, int64_t* pos) {
  const int64_t K = g.kH * g.kW, n = g.cout_g, grp = c / g.cin_g;
  std::fill(acc, acc + K * n, T(0));
  const T* group_delta = delta_t + grp * n;
  for (int64_t y = 0; y < g.H; ++y) {
    for (int64_t x = 0; x < g.W; ++x) {
      const int64_t i = (c * g.H + y) * g.W + x;
      if (colptr[i] == colptr[i + 1]) continue;
      const int64_t nt = taps_of(g, y, x, tap, pos);
      for (int64_t k = colptr[i]; k < colptr[i + 1]; ++k) {
        const T v = xvals ? xvals[k] : T(1);
        const T* d = group_delta + rows[k] * g.out_sample;
        for (int64_t t = 0; t < nt; ++t) {
          T* __restrict a = acc + tap[t] * n;
          const T* __restrict s = d + pos[t] * g.C_out;
          for (int64_t o = 0; o < n; ++o) a[o] += v * s[o];
        }
      }
    }
  }
  const int64_t cl = c % g.cin_g;
  for (int64_t o = 0; o < n; ++o)
    for (int64_t t = 0; t < K; ++t) out[((grp * n + o) * g.cin_g + cl) * K + t] = acc[t * n + o];
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
  Tensor out = at::empty({g.C_out, g.cin_g, g.kH, g.kW}, delta_in.options());
  if (g.weight_numel == 0) return out;
  const Tensor delta_t = delta_in.permute({0, 2, 3, 1}).contiguous(), cp = colptr.contiguous(),
               rw = rows.contiguous(), xvals = xvals_in.contiguous();
  const int64_t K = g.kH * g.kW;
  AT_DISPATCH_FLOATING_TYPES(delta_t.scalar_type(), "conv_dw_spikes_cpu", [&] {
    at::parallel_for(0, g.C_in, 1, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> acc(K * g.cout_g);
      std::vector<int64_t> tap(K), pos(K);
      for (int64_t c = c0; c < c1; ++c)
        conv_dw_channel<scalar_t>(delta_t.const_data_ptr<scalar_t>(), cp.const_data_ptr<int64_t>(),
                                  rw.const_data_ptr<int32_t>(),
                                  xvals.numel() ? xvals.const_data_ptr<scalar_t>() : nullptr, g, c,
                                  out.mutable_data_ptr<scalar_t>(), acc.data(), tap.data(), pos.data());
    });
  });
  return out;
}

// ------------------------------------------------------------------- conv_dx_masked
// Samples [r0, r1) of conv_dx_masked: for each set bit (c, y, x) of a sample, the dot product
// of the group's delta and weight over the taps and output channels; zeros elsewhere. A
// sample with a set bit has its delta transposed once into row_t ([Ho*Wo, C_out]), which
// makes the loop over o contiguous in both operands.
// weight_t: the weight as [cin_g, kH*kW, C_out]. Scratch: row_t, tap and pos (kH*kW).
template <typename T>
SNN_VECTOR_CLONES void conv_dx_rows(const T* delta, const T* weight_t, const int32_t* bits,
                                    const ConvGeometry& g, int64_t r0, int64_t r1, T* out, T* row_t,
                                    int64_t* tap, int64_t* pos) {
  const int64_t K = g.kH * g.kW, n = g.cout_g, HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  for (int64_t r = r0; r < r1; ++r) {
    T* o_row = out + r * g.chw;
    std::fill(o_row, o_row + g.chw, T(0));
    const int64_t k0 = r * g.chw, k1 = k0 + g.chw;
    const int64_t w0 = k0 >> 5, w1 = (k1 + 31) >> 5;
    bool transposed = false;
    for (int64_t w = w0; w < w1; ++w) {
      // Keep the bits of this word that belong to sample r.
      const int64_t lo = std::max<int64_t>(k0 - w * 32, 0), hi = std::min<int64_t>(k1 - w * 32, 32);
      const uint32_t mask = (hi == 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u);
      uint32_t word = static_cast<uint32_t>(bits[w]) & mask;
      if (word && !transposed) {
        const T* d = delta + r * g.out_sample;
        for (int64_t o = 0; o < g.C_out; ++o)
          for (int64_t p = 0; p < HoWo; ++p) row_t[p * g.C_out + o] = d[o * HoWo + p];
        transposed = true;
      }
      for (; word; word &= word - 1) {
        const int64_t i = w * 32 + __builtin_ctz(word) - k0;
        const int64_t c = i / HW, y = (i % HW) / g.W, x = i % g.W;
        const int64_t grp = c / g.cin_g;
        const int64_t nt = taps_of(g, y, x, tap, pos);
        const T* wc = weight_t + (c % g.cin_g) * K * g.C_out + grp * n;
        const T* dg = row_t + grp * n;
        T s = 0;
        for (int64_t t = 0; t < nt; ++t) {
          const T* __restrict wv = wc + tap[t] * g.C_out;
          const T* __restrict dv = dg + pos[t] * g.C_out;
#pragma omp simd reduction(+ : s)
          for (int64_t o = 0; o < n; ++o) s += dv[o] * wv[o];
        }
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
  Tensor out = at::empty({g.R, g.C_in, g.H, g.W}, delta_in.options());
  if (g.in_numel == 0) return out;
  const Tensor delta = delta_in.contiguous(), bits = bits_in.contiguous();
  const Tensor weight_t = weight_in.permute({1, 2, 3, 0}).contiguous();
  const int64_t K = g.kH * g.kW;
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "conv_dx_masked_cpu", [&] {
    at::parallel_for(0, g.R, 1, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> row_t(g.out_sample);
      std::vector<int64_t> tap(K), pos(K);
      conv_dx_rows<scalar_t>(delta.const_data_ptr<scalar_t>(), weight_t.const_data_ptr<scalar_t>(),
                             bits.const_data_ptr<int32_t>(), g, r0, r1, out.mutable_data_ptr<scalar_t>(),
                             row_t.data(), tap.data(), pos.data());
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("conv_dw_spikes", &conv_dw_spikes_cpu);
  m.impl("conv_dx_masked", &conv_dx_masked_cpu);
}

}  // namespace snntorch_sparse
