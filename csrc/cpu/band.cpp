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
#include <vector>

#include "cpu/alloc.h"
#include "cpu/band.h"
#include "cpu/sparse_args.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// Spikes γ·H(u) of elements [w0·32, min(n, w1·32)) and their band words (bit j of word w:
// |u[32w + j]| < b_th); returns the number of band elements. A whole word's 32 lanes form
// one loop that vectorises (per-lane shifts need AVX2, hence the clones). Must not throw.
template <typename T>
SNN_VECTOR_CLONES int64_t spike_words(const T* u, T* spk, int32_t* bits, int64_t w0,
                                      int64_t w1, int64_t n, T g, T bth) {
  int64_t cnt = 0;
  for (int64_t w = w0; w < w1; ++w) {
    const T* uw = u + w * 32;
    T* sw = spk + w * 32;
    const int64_t m = std::min<int64_t>(32, n - w * 32);
    uint32_t word = 0;
    if (m == 32) {
      for (int j = 0; j < 32; ++j) {
        sw[j] = spike_value(uw[j], g);
        word |= in_band(uw[j], bth) << j;
      }
    } else {
      for (int64_t j = 0; j < m; ++j) {
        sw[j] = spike_value(uw[j], g);
        word |= in_band(uw[j], bth) << j;
      }
    }
    bits[w] = static_cast<int32_t>(word);
    cnt += __builtin_popcount(word);
  }
  return cnt;
}

std::tuple<Tensor, Tensor, Tensor> spike_cpu(const Tensor& u_in, int64_t shape, double p,
                                             double b_th, double gamma) {
  check_float(u_in, "spike", "u");
  check_shape_id(shape, "spike");
  check_b_th(b_th, "spike");
  const Tensor u = u_in.contiguous();
  const int64_t n = u.numel();
  Tensor spk = empty_output(u.sizes(), u.options());
  const bool dense = std::isinf(b_th);
  const int64_t words = dense ? 0 : (n + 31) / 32;
  Tensor bits = empty_output({words}, u.options().dtype(at::kInt));
  Tensor vals;

  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "spike_cpu", [&] {
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    scalar_t* sp = spk.mutable_data_ptr<scalar_t>();
    // torch rounds python scalars to the tensor's dtype before comparing/multiplying.
    const scalar_t g = static_cast<scalar_t>(gamma);
    const scalar_t bth = static_cast<scalar_t>(b_th);
    auto write_spikes = [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) sp[k] = spike_value(up[k], g);
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
        offs[c + 1] = spike_words(up, sp, bp, w0, w1, n, g, bth);
      }
    });
    for (int64_t c = 0; c < chunks; ++c) offs[c + 1] += offs[c];
    vals = empty_output({offs[chunks]}, u.options());
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
  std::vector<int64_t> offs;
  const int64_t nnz = check_band(grad_in, bits_in, vals_in, shape, "band_grad", offs);
  const Tensor grad = grad_in.contiguous(), bits = bits_in.contiguous(), vals = vals_in.contiguous();
  const int64_t n = grad.numel();
  const bool dense = bits.numel() == 0;
  const int64_t words = (n + 31) / 32;
  Tensor out = compact ? empty_output({nnz}, grad.options()) : empty_output(grad.sizes(), grad.options());
  const Tensor expu = band_exp(vals, shape, p);

  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "band_grad_cpu", [&] {
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    with_shape(shape, [&](auto s) {
      const BandSurrogate<scalar_t, decltype(s)::value> sg{
          grad.const_data_ptr<scalar_t>(), vals.const_data_ptr<scalar_t>(),
          expu.defined() ? expu.const_data_ptr<scalar_t>() : nullptr, p,
          static_cast<scalar_t>(gamma)};
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
