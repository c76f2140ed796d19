// CPU kernels of `lif_fwd` and `lif_bwd` (math: reference.lif_fwd / reference.lif_bwd).
//
// Both are recurrences in t that are independent per neuron, so the neurons are split
// over threads, and each thread walks a block of neurons through all steps: for every t
// the block reads one contiguous slice of row t (vectorisable) and its state is the row
// it just wrote (still in L1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common.h"
#include "cpu/checks.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// Neurons per block: one row slice is 4 KiB in float64, so a block's working set of a
// few rows stays in L1.
constexpr int64_t kBlock = 512;

// A per-neuron vector: 1-D of length M, the dtype of the sequence.
void check_vec(const Tensor& t, const Tensor& like, int64_t M, const char* op, const char* name,
               const char* like_name) {
  check_float(t, op, name);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` must have the dtype of `",
              like_name, "` (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == M, op, ": `", name, "` must have shape [M] = [", M,
              "], got ", t.sizes());
}

void check_reset(int64_t reset, const char* op) {
  TORCH_CHECK(reset >= SUBTRACT && reset <= NONE, op,
              ": `reset` must be 0 (subtract), 1 (zero) or 2 (none), got ", reset);
}

// Expression order as reference.lif_fwd (snnTorch's Leaky), so float64 is bit-identical
// (as long as the compiler does not fuse multiply-adds: -ffp-contract=off). GCC
// vectorises the reset's select only with -fno-trapping-math, as torch is built.
template <typename T, int64_t R>
void lif_fwd_block(const T* cur, const T* mem0, const T* beta, const T* theta, T* out,
                   int64_t steps, int64_t M, int64_t m0, int64_t m1) {
  const int64_t n = m1 - m0;
  const T* __restrict be = beta + m0;
  const T* __restrict th = theta + m0;
  for (int64_t t = 0; t < steps; ++t) {
    const T* __restrict prev = t ? out + (t - 1) * M + m0 : mem0 + m0;
    const T* __restrict c = cur + t * M + m0;
    T* __restrict u = out + t * M + m0;
    for (int64_t j = 0; j < n; ++j) {
      const T r = prev[j] - th[j] > T(0) ? T(1) : T(0);
      if constexpr (R == SUBTRACT) {
        u[j] = be[j] * prev[j] + c[j] - r * th[j];
      } else if constexpr (R == ZERO) {
        u[j] = be[j] * ((T(1) - r) * prev[j]) + c[j];
      } else {
        u[j] = be[j] * prev[j] + c[j];
      }
    }
  }
}

Tensor lif_fwd_cpu(const Tensor& cur_in, const Tensor& mem0_in, const Tensor& beta_in,
                   const Tensor& theta_in, int64_t reset) {
  check_float(cur_in, "lif_fwd", "cur");
  TORCH_CHECK(cur_in.dim() == 2, "lif_fwd: `cur` must have shape [T, M], got ", cur_in.sizes());
  const int64_t steps = cur_in.size(0), M = cur_in.size(1);
  check_vec(mem0_in, cur_in, M, "lif_fwd", "mem0", "cur");
  check_vec(beta_in, cur_in, M, "lif_fwd", "beta", "cur");
  check_vec(theta_in, cur_in, M, "lif_fwd", "theta", "cur");
  check_reset(reset, "lif_fwd");
  const Tensor cur = cur_in.contiguous(), mem0 = mem0_in.contiguous(), beta = beta_in.contiguous(),
               theta = theta_in.contiguous();
  Tensor out = at::empty({steps, M}, cur.options());
  AT_DISPATCH_FLOATING_TYPES(cur.scalar_type(), "lif_fwd_cpu", [&] {
    auto run = [&](auto kernel) {
      at::parallel_for(0, M, kBlock, [&](int64_t b, int64_t e) {
        for (int64_t m0 = b; m0 < e; m0 += kBlock)
          kernel(cur.const_data_ptr<scalar_t>(), mem0.const_data_ptr<scalar_t>(),
                 beta.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(),
                 out.mutable_data_ptr<scalar_t>(), steps, M, m0, std::min(e, m0 + kBlock));
      });
    };
    if (reset == SUBTRACT) run(lif_fwd_block<scalar_t, SUBTRACT>);
    else if (reset == ZERO) run(lif_fwd_block<scalar_t, ZERO>);
    else run(lif_fwd_block<scalar_t, NONE>);
  });
  return out;
}

