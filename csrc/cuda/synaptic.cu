// CUDA kernels of the ops `syn_fwd` and `syn_bwd` (math: reference.syn_fwd / reference.syn_bwd).
// As lif.cu: one thread per neuron m walks the time steps, element (t, m) of a [T, M]
// tensor is at t*M + m (coalesced), and both states stay in opmath precision across steps.
#include <torch/library.h>

#include <tuple>

#include "cuda_utils.cuh"

namespace snntorch_sparse {
namespace cuda {
namespace {

// syn[t] = alpha*syn[t-1] + cur[t]; U[t] from base = beta*U[t-1] + syn[t] and the reset flag
// r[t] = H(U[t-1] - theta), in snnTorch's expression order.
template <typename scalar_t>
__global__ void syn_fwd_kernel(const scalar_t* __restrict__ cur, const scalar_t* __restrict__ syn0,
                               const scalar_t* __restrict__ mem0,
                               const scalar_t* __restrict__ alpha,
                               const scalar_t* __restrict__ beta,
                               const scalar_t* __restrict__ theta, scalar_t* __restrict__ syn,
                               scalar_t* __restrict__ mem, int64_t T, int64_t M, int64_t reset) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < M;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t a = static_cast<opmath_t>(alpha[m]);
    const opmath_t b = static_cast<opmath_t>(beta[m]);
    const opmath_t th = static_cast<opmath_t>(theta[m]);
    opmath_t S = static_cast<opmath_t>(syn0[m]);
    opmath_t U = static_cast<opmath_t>(mem0[m]);
    for (int64_t t = 0; t < T; ++t) {
      const opmath_t r = (U - th > opmath_t(0)) ? opmath_t(1) : opmath_t(0);
      S = mul_rn(a, S) + static_cast<opmath_t>(cur[t * M + m]);
      const opmath_t base = mul_rn(b, U) + S;
      if (reset == SUBTRACT) {
        U = base - mul_rn(r, th);
      } else if (reset == ZERO) {
        U = base - mul_rn(base, r);
      } else {
        U = base;
      }
      syn[t * M + m] = static_cast<scalar_t>(S);
      mem[t * M + m] = static_cast<scalar_t>(U);
    }
  }
}

// Backwards in t: dm[t] = eps[t] + a[t+1]*dm[t+1], ds[t] = (c[t]*dm[t] + gsyn[t]) +
// alpha*ds[t+1], dcur = ds, dsyn0 = alpha*ds[0], dmem0 = a[0]*dm[0]; a = beta and c = 1,
// or for the zero reset a = beta*(1 - r[t]) and c = 1 - r[t] (r[t] = bit t*M + m of rbits).
template <typename scalar_t>
__global__ void syn_bwd_kernel(const scalar_t* __restrict__ eps, const scalar_t* __restrict__ gsyn,
                               const scalar_t* __restrict__ alpha,
                               const scalar_t* __restrict__ beta,
                               const int32_t* __restrict__ rbits, scalar_t* __restrict__ dcur,
                               scalar_t* __restrict__ dsyn0, scalar_t* __restrict__ dmem0,
                               int64_t T, int64_t M, bool zero_reset) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < M;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t al = static_cast<opmath_t>(alpha[m]);
    const opmath_t b = static_cast<opmath_t>(beta[m]);
    opmath_t dm = opmath_t(0), ds = opmath_t(0), a_next = opmath_t(0);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t k = t * M + m;
      dm = static_cast<opmath_t>(eps[k]) + mul_rn(a_next, dm);
      const opmath_t g = gsyn ? static_cast<opmath_t>(gsyn[k]) : opmath_t(0);
      if (zero_reset) {
        const opmath_t keep = opmath_t(1) - (get_bit(rbits, k) ? opmath_t(1) : opmath_t(0));
        ds = (mul_rn(keep, dm) + g) + mul_rn(al, ds);
        a_next = mul_rn(b, keep);
      } else {
        ds = (dm + g) + mul_rn(al, ds);
        a_next = b;
      }
      dcur[k] = static_cast<scalar_t>(ds);
    }
    dsyn0[m] = static_cast<scalar_t>(mul_rn(al, ds));
    dmem0[m] = static_cast<scalar_t>(mul_rn(a_next, dm));
  }
}

// A per-neuron [M] vector on the device and in the dtype of `first`.
void check_per_neuron(const at::Tensor& t, const at::Tensor& first, int64_t M, const char* op,
                      const char* name, const char* first_name) {
  check_same_device(t, first, op, name);
  check_same_dtype(t, first, op, name, first_name);
  check_dim(t, 1, op, name);
  check_numel(t, M, op, name, "one per neuron, the second dimension of the sequence");
}

