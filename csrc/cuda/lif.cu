// CUDA kernels of the ops `lif_fwd`, `lif_bwd` and `lif_bwd_band` (math: the functions of the
// same names in reference.py).
// One thread per neuron m walks the time steps; element (t, m) of a [T, M] tensor is at
// t*M + m, so the threads of a warp touch consecutive addresses at every step.
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "band.cuh"

namespace snntorch_sparse {
namespace cuda {
namespace {

// U[t] from U[t-1] with reset flag r[t] = H(U[t-1] - theta), in snnTorch's expression order;
// the membrane stays in opmath precision across steps, each step is rounded once on output.
template <typename scalar_t>
__global__ void lif_fwd_kernel(const scalar_t* __restrict__ cur, const scalar_t* __restrict__ mem0,
                               const scalar_t* __restrict__ beta,
                               const scalar_t* __restrict__ theta, scalar_t* __restrict__ out,
                               int64_t T, int64_t M, int64_t reset) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < M;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t b = static_cast<opmath_t>(beta[m]);
    const opmath_t th = static_cast<opmath_t>(theta[m]);
    opmath_t U = static_cast<opmath_t>(mem0[m]);
    for (int64_t t = 0; t < T; ++t) {
      const opmath_t r = (U - th > opmath_t(0)) ? opmath_t(1) : opmath_t(0);
      const opmath_t I = static_cast<opmath_t>(cur[t * M + m]);
      if (reset == SUBTRACT) {
        U = (mul_rn(b, U) + I) - mul_rn(r, th);
      } else if (reset == ZERO) {
        U = mul_rn(b, mul_rn(opmath_t(1) - r, U)) + I;
      } else {
        U = mul_rn(b, U) + I;
      }
      out[t * M + m] = static_cast<scalar_t>(U);
    }
  }
}

// The direct gradient eps[k] into U of element k: lif_bwd reads it from its input...
template <typename scalar_t>
struct GivenEps {
  const scalar_t* eps;
  __device__ at::opmath_type<scalar_t> operator()(int64_t k) const {
    return static_cast<at::opmath_type<scalar_t>>(eps[k]);
  }
};

// ... lif_bwd_band forms it as reference.lif_bwd_band: band_grad(grad_spk) (+ grad_mem), each
// rounded to scalar_t as the two separate ops would (bits == nullptr: dense band).
template <typename scalar_t>
struct BandEps {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* grad;
  const int32_t* bits;
  const int64_t* incl;  // band_ranks(bits)
  const scalar_t* vals;
  int64_t nvals;
  const scalar_t* gmem;  // nullptr: no membrane gradient
  int64_t shape;
  double p;
  opmath_t gamma;
  __device__ opmath_t operator()(int64_t k) const {
    int64_t pos;
    const bool in_band = band_position(bits, incl, k, pos);
    scalar_t band = scalar_t(0);
    if (in_band && pos < nvals) {
      band = static_cast<scalar_t>(surrogate_grad<opmath_t>(static_cast<opmath_t>(grad[k]),
                                                           static_cast<opmath_t>(vals[pos]), shape, p) *
                                   gamma);
    }
    if (gmem == nullptr) return static_cast<opmath_t>(band);
    return static_cast<opmath_t>(
        static_cast<scalar_t>(static_cast<opmath_t>(band) + static_cast<opmath_t>(gmem[k])));
  }
};

// Delta[t] = eps[t] + a[t+1]*Delta[t+1] backwards in t, dmem0 = a[0]*Delta[0], with
// a[t] = beta, or beta*(1 - r[t]) for the zero reset (r[t] = bit t*M + m of rbits), and
// a[T]*Delta[T] = carry[m] (0 if nullptr: the gradient from steps after a chunk).
template <typename scalar_t, typename Eps>
__global__ void lif_bwd_kernel(const Eps eps, const scalar_t* __restrict__ beta,
                               const int32_t* __restrict__ rbits,
                               const scalar_t* __restrict__ carry, scalar_t* __restrict__ delta,
                               scalar_t* __restrict__ dmem0, int64_t T, int64_t M,
                               bool zero_reset) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < M;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t b = static_cast<opmath_t>(beta[m]);
    auto a = [&](int64_t t) {
      if (!zero_reset) return b;
      const opmath_t r = get_bit(rbits, t * M + m) ? opmath_t(1) : opmath_t(0);
      return mul_rn(b, opmath_t(1) - r);
    };
    const opmath_t last = carry != nullptr ? static_cast<opmath_t>(carry[m]) : opmath_t(0);
    opmath_t acc = opmath_t(0);
    for (int64_t t = T - 1; t >= 0; --t) {
      const opmath_t e = eps(t * M + m);
      acc = t + 1 < T ? e + mul_rn(a(t + 1), acc) : e + last;
      delta[t * M + m] = static_cast<scalar_t>(acc);
    }
    dmem0[m] = static_cast<scalar_t>(T > 0 ? mul_rn(a(0), acc) : last);
  }
}