// Reverse scan, as reference.lif_bwd: Delta[t] = eps[t] + a[t+1]*Delta[t+1] with
// a[t] = beta (subtract/none) or beta*(1 - r[t]) (zero).
template <typename T, bool kZero>
void lif_bwd_block(const T* eps, const T* beta, const int32_t* rbits, T* delta, T* dmem0,
                   int64_t steps, int64_t M, int64_t m0, int64_t m1) {
  const int64_t n = m1 - m0;
  const T* be = beta + m0;
  T buf[kZero ? kBlock : 1];
  // a[t] over the block. For the zero reset beta*(1 - 0) is beta itself, so only the
  // set bits of r[t] (the few neurons that fired) need beta*(1 - 1).
  auto decay = [&](int64_t t) -> const T* {
    if constexpr (kZero) {
      std::copy(be, be + n, buf);
      const int64_t k0 = t * M + m0, k1 = k0 + n;
      for (int64_t w = k0 >> 5; w < (k1 + 31) >> 5; ++w) {
        // keep the bits of this word that fall in [k0, k1)
        const int64_t lo = std::max<int64_t>(k0 - w * 32, 0), hi = std::min<int64_t>(k1 - w * 32, 32);
        const uint32_t mask = (hi == 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u);
        for (uint32_t word = static_cast<uint32_t>(rbits[w]) & mask; word; word &= word - 1) {
          const int64_t j = w * 32 + __builtin_ctz(word) - k0;
          buf[j] = be[j] * (T(1) - T(1));
        }
      }
      return buf;
    } else {
      (void)t;
      return be;
    }
  };
  {
    const T* __restrict e = eps + (steps - 1) * M + m0;
    T* __restrict d = delta + (steps - 1) * M + m0;
    // "+ 0" as the reference: it turns -0 into +0.
    for (int64_t j = 0; j < n; ++j) d[j] = e[j] + T(0);
  }
  for (int64_t t = steps - 2; t >= 0; --t) {
    const T* __restrict a = decay(t + 1);
    const T* __restrict e = eps + t * M + m0;
    const T* __restrict next = delta + (t + 1) * M + m0;
    T* __restrict d = delta + t * M + m0;
    for (int64_t j = 0; j < n; ++j) d[j] = e[j] + a[j] * next[j];
  }
  const T* __restrict a = decay(0);
  for (int64_t j = 0; j < n; ++j) dmem0[m0 + j] = a[j] * delta[m0 + j];
}

std::tuple<Tensor, Tensor> lif_bwd_cpu(const Tensor& eps_in, const Tensor& beta_in,
                                       const Tensor& rbits_in, int64_t reset) {
  check_float(eps_in, "lif_bwd", "eps");
  TORCH_CHECK(eps_in.dim() == 2, "lif_bwd: `eps` must have shape [T, M], got ", eps_in.sizes());
  const int64_t steps = eps_in.size(0), M = eps_in.size(1);
  check_vec(beta_in, eps_in, M, "lif_bwd", "beta", "eps");
  check_reset(reset, "lif_bwd");
  const bool zero = reset == ZERO;
  if (zero) {
    TORCH_CHECK(rbits_in.device().is_cpu(), "lif_bwd: `rbits` must be a CPU tensor, got ", rbits_in.device());
    TORCH_CHECK(rbits_in.scalar_type() == at::kInt, "lif_bwd: `rbits` must be int32, got ", rbits_in.scalar_type());
    TORCH_CHECK(rbits_in.dim() == 1 && rbits_in.numel() == (steps * M + 31) / 32,
                "lif_bwd: reset=zero needs `rbits` of ceil(T*M/32) = ", (steps * M + 31) / 32,
                " int32 words, got shape ", rbits_in.sizes());
  }
  const Tensor eps = eps_in.contiguous(), beta = beta_in.contiguous();
  const Tensor rbits = zero ? rbits_in.contiguous() : rbits_in;
  Tensor delta = at::empty({steps, M}, eps.options());
  // No step: U[0] does not reach the loss.
  Tensor dmem0 = steps ? at::empty({M}, eps.options()) : at::zeros({M}, eps.options());
  if (steps == 0) return {delta, dmem0};
  AT_DISPATCH_FLOATING_TYPES(eps.scalar_type(), "lif_bwd_cpu", [&] {
    auto run = [&](auto kernel) {
      at::parallel_for(0, M, kBlock, [&](int64_t b, int64_t e) {
        for (int64_t m0 = b; m0 < e; m0 += kBlock)
          kernel(eps.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
                 zero ? rbits.const_data_ptr<int32_t>() : nullptr, delta.mutable_data_ptr<scalar_t>(),
                 dmem0.mutable_data_ptr<scalar_t>(), steps, M, m0, std::min(e, m0 + kBlock));
      });
    };
    if (zero) run(lif_bwd_block<scalar_t, true>);
    else run(lif_bwd_block<scalar_t, false>);
  });
  return {delta, dmem0};
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
}

}  // namespace snntorch_sparse
