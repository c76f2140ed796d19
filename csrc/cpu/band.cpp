// CPU kernels of `spike` and `band_grad` (math: reference.spike / reference.band_grad).
//
// Both walk the flattened tensor in fixed chunks of 32-bit words. Because a chunk's
// position in `vals` is the number of set bits before it, each op first counts the bits
// per chunk, takes an exclusive prefix over the chunks, and then fills `vals` (or reads
// it) in parallel with no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/checks.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// Words per chunk (8192 elements): enough work to amortise a task, few enough chunks
// that the serial prefix over them is negligible.
constexpr int64_t kChunkWords = 256;

void check_shape_id(int64_t shape, const char* op) {
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

// Bits of word w that belong to the tensor (the last word may be partial).
inline uint32_t valid_mask(int64_t w, int64_t n) {
  const int64_t left = n - w * 32;
  return left >= 32 ? ~0u : ((1u << left) - 1u);
}

// Number of set (valid) bits before each chunk; returns the total.
int64_t chunk_offsets(const int32_t* bits, int64_t words, int64_t n, std::vector<int64_t>& offs) {
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

template <typename T>
inline uint32_t band_word(const T* u, int64_t cnt, T bth) {
  uint32_t w = 0;
  for (int64_t j = 0; j < cnt; ++j) w |= static_cast<uint32_t>(std::abs(u[j]) < bth) << j;
  return w;
}

std::tuple<Tensor, Tensor, Tensor> spike_cpu(const Tensor& u_in, int64_t shape, double p,
                                             double b_th, double gamma) {
  check_float(u_in, "spike", "u");
  check_shape_id(shape, "spike");
  check_b_th(b_th, "spike");
  const Tensor u = u_in.contiguous();
  const int64_t n = u.numel();
  Tensor spk = at::empty(u.sizes(), u.options());
  const bool dense = std::isinf(b_th);
  const int64_t words = dense ? 0 : (n + 31) / 32;
  Tensor bits = at::empty({words}, u.options().dtype(at::kInt));
  Tensor vals;

  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "spike_cpu", [&] {
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    scalar_t* sp = spk.mutable_data_ptr<scalar_t>();
    // torch rounds python scalars to the tensor's dtype before comparing/multiplying.
    const scalar_t g = static_cast<scalar_t>(gamma);
    const scalar_t bth = static_cast<scalar_t>(b_th);
    auto write_spikes = [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) sp[k] = (up[k] > scalar_t(0) ? scalar_t(1) : scalar_t(0)) * g;
    };
    if (dense) {
      at::parallel_for(0, n, kChunkWords * 32, write_spikes);
      vals = u.reshape(-1).clone();
      return;
    }
    int32_t* bp = bits.mutable_data_ptr<int32_t>();
    const int64_t chunks = (words + kChunkWords - 1) / kChunkWords;
    std::vector<int64_t> offs(chunks + 1, 0);
    // Pass 1: spikes, band bits and the number of in-band elements per chunk.
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t w0 = c * kChunkWords, w1 = std::min(words, w0 + kChunkWords);
        write_spikes(w0 * 32, std::min(n, w1 * 32));
        int64_t cnt = 0;
        for (int64_t w = w0; w < w1; ++w) {
          const int64_t left = n - w * 32;
          const uint32_t word = left >= 32 ? band_word(up + w * 32, 32, bth)
                                           : band_word(up + w * 32, left, bth);
          bp[w] = static_cast<int32_t>(word);
          cnt += __builtin_popcount(word);
        }
        offs[c + 1] = cnt;
      }
    });
    for (int64_t c = 0; c < chunks; ++c) offs[c + 1] += offs[c];
    vals = at::empty({offs[chunks]}, u.options());
    scalar_t* vp = vals.mutable_data_ptr<scalar_t>();
    // Pass 2: gather the in-band values, each chunk from its own offset.
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t o = offs[c];
        const int64_t w1 = std::min(words, (c + 1) * kChunkWords);
        for (int64_t w = c * kChunkWords; w < w1; ++w)
          for (uint32_t word = static_cast<uint32_t>(bp[w]); word; word &= word - 1)
            vp[o++] = up[w * 32 + __builtin_ctz(word)];
      }
    });
  });
  return {spk, bits, vals};
}

