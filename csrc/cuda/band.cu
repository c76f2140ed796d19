// CUDA kernels of the ops `spike` and `band_grad`; the math of each is the function of the
// same name in snntorch_sparse/reference.py (band format: its module docstring).
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "band.cuh"

namespace snntorch_sparse {
namespace cuda {
namespace {

// spk = gamma*H(u) for every element, and (band mode) the band word of each group of 32
// elements with its popcount. A warp takes 32 consecutive words w0 .. w0 + 31: at step i its
// lanes read the 32 elements of word w0 + i (coalesced) and a ballot packs their band flags;
// lane i keeps that word. bits == nullptr is dense mode (spk only).
template <typename scalar_t>
__global__ void spike_kernel(const scalar_t* __restrict__ u, scalar_t* __restrict__ spk,
                             int32_t* __restrict__ bits, int32_t* __restrict__ counts, int64_t n,
                             at::opmath_type<scalar_t> b_th, at::opmath_type<scalar_t> gamma) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t nwords = (n + 31) / 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  // The loop condition is the same for all lanes of a warp, as __ballot_sync requires.
  for (int64_t w0 = warp * 32; w0 < nwords; w0 += nwarps * 32) {
    uint32_t mine = 0;
    for (int i = 0; i < 32; ++i) {
      const int64_t k = (w0 + i) * 32 + lane;
      bool in_band = false;
      if (k < n) {
        const opmath_t v = static_cast<opmath_t>(u[k]);
        spk[k] = static_cast<scalar_t>(static_cast<opmath_t>(v > opmath_t(0)) * gamma);
        in_band = ::fabs(v) < b_th;  // NaN: never in the band
      }
      const uint32_t word = __ballot_sync(0xffffffffu, in_band);
      if (lane == i) mine = word;
    }
    const int64_t w = w0 + lane;
    if (bits != nullptr && w < nwords) {
      bits[w] = static_cast<int32_t>(mine);
      counts[w] = __popc(mine);
    }
  }
}

// vals[rank(k)] = u[k] for every in-band element k.
template <typename scalar_t>
__global__ void gather_band_kernel(const scalar_t* __restrict__ u,
                                   const int32_t* __restrict__ bits,
                                   const int64_t* __restrict__ incl, scalar_t* __restrict__ vals,
                                   int64_t n) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t word = static_cast<uint32_t>(bits[k >> 5]);
    if ((word >> (k & 31)) & 1u) vals[band_rank(word, incl, k)] = u[k];
  }
}

// out = gamma*g(u)*grad on the band. Band mode: element k's u is vals[rank(k)]; out is
// grad-shaped (compact = false; 0 outside the band) or [nvals] in vals order (compact = true).
// Dense mode (bits == nullptr): u of element k is vals[k]. A rank past the end of vals (vals
// shorter than the band, which the host cannot check without a sync) is never read.
template <typename scalar_t>
__global__ void band_grad_kernel(const scalar_t* __restrict__ grad,
                                 const int32_t* __restrict__ bits,
                                 const int64_t* __restrict__ incl,
                                 const scalar_t* __restrict__ vals, int64_t nvals,
                                 scalar_t* __restrict__ out, int64_t n, int64_t shape, double p,
                                 at::opmath_type<scalar_t> gamma, bool compact) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t pos;
    const bool in_band = band_position(bits, incl, k, pos);
    if (in_band && pos < nvals) {
      const opmath_t g = surrogate_grad<opmath_t>(static_cast<opmath_t>(grad[k]),
                                                  static_cast<opmath_t>(vals[pos]), shape, p);
      out[compact ? pos : k] = static_cast<scalar_t>(g * gamma);
    } else if (!compact) {
      out[k] = scalar_t(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spike_cuda(const at::Tensor& u_in, int64_t shape,
                                                          double /*p*/, double b_th,
                                                          double gamma) {
  constexpr const char* op = "spike";
  check_cuda(u_in, op, "u");
  check_floating(u_in, op, "u");
  check_shape_id(shape, op);
  check_b_th(b_th, op);
  const c10::cuda::CUDAGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous();
  const int64_t n = u.numel();
  const int64_t nwords = (n + 31) / 32;
  const bool dense = std::isinf(b_th);  // as reference.spike: math.isinf(b_th)
  at::Tensor spk = at::empty(u.sizes(), u.options());
  at::Tensor bits = at::empty({dense ? 0 : nwords}, u.options().dtype(at::kInt));
  at::Tensor counts = at::empty({dense ? 0 : nwords}, u.options().dtype(at::kInt));
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "spike", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      // b_th is rounded to u's dtype first, as torch does when it compares a tensor with a
      // python float (so the band is reference.spike's in every dtype). One warp per 32 words.
      spike_kernel<scalar_t><<<grid_for((nwords + 31) / 32 * 32), kThreads, 0, stream()>>>(
          u.data_ptr<scalar_t>(), spk.data_ptr<scalar_t>(),
          dense ? nullptr : bits.data_ptr<int32_t>(), dense ? nullptr : counts.data_ptr<int32_t>(),
          n, static_cast<opmath_t>(static_cast<scalar_t>(b_th)), static_cast<opmath_t>(gamma));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (dense) return {spk, bits, u.reshape(-1).clone()};
  const at::Tensor incl = scan_counts(counts);
  // The op's only host sync: the number of in-band entries is the size of vals, and an
  // output's size must be known on the host to allocate it.
  const int64_t nnz = nwords > 0 ? incl[nwords - 1].item<int64_t>() : 0;
  at::Tensor vals = at::empty({nnz}, u.options());
  if (nnz > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "spike", [&] {
      gather_band_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream()>>>(
          u.data_ptr<scalar_t>(), bits.data_ptr<int32_t>(), incl.data_ptr<int64_t>(),
          vals.data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {spk, bits, vals};
}

at::Tensor band_grad_cuda(const at::Tensor& grad_in, const at::Tensor& bits_in,
                          const at::Tensor& vals_in, int64_t shape, double p, double gamma,
                          bool compact) {
  constexpr const char* op = "band_grad";
  check_band(grad_in, bits_in, vals_in, shape, op, "grad");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor bits = bits_in.contiguous();
  const at::Tensor vals = vals_in.contiguous();
  const int64_t n = grad.numel();
  const bool dense = bits.numel() == 0;
  const int64_t nvals = vals.numel();
  // Compact: zero-filled so that an entry without its band bit (malformed input) is defined.
  at::Tensor out = compact ? at::zeros({nvals}, grad.options()) : at::empty(grad.sizes(), grad.options());
  if (n == 0) return out;
  const at::Tensor incl = dense ? at::Tensor() : band_ranks(bits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "band_grad", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    band_grad_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream()>>>(
        grad.data_ptr<scalar_t>(), dense ? nullptr : bits.data_ptr<int32_t>(),
        dense ? nullptr : incl.data_ptr<int64_t>(), vals.data_ptr<scalar_t>(), nvals,
        out.data_ptr<scalar_t>(), n, shape, p, static_cast<opmath_t>(gamma), compact);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse

TORCH_LIBRARY_IMPL(snntorch_sparse, CUDA, m) {
  m.impl("spike", &snntorch_sparse::cuda::spike_cuda);
  m.impl("band_grad", &snntorch_sparse::cuda::band_grad_cuda);
}
