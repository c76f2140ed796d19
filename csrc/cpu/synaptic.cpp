// CPU kernels of `syn_fwd` and `syn_bwd` (math: reference.syn_fwd / reference.syn_bwd).
//
// The two-state (synaptic current, membrane) version of lif.cpp's scans, with the same
// layout: neurons split over threads in blocks, each block walked through all steps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cpu/alloc.h"
#include "cpu/scan.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// Expression order as reference.syn_fwd (snnTorch's Synaptic), so float64 is
// bit-identical (-ffp-contract=off keeps the compiler from fusing multiply-adds).
template <typename T, int64_t R>
void syn_fwd_block(const T* cur, const T* syn0, const T* mem0, const T* alpha, const T* beta,
                   const T* theta, T* syn, T* mem, int64_t steps, int64_t M, int64_t m0,
                   int64_t m1) {
  const int64_t n = m1 - m0;
  const T* __restrict al = alpha + m0;
  const T* __restrict be = beta + m0;
  const T* __restrict th = theta + m0;
  for (int64_t t = 0; t < steps; ++t) {
    const T* __restrict ps = t ? syn + (t - 1) * M + m0 : syn0 + m0;
    const T* __restrict pm = t ? mem + (t - 1) * M + m0 : mem0 + m0;
    const T* __restrict c = cur + t * M + m0;
    T* __restrict s = syn + t * M + m0;
    T* __restrict u = mem + t * M + m0;
    for (int64_t j = 0; j < n; ++j) {
      const T r = pm[j] - th[j] > T(0) ? T(1) : T(0);
      const T sj = al[j] * ps[j] + c[j];
      const T base = be[j] * pm[j] + sj;
      s[j] = sj;
      if constexpr (R == SUBTRACT) {
        u[j] = base - r * th[j];
      } else if constexpr (R == ZERO) {
        u[j] = base - base * r;
      } else {
        u[j] = base;
      }
    }
  }
}

std::tuple<Tensor, Tensor> syn_fwd_cpu(const Tensor& cur_in, const Tensor& syn0_in,
                                       const Tensor& mem0_in, const Tensor& alpha_in,
                                       const Tensor& beta_in, const Tensor& theta_in,
                                       int64_t reset) {
  constexpr const char* op = "syn_fwd";
  check_float(cur_in, op, "cur");
  TORCH_CHECK(cur_in.dim() == 2, op, ": `cur` must have shape [T, M], got ", cur_in.sizes());
  const int64_t steps = cur_in.size(0), M = cur_in.size(1);
  check_vec(syn0_in, cur_in, M, op, "syn0", "cur");
  check_vec(mem0_in, cur_in, M, op, "mem0", "cur");
  check_vec(alpha_in, cur_in, M, op, "alpha", "cur");
  check_vec(beta_in, cur_in, M, op, "beta", "cur");
  check_vec(theta_in, cur_in, M, op, "theta", "cur");
  check_reset(reset, op);
  const Tensor cur = cur_in.contiguous(), syn0 = syn0_in.contiguous(), mem0 = mem0_in.contiguous(),
               alpha = alpha_in.contiguous(), beta = beta_in.contiguous(),
               theta = theta_in.contiguous();
  Tensor syn = empty_output({steps, M}, cur.options());
  Tensor mem = empty_output({steps, M}, cur.options());
  AT_DISPATCH_FLOATING_TYPES(cur.scalar_type(), "syn_fwd_cpu", [&] {
    auto run = [&](auto kernel) {
      for_each_block(M, [&](int64_t m0, int64_t m1) {
        kernel(cur.const_data_ptr<scalar_t>(), syn0.const_data_ptr<scalar_t>(),
               mem0.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(),
               beta.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(),
               syn.mutable_data_ptr<scalar_t>(), mem.mutable_data_ptr<scalar_t>(), steps, M, m0,
               m1);
      });
    };
    if (reset == SUBTRACT) run(syn_fwd_block<scalar_t, SUBTRACT>);
    else if (reset == ZERO) run(syn_fwd_block<scalar_t, ZERO>);
    else run(syn_fwd_block<scalar_t, NONE>);
  });
  return {syn, mem};
}