Tensor band_grad_cpu(const Tensor& grad_in, const Tensor& bits_in, const Tensor& vals_in,
                     int64_t shape, double p, double gamma, bool compact) {
  check_float(grad_in, "band_grad", "grad");
  check_float(vals_in, "band_grad", "vals");
  check_shape_id(shape, "band_grad");
  TORCH_CHECK(vals_in.scalar_type() == grad_in.scalar_type(), "band_grad: `vals` must have the dtype of `grad` (",
              grad_in.scalar_type(), "), got ", vals_in.scalar_type());
  TORCH_CHECK(vals_in.dim() == 1, "band_grad: `vals` must be 1-D, got shape ", vals_in.sizes());
  TORCH_CHECK(bits_in.device().is_cpu(), "band_grad: `bits` must be a CPU tensor, got ", bits_in.device());
  TORCH_CHECK(bits_in.scalar_type() == at::kInt, "band_grad: `bits` must be int32, got ", bits_in.scalar_type());
  TORCH_CHECK(bits_in.dim() == 1, "band_grad: `bits` must be 1-D, got shape ", bits_in.sizes());
  const Tensor grad = grad_in.contiguous(), bits = bits_in.contiguous(), vals = vals_in.contiguous();
  const int64_t n = grad.numel();
  const bool dense = bits.numel() == 0;
  const int64_t words = (n + 31) / 32;
  std::vector<int64_t> offs;
  int64_t nnz = n;
  if (dense) {
    TORCH_CHECK(vals.numel() == n, "band_grad: dense mode (empty `bits`) needs one `vals` entry per element of "
                "`grad` (", n, "), got ", vals.numel());
  } else {
    TORCH_CHECK(bits.numel() == words, "band_grad: `bits` must have ceil(grad.numel()/32) = ", words,
                " words, got ", bits.numel());
    nnz = chunk_offsets(bits.const_data_ptr<int32_t>(), words, n, offs);
    TORCH_CHECK(vals.numel() == nnz, "band_grad: `vals` must have one entry per set bit of `bits` (", nnz,
                "), got ", vals.numel());
  }
  Tensor out = compact ? at::empty({nnz}, grad.options()) : at::empty(grad.sizes(), grad.options());
  // The sigmoid shape takes exp(-p*u) from torch's own (vectorised, SLEEF) exp, which is
  // what the reference and snnTorch call; std::exp differs in the last bit.
  const Tensor expu = shape == SIGMOID ? at::exp(vals * (-p)) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "band_grad_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* vp = vals.const_data_ptr<scalar_t>();
    const scalar_t* ep = shape == SIGMOID ? expu.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const scalar_t g = static_cast<scalar_t>(gamma);
    with_shape(shape, [&](auto s) {
      constexpr int64_t S = decltype(s)::value;
      // gamma * g(u) * grad for the o-th band value, grad element k.
      auto sg = [&](int64_t k, int64_t o) {
        if constexpr (S == SIGMOID) {  // common.h's sigmoid formula with e precomputed
          const scalar_t e = ep[o], d = e + scalar_t(1);
          return gp[k] * static_cast<scalar_t>(p) * e / (d * d) * g;
        } else {
          return surrogate_grad<scalar_t>(gp[k], vp[o], S, p) * g;
        }
      };
      if (dense) {
        at::parallel_for(0, n, kChunkWords * 32, [&](int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) op[k] = sg(k, k);
        });
        return;
      }
      const int32_t* bp = bits.const_data_ptr<int32_t>();
      const int64_t chunks = static_cast<int64_t>(offs.size()) - 1;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          int64_t o = offs[c];
          const int64_t w0 = c * kChunkWords, w1 = std::min(words, w0 + kChunkWords);
          if (!compact) std::fill(op + w0 * 32, op + std::min(n, w1 * 32), scalar_t(0));
          for (int64_t w = w0; w < w1; ++w) {
            for (uint32_t word = static_cast<uint32_t>(bp[w]) & valid_mask(w, n); word; word &= word - 1, ++o) {
              const int64_t k = w * 32 + __builtin_ctz(word);
              op[compact ? o : k] = sg(k, o);
            }
          }
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("spike", &spike_cpu);
  m.impl("band_grad", &band_grad_cpu);
}

}  // namespace snntorch_sparse