at::Tensor lif_fwd_cuda(const at::Tensor& cur_in, const at::Tensor& mem0_in,
                        const at::Tensor& beta_in, const at::Tensor& theta_in, int64_t reset) {
  constexpr const char* op = "lif_fwd";
  check_cuda(cur_in, op, "cur");
  check_floating(cur_in, op, "cur");
  check_dim(cur_in, 2, op, "cur");
  check_reset_id(reset, op);
  const int64_t T = cur_in.size(0);
  const int64_t M = cur_in.size(1);
  const std::pair<const at::Tensor*, const char*> per_neuron[] = {
      {&mem0_in, "mem0"}, {&beta_in, "beta"}, {&theta_in, "theta"}};
  for (const auto& [t, name] : per_neuron) {
    check_same_device(*t, cur_in, op, name);
    check_same_dtype(*t, cur_in, op, name, "cur");
    check_dim(*t, 1, op, name);
    check_numel(*t, M, op, name, "one per neuron, cur.shape[1]");
  }
  const c10::cuda::CUDAGuard guard(cur_in.device());
  const at::Tensor cur = cur_in.contiguous();
  const at::Tensor mem0 = mem0_in.contiguous();
  const at::Tensor beta = beta_in.contiguous();
  const at::Tensor theta = theta_in.contiguous();
  at::Tensor out = at::empty({T, M}, cur.options());
  if (T == 0 || M == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cur.scalar_type(), "lif_fwd", [&] {
    lif_fwd_kernel<scalar_t><<<grid_for(M), kThreads, 0, stream()>>>(
        cur.data_ptr<scalar_t>(), mem0.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
        theta.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), T, M, reset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Checks beta/rbits/carry against the [T, M] gradient `like` and runs the scan with the
// eps source make_eps(scalar_t tag).
template <typename MakeEps>
std::tuple<at::Tensor, at::Tensor> run_lif_bwd(const at::Tensor& like, const char* like_name,
                                               const at::Tensor& beta_in, const at::Tensor& rbits_in,
                                               const at::Tensor& carry_in, int64_t reset,
                                               const char* op, const MakeEps& make_eps) {
  check_reset_id(reset, op);
  const int64_t T = like.size(0);
  const int64_t M = like.size(1);
  const std::pair<const at::Tensor*, const char*> per_neuron[] = {{&beta_in, "beta"},
                                                                   {&carry_in, "dmem_last"}};
  for (const auto& [t, name] : per_neuron) {
    if (!t->defined()) continue;
    check_same_device(*t, like, op, name);
    check_same_dtype(*t, like, op, name, like_name);
    check_dim(*t, 1, op, name);
    check_numel(*t, M, op, name, "one per neuron, the gradient's shape[1]");
  }
  const bool zero_reset = reset == ZERO;
  if (zero_reset) {  // rbits is read only for the zero reset
    check_bits(rbits_in, like, op, "rbits");
    check_numel(rbits_in, (T * M + 31) / 32, op, "rbits",
                "one int32 word per 32 elements of the gradient, for reset=zero");
  }
  const at::Tensor beta = beta_in.contiguous();
  const at::Tensor rbits = zero_reset ? rbits_in.contiguous() : at::Tensor();
  const at::Tensor carry = carry_in.defined() ? carry_in.contiguous() : at::Tensor();
  at::Tensor delta = at::empty({T, M}, like.options());
  at::Tensor dmem0 = at::empty({M}, like.options());
  if (M == 0) return {delta, dmem0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "lif_bwd", [&] {
    const auto eps = make_eps(scalar_t(0));
    lif_bwd_kernel<scalar_t><<<grid_for(M), kThreads, 0, stream()>>>(
        eps, beta.data_ptr<scalar_t>(), zero_reset ? rbits.data_ptr<int32_t>() : nullptr,
        carry.defined() ? carry.data_ptr<scalar_t>() : nullptr, delta.data_ptr<scalar_t>(),
        dmem0.data_ptr<scalar_t>(), T, M, zero_reset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {delta, dmem0};
}

std::tuple<at::Tensor, at::Tensor> lif_bwd_cuda(const at::Tensor& eps_in,
                                                const at::Tensor& beta_in,
                                                const at::Tensor& rbits_in, int64_t reset) {
  constexpr const char* op = "lif_bwd";
  check_cuda(eps_in, op, "eps");
  check_floating(eps_in, op, "eps");
  check_dim(eps_in, 2, op, "eps");
  const c10::cuda::CUDAGuard guard(eps_in.device());
  const at::Tensor eps = eps_in.contiguous();
  return run_lif_bwd(eps, "eps", beta_in, rbits_in, at::Tensor(), reset, op, [&](auto tag) {
    using scalar_t = decltype(tag);
    return GivenEps<scalar_t>{eps.data_ptr<scalar_t>()};
  });
}

std::tuple<at::Tensor, at::Tensor> lif_bwd_band_cuda(
    const std::optional<at::Tensor>& grad_spk_in, const at::Tensor& bits_in,
    const at::Tensor& vals_in, const std::optional<at::Tensor>& grad_mem_in,
    const std::optional<at::Tensor>& dmem_last_in, const at::Tensor& beta_in,
    const at::Tensor& rbits_in, int64_t shape, double p, double gamma, int64_t reset) {
  constexpr const char* op = "lif_bwd_band";
  const bool has_spk = grad_spk_in.has_value() && grad_spk_in->defined();
  const bool has_mem = grad_mem_in.has_value() && grad_mem_in->defined();
  TORCH_CHECK(has_spk || has_mem, op, ": needs `grad_spk` or `grad_mem` (both are None)");
  const char* like_name = has_spk ? "grad_spk" : "grad_mem";
  const at::Tensor& like_in = has_spk ? *grad_spk_in : *grad_mem_in;
  check_cuda(like_in, op, like_name);
  check_floating(like_in, op, like_name);
  check_dim(like_in, 2, op, like_name);
  if (has_spk) check_band(like_in, bits_in, vals_in, shape, op, "grad_spk");
  if (has_spk && has_mem) {
    check_same_device(*grad_mem_in, like_in, op, "grad_mem");
    check_same_dtype(*grad_mem_in, like_in, op, "grad_mem", "grad_spk");
    TORCH_CHECK(grad_mem_in->sizes() == like_in.sizes(), op, ": `grad_mem` must have the shape of "
                "`grad_spk` ", like_in.sizes(), ", got ", grad_mem_in->sizes());
  }
  const at::Tensor carry = dmem_last_in.has_value() ? *dmem_last_in : at::Tensor();
  const c10::cuda::CUDAGuard guard(like_in.device());
  const at::Tensor gmem = has_mem ? grad_mem_in->contiguous() : at::Tensor();
  if (!has_spk) {  // eps is the membrane gradient itself
    return run_lif_bwd(gmem, like_name, beta_in, rbits_in, carry, reset, op, [&](auto tag) {
      using scalar_t = decltype(tag);
      return GivenEps<scalar_t>{gmem.data_ptr<scalar_t>()};
    });
  }
  const at::Tensor grad = like_in.contiguous();
  const at::Tensor bits = bits_in.contiguous();
  const at::Tensor vals = vals_in.contiguous();
  const bool dense = bits.numel() == 0;
  const at::Tensor incl = dense ? at::Tensor() : band_ranks(bits);
  return run_lif_bwd(grad, like_name, beta_in, rbits_in, carry, reset, op, [&](auto tag) {
    using scalar_t = decltype(tag);
    using opmath_t = at::opmath_type<scalar_t>;
    return BandEps<scalar_t>{grad.data_ptr<scalar_t>(),
                             dense ? nullptr : bits.data_ptr<int32_t>(),
                             dense ? nullptr : incl.data_ptr<int64_t>(),
                             vals.data_ptr<scalar_t>(),
                             vals.numel(),
                             has_mem ? gmem.data_ptr<scalar_t>() : nullptr,
                             shape,
                             p,
                             static_cast<opmath_t>(gamma)};
  });
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse

TORCH_LIBRARY_IMPL(snntorch_sparse, CUDA, m) {
  m.impl("lif_fwd", &snntorch_sparse::cuda::lif_fwd_cuda);
  m.impl("lif_bwd", &snntorch_sparse::cuda::lif_bwd_cuda);
  m.impl("lif_bwd_band", &snntorch_sparse::cuda::lif_bwd_band_cuda);
}
