// CPU kernels of `lif_fwd` and `lif_bwd` (math: reference.lif_fwd / reference.lif_bwd).
//
// Both are recurrences in t that are independent per neuron, so the neurons are split
// over threads, and each thread walks a block of neurons through all steps: for every t
// the block reads one contiguous slice of row t (vectorisable) and its state is the row
// it just wrote (still in L1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/scan.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

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
      for_each_block(M, [&](int64_t m0, int64_t m1) {
        kernel(cur.const_data_ptr<scalar_t>(), mem0.const_data_ptr<scalar_t>(),
               beta.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(),
               out.mutable_data_ptr<scalar_t>(), steps, M, m0, m1);
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
  T buf[kZero ? kScanBlock : 1];
  // a[t] over the block. For the zero reset beta*(1 - 0) is beta itself, so only the
  // set bits of r[t] (the few neurons that fired) need beta*(1 - 1).
  auto decay = [&](int64_t t) -> const T* {
    if constexpr (kZero) {
      std::copy(be, be + n, buf);
      for_each_set_bit(rbits, t * M + m0, n, [&](int64_t j) { buf[j] = be[j] * (T(1) - T(1)); });
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
  if (zero) check_rbits(rbits_in, steps, M, "lif_bwd");
  const Tensor eps = eps_in.contiguous(), beta = beta_in.contiguous();
  const Tensor rbits = zero ? rbits_in.contiguous() : rbits_in;
  Tensor delta = at::empty({steps, M}, eps.options());
  // No step: U[0] does not reach the loss.
  Tensor dmem0 = steps ? at::empty({M}, eps.options()) : at::zeros({M}, eps.options());
  if (steps == 0) return {delta, dmem0};
  AT_DISPATCH_FLOATING_TYPES(eps.scalar_type(), "lif_bwd_cpu", [&] {
    auto run = [&](auto kernel) {
      for_each_block(M, [&](int64_t m0, int64_t m1) {
        kernel(eps.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
               zero ? rbits.const_data_ptr<int32_t>() : nullptr, delta.mutable_data_ptr<scalar_t>(),
               dmem0.mutable_data_ptr<scalar_t>(), steps, M, m0, m1);
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
