// The compact band on the CPU (format: reference.py's module docstring): the pieces that
// `band_grad` (band.cpp) and `lif_bwd_band` (lif.cpp) share — argument checks, the offset
// of each in-band element in `vals`, and gamma*g(u)*grad of one element.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/checks.h"

namespace snntorch_sparse {

// Words per chunk (8192 elements): enough work to amortise a task, few enough chunks
// that the serial prefix over them is negligible.
constexpr int64_t kChunkWords = 256;

inline void check_shape_id(int64_t shape, const char* op) {
  TORCH_CHECK(shape >= FAST_SIGMOID && shape <= STRAIGHT_THROUGH, op,
              ": `shape` must be a surrogate id in 0..4 (fast_sigmoid, atan, sigmoid, "
              "triangular, straight_through), got ",
              shape);
}

// Calls f(std::integral_constant<int64_t, shape>) so that surrogate_grad's switch is
// resolved at compile time and the element loops can vectorise.
template <typename F>
void with_shape(int64_t shape, F&& f) {
  switch (shape) {
    case FAST_SIGMOID: f(std::integral_constant<int64_t, FAST_SIGMOID>()); break;
    case ATAN: f(std::integral_constant<int64_t, ATAN>()); break;
    case SIGMOID: f(std::integral_constant<int64_t, SIGMOID>()); break;
    case TRIANGULAR: f(std::integral_constant<int64_t, TRIANGULAR>()); break;
    default: f(std::integral_constant<int64_t, STRAIGHT_THROUGH>()); break;
  }
}

// The spike gamma*H(u) of u = U - theta, and whether u lies in the band |u| < b_th, as
// reference.spike computes them (torch rounds gamma and b_th to the dtype first).
template <typename T>
inline T spike_value(T u, T gamma) { return (u > T(0) ? T(1) : T(0)) * gamma; }

template <typename T>
inline uint32_t in_band(T u, T b_th) { return static_cast<uint32_t>(std::abs(u) < b_th); }

// Bits of word w that belong to a tensor of n elements (the last word may be partial).
inline uint32_t valid_mask(int64_t w, int64_t n) {
  const int64_t left = n - w * 32;
  return left >= 32 ? ~0u : ((1u << left) - 1u);
}

// Number of set (valid) bits before each chunk of kChunkWords words; returns the total.
inline int64_t chunk_offsets(const int32_t* bits, int64_t words, int64_t n,
                             std::vector<int64_t>& offs) {
  const int64_t chunks = (words + kChunkWords - 1) / kChunkWords;
  offs.assign(chunks + 1, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t cnt = 0;
      const int64_t w1 = std::min(words, (c + 1) * kChunkWords);
      for (int64_t w = c * kChunkWords; w < w1; ++w)
        cnt += __builtin_popcount(static_cast<uint32_t>(bits[w]) & valid_mask(w, n));
      offs[c + 1] = cnt;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) offs[c + 1] += offs[c];
  return offs[chunks];
}

// The band `(bits, vals)` of a tensor of n elements, checked against `grad` (the gradient
// it scales): dense mode when bits is empty (vals holds every u), else one vals entry per
// set bit. Fills `offs` (chunk_offsets) in band mode and returns the number of vals.
inline int64_t check_band(const at::Tensor& grad, const at::Tensor& bits, const at::Tensor& vals,
                          int64_t shape, const char* op, std::vector<int64_t>& offs,
                          const char* grad_name = "grad") {
  check_float(grad, op, grad_name);
  check_float(vals, op, "vals");
  check_shape_id(shape, op);
  TORCH_CHECK(vals.scalar_type() == grad.scalar_type(), op, ": `vals` must have the dtype of `", grad_name, "` (",
              grad.scalar_type(), "), got ", vals.scalar_type());
  TORCH_CHECK(vals.dim() == 1, op, ": `vals` must be 1-D, got shape ", vals.sizes());
  TORCH_CHECK(bits.device().is_cpu(), op, ": `bits` must be a CPU tensor, got ", bits.device());
  TORCH_CHECK(bits.scalar_type() == at::kInt, op, ": `bits` must be int32, got ", bits.scalar_type());
  TORCH_CHECK(bits.dim() == 1, op, ": `bits` must be 1-D, got shape ", bits.sizes());
  const int64_t n = grad.numel(), words = (n + 31) / 32;
  if (bits.numel() == 0) {
    TORCH_CHECK(vals.numel() == n, op, ": dense mode (empty `bits`) needs one `vals` entry per element of "
                "`", grad_name, "` (", n, "), got ", vals.numel());
    return n;
  }
  TORCH_CHECK(bits.numel() == words, op, ": `bits` must have ceil(", grad_name, ".numel()/32) = ", words,
              " words, got ", bits.numel());
  const int64_t nnz = chunk_offsets(bits.contiguous().const_data_ptr<int32_t>(), words, n, offs);
  TORCH_CHECK(vals.numel() == nnz, op, ": `vals` must have one entry per set bit of `bits` (", nnz,
              "), got ", vals.numel());
  return nnz;
}

// Number of set (valid) bits before each word, from the chunk offsets: the position in
// vals of a word's first in-band element, for kernels that visit the band out of order.
inline std::vector<int64_t> word_offsets(const int32_t* bits, int64_t words, int64_t n,
                                         const std::vector<int64_t>& offs) {
  std::vector<int64_t> woff(words);
  const int64_t chunks = static_cast<int64_t>(offs.size()) - 1;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t o = offs[c];
      const int64_t w1 = std::min(words, (c + 1) * kChunkWords);
      for (int64_t w = c * kChunkWords; w < w1; ++w) {
        woff[w] = o;
        o += __builtin_popcount(static_cast<uint32_t>(bits[w]) & valid_mask(w, n));
      }
    }
  });
  return woff;
}