std::tuple<at::Tensor, at::Tensor> syn_fwd_cuda(const at::Tensor& cur_in,
                                                const at::Tensor& syn0_in,
                                                const at::Tensor& mem0_in,
                                                const at::Tensor& alpha_in,
                                                const at::Tensor& beta_in,
                                                const at::Tensor& theta_in, int64_t reset) {
  constexpr const char* op = "syn_fwd";
  check_cuda(cur_in, op, "cur");
  check_floating(cur_in, op, "cur");
  check_dim(cur_in, 2, op, "cur");
  check_reset_id(reset, op);
  const int64_t T = cur_in.size(0);
  const int64_t M = cur_in.size(1);
  const std::pair<const at::Tensor*, const char*> per_neuron[] = {
      {&syn0_in, "syn0"}, {&mem0_in, "mem0"}, {&alpha_in, "alpha"}, {&beta_in, "beta"},
      {&theta_in, "theta"}};
  for (const auto& [t, name] : per_neuron) check_per_neuron(*t, cur_in, M, op, name, "cur");
  const c10::cuda::CUDAGuard guard(cur_in.device());
  const at::Tensor cur = cur_in.contiguous();
  const at::Tensor syn0 = syn0_in.contiguous();
  const at::Tensor mem0 = mem0_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  const at::Tensor beta = beta_in.contiguous();
  const at::Tensor theta = theta_in.contiguous();
  at::Tensor syn = at::empty({T, M}, cur.options());
  at::Tensor mem = at::empty({T, M}, cur.options());
  if (T == 0 || M == 0) return {syn, mem};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cur.scalar_type(), "syn_fwd", [&] {
    syn_fwd_kernel<scalar_t><<<grid_for(M), kThreads, 0, stream()>>>(
        cur.data_ptr<scalar_t>(), syn0.data_ptr<scalar_t>(), mem0.data_ptr<scalar_t>(),
        alpha.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), theta.data_ptr<scalar_t>(),
        syn.data_ptr<scalar_t>(), mem.data_ptr<scalar_t>(), T, M, reset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {syn, mem};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> syn_bwd_cuda(const at::Tensor& eps_in,
                                                            const at::Tensor& gsyn_in,
                                                            const at::Tensor& alpha_in,
                                                            const at::Tensor& beta_in,
                                                            const at::Tensor& rbits_in,
                                                            int64_t reset) {
  constexpr const char* op = "syn_bwd";
  check_cuda(eps_in, op, "eps_mem");
  check_floating(eps_in, op, "eps_mem");
  check_dim(eps_in, 2, op, "eps_mem");
  check_reset_id(reset, op);
  const int64_t T = eps_in.size(0);
  const int64_t M = eps_in.size(1);
  const bool has_gsyn = gsyn_in.numel() > 0;
  if (has_gsyn) {  // empty: no gradient into syn
    check_same_device(gsyn_in, eps_in, op, "grad_syn");
    check_same_dtype(gsyn_in, eps_in, op, "grad_syn", "eps_mem");
    TORCH_CHECK(gsyn_in.sizes() == eps_in.sizes(), op,
                ": `grad_syn` must be empty (no gradient) or have the shape of `eps_mem` ",
                eps_in.sizes(), ", got ", gsyn_in.sizes());
  }
  check_per_neuron(alpha_in, eps_in, M, op, "alpha", "eps_mem");
  check_per_neuron(beta_in, eps_in, M, op, "beta", "eps_mem");
  const bool zero_reset = reset == ZERO;
  if (zero_reset) {  // rbits is read only for the zero reset
    check_bits(rbits_in, eps_in, op, "rbits");
    check_numel(rbits_in, (T * M + 31) / 32, op, "rbits",
                "one int32 word per 32 elements of eps_mem, for reset=zero");
  }
  const c10::cuda::CUDAGuard guard(eps_in.device());
  const at::Tensor eps = eps_in.contiguous();
  const at::Tensor gsyn = has_gsyn ? gsyn_in.contiguous() : at::Tensor();
  const at::Tensor alpha = alpha_in.contiguous();
  const at::Tensor beta = beta_in.contiguous();
  const at::Tensor rbits = zero_reset ? rbits_in.contiguous() : at::Tensor();
  at::Tensor dcur = at::empty({T, M}, eps.options());
  at::Tensor dsyn0 = at::empty({M}, eps.options());
  at::Tensor dmem0 = at::empty({M}, eps.options());
  if (M == 0) return {dcur, dsyn0, dmem0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, eps.scalar_type(), "syn_bwd", [&] {
    syn_bwd_kernel<scalar_t><<<grid_for(M), kThreads, 0, stream()>>>(
        eps.data_ptr<scalar_t>(), has_gsyn ? gsyn.data_ptr<scalar_t>() : nullptr,
        alpha.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
        zero_reset ? rbits.data_ptr<int32_t>() : nullptr, dcur.data_ptr<scalar_t>(),
        dsyn0.data_ptr<scalar_t>(), dmem0.data_ptr<scalar_t>(), T, M, zero_reset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dcur, dsyn0, dmem0};
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse

TORCH_LIBRARY_IMPL(snntorch_sparse, CUDA, m) {
  m.impl("syn_fwd", &snntorch_sparse::cuda::syn_fwd_cuda);
  m.impl("syn_bwd", &snntorch_sparse::cuda::syn_bwd_cuda);
}
