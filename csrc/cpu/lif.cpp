// CPU kernels of `lif_fwd`, `lif_bwd` and `lif_bwd_band` (math: the functions of the same
// names in reference.py).
//
// All are recurrences in t that are independent per neuron, so the neurons are split
// over threads, and each thread walks a block of neurons through all steps: for every t
// the block reads one contiguous slice of row t (vectorisable) and its state is the row
// it just wrote (still in L1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/band.h"
#include "cpu/scan.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

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
    for (int64_t j = 0; j < n; ++j) u[j] = lif_update<T, R>(prev[j], c[j], be[j], th[j]);
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
  Tensor out = empty_output({steps, M}, cur.options());
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

// The direct gradient eps[t] into U[t] of the block's neurons [m0, m0 + n) at step t, as a
// pointer to n values: lif_bwd reads it from its input...
template <typename T>
struct GivenEps {
  const T* eps;
  int64_t M;
  const T* row(int64_t t, int64_t m0, int64_t /*n*/, T* /*buf*/) const { return eps + t * M + m0; }
};

// ... lif_bwd_band forms it in `buf` (BandEps, band.h).

// Reverse scan, as reference.lif_bwd: Delta[t] = eps[t] + a[t+1]*Delta[t+1] with
// a[t] = beta (subtract/none) or beta*(1 - r[t]) (zero), and a[T]*Delta[T] = carry (0 if
// nullptr: the gradient reaching U[T-1] from the steps after these, when a sequence is
// processed in chunks).
template <typename T, bool kZero, typename Eps>
void lif_bwd_block(const Eps& eps, const T* beta, const int32_t* rbits, const T* carry, T* delta,
                   T* dmem0, int64_t steps, int64_t M, int64_t m0, int64_t m1) {
  const int64_t n = m1 - m0;
  const T* be = beta + m0;
  T buf[kZero ? kScanBlock : 1];
  T ebuf[kScanBlock];
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
    const T* __restrict e = eps.row(steps - 1, m0, n, ebuf);
    T* __restrict d = delta + (steps - 1) * M + m0;
    // "+ 0" as the reference: it turns -0 into +0. carry: a[T]*Delta[T] from later steps.
    if (carry) for (int64_t j = 0; j < n; ++j) d[j] = e[j] + carry[m0 + j];
    else for (int64_t j = 0; j < n; ++j) d[j] = e[j] + T(0);
  }
  for (int64_t t = steps - 2; t >= 0; --t) {
    const T* __restrict a = decay(t + 1);
    const T* __restrict e = eps.row(t, m0, n, ebuf);
    const T* __restrict next = delta + (t + 1) * M + m0;
    T* __restrict d = delta + t * M + m0;
    for (int64_t j = 0; j < n; ++j) d[j] = e[j] + a[j] * next[j];
  }
  const T* __restrict a = decay(0);
  for (int64_t j = 0; j < n; ++j) dmem0[m0 + j] = a[j] * delta[m0 + j];
}

// The scan over all blocks in parallel; make_eps(tag, scan) calls scan with the eps source
// for the dtype of tag.
template <typename MakeEps>
std::tuple<Tensor, Tensor> run_lif_bwd(const Tensor& like, const Tensor& beta_in,
                                       const Tensor& rbits_in, const Tensor& carry, int64_t reset,
                                       const char* op, const char* like_name,
                                       const MakeEps& make_eps) {
  const int64_t steps = like.size(0), M = like.size(1);
  check_vec(beta_in, like, M, op, "beta", like_name);
  if (carry.defined()) check_vec(carry, like, M, op, "dmem_last", like_name);
  check_reset(reset, op);
  const bool zero = reset == ZERO;
  if (zero) check_rbits(rbits_in, steps, M, op);
  const Tensor beta = beta_in.contiguous();
  const Tensor rbits = zero ? rbits_in.contiguous() : rbits_in;
  const Tensor carry_c = carry.defined() ? carry.contiguous() : carry;
  Tensor delta = empty_output({steps, M}, like.options());
  // No step: U[0] does not reach the loss (a carry passes through unchanged).
  if (steps == 0) return {delta, carry.defined() ? carry.clone() : zeros_output({M}, like.options())};
  Tensor dmem0 = empty_output({M}, like.options());
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "lif_bwd_cpu", [&] {
    make_eps(scalar_t(0), [&](const auto& eps) {
      auto run = [&](auto kernel) {
        for_each_block(M, [&](int64_t m0, int64_t m1) {
          kernel(eps, beta.const_data_ptr<scalar_t>(), zero ? rbits.const_data_ptr<int32_t>() : nullptr,
                 carry_c.defined() ? carry_c.const_data_ptr<scalar_t>() : nullptr,
                 delta.mutable_data_ptr<scalar_t>(), dmem0.mutable_data_ptr<scalar_t>(), steps, M,
                 m0, m1);
        });
      };
      using E = std::decay_t<decltype(eps)>;
      if (zero) run(lif_bwd_block<scalar_t, true, E>);
      else run(lif_bwd_block<scalar_t, false, E>);
    });
  });
  return {delta, dmem0};
}