// Reverse scan, as reference.syn_bwd: with a = beta*keep, c = keep, keep = 1 - r[t] for the
// zero reset (a = beta, c = 1 otherwise),
//   dm[t] = eps[t] + a[t+1]*dm[t+1];  ds[t] = (c[t]*dm[t] + gsyn[t]) + alpha*ds[t+1].
// Both states live in block buffers; ds is also the output row dcur[t].
template <typename T, bool kZero>
void syn_bwd_block(const T* eps, const T* gsyn, const T* alpha, const T* beta,
                   const int32_t* rbits, T* dcur, T* dsyn0, T* dmem0, int64_t steps, int64_t M,
                   int64_t m0, int64_t m1) {
  const int64_t n = m1 - m0;
  const T* __restrict al = alpha + m0;
  const T* __restrict be = beta + m0;
  T zero[kScanBlock], dm[kScanBlock], ds[kScanBlock];
  T keep[kZero ? kScanBlock : 1], a_buf[kZero ? kScanBlock : 1];
  std::fill(zero, zero + n, T(0));
  std::fill(dm, dm + n, T(0));
  std::fill(ds, ds + n, T(0));
  const T* a_next = zero;  // a[T]: nothing follows the last step
  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* __restrict e = eps + t * M + m0;
    const T* __restrict g = gsyn ? gsyn + t * M + m0 : zero;
    T* __restrict out = dcur + t * M + m0;
    for (int64_t j = 0; j < n; ++j) dm[j] = e[j] + a_next[j] * dm[j];
    if constexpr (kZero) {
      // 1 - r[t] is 1 but where the neuron fired (a set bit): only those are touched.
      std::fill(keep, keep + n, T(1));
      for_each_set_bit(rbits, t * M + m0, n, [&](int64_t j) { keep[j] = T(1) - T(1); });
      for (int64_t j = 0; j < n; ++j) {
        ds[j] = (keep[j] * dm[j] + g[j]) + al[j] * ds[j];
        out[j] = ds[j];
        a_buf[j] = be[j] * keep[j];
      }
      a_next = a_buf;
    } else {
      for (int64_t j = 0; j < n; ++j) {
        ds[j] = (dm[j] + g[j]) + al[j] * ds[j];
        out[j] = ds[j];
      }
      a_next = be;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    dsyn0[m0 + j] = al[j] * ds[j];
    dmem0[m0 + j] = a_next[j] * dm[j];
  }
}

std::tuple<Tensor, Tensor, Tensor> syn_bwd_cpu(const Tensor& eps_in, const Tensor& gsyn_in,
                                               const Tensor& alpha_in, const Tensor& beta_in,
                                               const Tensor& rbits_in, int64_t reset) {
  constexpr const char* op = "syn_bwd";
  check_float(eps_in, op, "eps_mem");
  TORCH_CHECK(eps_in.dim() == 2, op, ": `eps_mem` must have shape [T, M], got ", eps_in.sizes());
  const int64_t steps = eps_in.size(0), M = eps_in.size(1);
  const bool has_gsyn = gsyn_in.numel() > 0;
  if (has_gsyn) {
    check_float(gsyn_in, op, "grad_syn");
    TORCH_CHECK(gsyn_in.scalar_type() == eps_in.scalar_type(), op,
                ": `grad_syn` must have the dtype of `eps_mem` (", eps_in.scalar_type(), "), got ",
                gsyn_in.scalar_type());
    TORCH_CHECK(gsyn_in.sizes() == eps_in.sizes(), op,
                ": `grad_syn` must be empty (no gradient) or have the shape of `eps_mem` ",
                eps_in.sizes(), ", got ", gsyn_in.sizes());
  }
  check_vec(alpha_in, eps_in, M, op, "alpha", "eps_mem");
  check_vec(beta_in, eps_in, M, op, "beta", "eps_mem");
  check_reset(reset, op);
  const bool zero = reset == ZERO;
  if (zero) check_rbits(rbits_in, steps, M, op);
  const Tensor eps = eps_in.contiguous(), alpha = alpha_in.contiguous(), beta = beta_in.contiguous();
  const Tensor gsyn = has_gsyn ? gsyn_in.contiguous() : gsyn_in;
  const Tensor rbits = zero ? rbits_in.contiguous() : rbits_in;
  Tensor dcur = empty_output({steps, M}, eps.options());
  Tensor dsyn0 = zeros_output({M}, eps.options());  // no step: the initial state does not
  Tensor dmem0 = zeros_output({M}, eps.options());  // reach the loss
  if (steps == 0) return {dcur, dsyn0, dmem0};
  AT_DISPATCH_FLOATING_TYPES(eps.scalar_type(), "syn_bwd_cpu", [&] {
    auto run = [&](auto kernel) {
      for_each_block(M, [&](int64_t m0, int64_t m1) {
        kernel(eps.const_data_ptr<scalar_t>(),
               has_gsyn ? gsyn.const_data_ptr<scalar_t>() : nullptr,
               alpha.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
               zero ? rbits.const_data_ptr<int32_t>() : nullptr, dcur.mutable_data_ptr<scalar_t>(),
               dsyn0.mutable_data_ptr<scalar_t>(), dmem0.mutable_data_ptr<scalar_t>(), steps, M,
               m0, m1);
      });
    };
    if (zero) run(syn_bwd_block<scalar_t, true>);
    else run(syn_bwd_block<scalar_t, false>);
  });
  return {dcur, dsyn0, dmem0};
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("syn_fwd", &syn_fwd_cpu);
  m.impl("syn_bwd", &syn_bwd_cpu);
}

}  // namespace snntorch_sparse