// gamma*g(u)*grad of element k whose u is vals[o]. The sigmoid shape takes exp(-p*u) from
// torch's own (vectorised, SLEEF) exp over vals, `expu` (band_exp), which is what the
// reference and snnTorch call; std::exp differs in the last bit.
template <typename T, int64_t S>
struct BandSurrogate {
  const T* grad;
  const T* vals;
  const T* expu;
  double p;
  T gamma;
  T operator()(int64_t k, int64_t o) const {
    if constexpr (S == SIGMOID) {  // common.h's sigmoid formula with e precomputed
      const T e = expu[o], d = e + T(1);
      return grad[k] * static_cast<T>(p) * e / (d * d) * gamma;
    } else {
      return surrogate_grad<T>(grad[k], vals[o], S, p) * gamma;
    }
  }
};

// The direct gradient eps[t] of the neurons [m0, m0 + n) at step t, formed in `buf` as
// reference.lif_bwd_band does (lif_bwd_band, linear_lif_bwd): band_grad(grad_spk) (+
// grad_mem), the surrogate evaluated only at the set bits (bits == nullptr: dense band).
template <typename T, int64_t S>
struct BandEps {
  BandSurrogate<T, S> sg;
  const int32_t* bits;
  const int64_t* woff;  // word_offsets of bits
  const T* gmem;        // nullptr: no membrane gradient
  int64_t M;
  const T* row(int64_t t, int64_t m0, int64_t n, T* buf) const {
    const int64_t k0 = t * M + m0;
    // "0 + m" as the reference's band + grad_mem outside the band (it turns -0 into +0).
    if (gmem) for (int64_t j = 0; j < n; ++j) buf[j] = T(0) + gmem[k0 + j];
    else std::fill(buf, buf + n, T(0));
    auto put = [&](int64_t j, int64_t o) {
      const T g = sg(k0 + j, o);
      buf[j] = gmem ? g + gmem[k0 + j] : g;
    };
    if (!bits) {
      for (int64_t j = 0; j < n; ++j) put(j, k0 + j);
      return buf;
    }
    const int64_t k1 = k0 + n;
    for (int64_t w = k0 >> 5; w < (k1 + 31) >> 5; ++w) {
      const int64_t lo = std::max<int64_t>(k0 - w * 32, 0), hi = std::min<int64_t>(k1 - w * 32, 32);
      const uint32_t all = static_cast<uint32_t>(bits[w]);
      const uint32_t below = (1u << lo) - 1u;
      const uint32_t mask = (hi == 32 ? ~0u : (1u << hi) - 1u) & ~below;
      int64_t o = woff[w] + __builtin_popcount(all & below);
      for (uint32_t word = all & mask; word; word &= word - 1, ++o) put(w * 32 + __builtin_ctz(word) - k0, o);
    }
    return buf;
  }
};

inline at::Tensor band_exp(const at::Tensor& vals, int64_t shape, double p) {
  return shape == SIGMOID ? at::exp(vals * (-p)) : at::Tensor();
}

}  // namespace snntorch_sparse