std::tuple<Tensor, Tensor> lif_bwd_cpu(const Tensor& eps_in, const Tensor& beta_in,
                                       const Tensor& rbits_in, int64_t reset) {
  check_float(eps_in, "lif_bwd", "eps");
  TORCH_CHECK(eps_in.dim() == 2, "lif_bwd: `eps` must have shape [T, M], got ", eps_in.sizes());
  const Tensor eps = eps_in.contiguous();
  return run_lif_bwd(eps, beta_in, rbits_in, Tensor(), reset, "lif_bwd", "eps",
                     [&](auto tag, const auto& scan) {
                       using T = decltype(tag);
                       scan(GivenEps<T>{eps.const_data_ptr<T>(), eps.size(1)});
                     });
}

std::tuple<Tensor, Tensor> lif_bwd_band_cpu(const std::optional<Tensor>& grad_spk_in,
                                            const Tensor& bits_in, const Tensor& vals_in,
                                            const std::optional<Tensor>& grad_mem_in,
                                            const std::optional<Tensor>& dmem_last_in,
                                            const Tensor& beta_in, const Tensor& rbits_in,
                                            int64_t shape, double p, double gamma, int64_t reset) {
  constexpr const char* op = "lif_bwd_band";
  const bool has_spk = grad_spk_in.has_value() && grad_spk_in->defined();
  const bool has_mem = grad_mem_in.has_value() && grad_mem_in->defined();
  TORCH_CHECK(has_spk || has_mem, op, ": needs `grad_spk` or `grad_mem` (both are None)");
  const char* like_name = has_spk ? "grad_spk" : "grad_mem";
  const Tensor& like_in = has_spk ? *grad_spk_in : *grad_mem_in;
  check_float(like_in, op, like_name);
  TORCH_CHECK(like_in.dim() == 2, op, ": `", like_name, "` must have shape [T, M], got ", like_in.sizes());
  std::vector<int64_t> offs;
  if (has_spk) check_band(like_in, bits_in, vals_in, shape, op, offs, "grad_spk");
  if (has_spk && has_mem) {
    check_float(*grad_mem_in, op, "grad_mem");
    TORCH_CHECK(grad_mem_in->scalar_type() == like_in.scalar_type(), op,
                ": `grad_mem` must have the dtype of `grad_spk` (", like_in.scalar_type(), "), got ",
                grad_mem_in->scalar_type());
    TORCH_CHECK(grad_mem_in->sizes() == like_in.sizes(), op, ": `grad_mem` must have the shape of "
                "`grad_spk` ", like_in.sizes(), ", got ", grad_mem_in->sizes());
  }
  const Tensor carry = dmem_last_in.has_value() ? *dmem_last_in : Tensor();
  const Tensor gmem = has_mem ? grad_mem_in->contiguous() : Tensor();
  if (!has_spk) {  // eps is the membrane gradient itself
    return run_lif_bwd(gmem, beta_in, rbits_in, carry, reset, op, like_name,
                       [&](auto tag, const auto& scan) {
                         using T = decltype(tag);
                         scan(GivenEps<T>{gmem.const_data_ptr<T>(), gmem.size(1)});
                       });
  }
  const Tensor grad = like_in.contiguous(), bits = bits_in.contiguous(), vals = vals_in.contiguous();
  const Tensor expu = band_exp(vals, shape, p);
  const int64_t n = grad.numel(), words = bits.numel();
  const std::vector<int64_t> woff =
      words ? word_offsets(bits.const_data_ptr<int32_t>(), words, n, offs) : std::vector<int64_t>();
  return run_lif_bwd(grad, beta_in, rbits_in, carry, reset, op, like_name,
                     [&](auto tag, const auto& scan) {
    using T = decltype(tag);
    with_shape(shape, [&](auto s) {
      constexpr int64_t S = decltype(s)::value;
      const BandSurrogate<T, S> sg{grad.const_data_ptr<T>(), vals.const_data_ptr<T>(),
                                   expu.defined() ? expu.const_data_ptr<T>() : nullptr, p,
                                   static_cast<T>(gamma)};
      scan(BandEps<T, S>{sg, words ? bits.const_data_ptr<int32_t>() : nullptr, woff.data(),
                         has_mem ? gmem.const_data_ptr<T>() : nullptr, grad.size(1)});
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
  m.impl("lif_bwd_band", &lif_bwd_band_cpu);
}

}  // namespace snntorch_sparse
