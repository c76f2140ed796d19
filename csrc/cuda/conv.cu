// CUDA kernels of the 2-D convolution's sparse gradients, `conv_dw_spikes` and `conv_dx_masked`,
// and of its event-driven forward, `conv_fwd_events` (math: the functions of the same names in
// snntorch_sparse/reference.py). The input's CSC is
// over [R, C_in*H*W] (column i = (c*H + y)*W + x); delta is [R, C_out, Ho, Wo], the weight
// [C_out, C_in/groups, kH, kW]. Indices outside their range are skipped rather than checked on
// the host, which would need a device sync.
#include <torch/library.h>

#include "conv_geometry.h"
#include "cuda_utils.cuh"
#include "sizes.h"

namespace snntorch_sparse {
namespace cuda {
namespace {

// The output position that kernel tap (ky, kx) connects input position (y, x) to, if any:
// oy = (y + pH - ky*dH)/sH integral and in [0, Ho), likewise ox.
__device__ __forceinline__ bool tap_target(const ConvGeometry& g, int64_t y, int64_t x, int64_t ky,
                                           int64_t kx, int64_t& oy, int64_t& ox) {
  const int64_t ty = y + g.pH - ky * g.dH, tx = x + g.pW - kx * g.dW;
  if (ty < 0 || tx < 0 || ty % g.sH != 0 || tx % g.sW != 0) return false;
  oy = ty / g.sH;
  ox = tx / g.sW;
  return oy < g.Ho && ox < g.Wo;
}

// -------------------------------------------------------------------- conv_dw_spikes
// Block i = input column (c, y, x): thread j = (o in c's group, tap) sums x_k*delta[r_k, o, oy, ox]
// over the column's nonzeros k (the target (oy, ox) depends on the column and tap only), then
// adds it to acc[o, c mod cin_g, tap], which the other columns of channel c also hit: atomics
// on a float/double accumulator. xvals == nullptr: every x_k is 1.
template <typename scalar_t>
__global__ void conv_dw_spikes_kernel(const scalar_t* __restrict__ delta,
                                      const int64_t* __restrict__ colptr,
                                      const int32_t* __restrict__ rows,
                                      const scalar_t* __restrict__ xvals,
                                      at::opmath_type<scalar_t>* __restrict__ acc, ConvGeometry g,
                                      int64_t nnz) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t i = blockIdx.x;
  int64_t lo, hi;
  clamp_range(colptr, i, nnz, lo, hi);
  if (lo == hi) return;
  const int64_t c = i / (g.H * g.W), y = i / g.W % g.H, x = i % g.W;
  const int64_t grp = c / g.cin_g, K = g.kH * g.kW;
  for (int64_t j = threadIdx.x; j < g.cout_g * K; j += blockDim.x) {
    const int64_t o = grp * g.cout_g + j / K, tap = j % K;
    int64_t oy, ox;
    if (!tap_target(g, y, x, tap / g.kW, tap % g.kW, oy, ox)) continue;
    const scalar_t* d = delta + (o * g.Ho + oy) * g.Wo + ox;
    opmath_t sum = opmath_t(0);
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t r = rows[k];
      if (r < 0 || r >= g.R) continue;
      const opmath_t dv = static_cast<opmath_t>(d[r * g.out_sample]);
      sum += xvals != nullptr ? static_cast<opmath_t>(xvals[k]) * dv : dv;
    }
    atomicAdd(acc + (o * g.cin_g + c % g.cin_g) * K + tap, sum);
  }
}

// -------------------------------------------------------------------- conv_dx_masked
// A thread per input element e = (r, c, y, x): 0 where its bit is clear, else the sum over
// the group's output channels and the taps of delta[r, o, oy, ox]*weight[o, c mod cin_g, tap].
// Neighbouring threads have neighbouring x, hence mostly neighbouring ox: coalesced reads.
template <typename scalar_t>
__global__ void conv_dx_masked_kernel(const scalar_t* __restrict__ delta,
                                      const scalar_t* __restrict__ weight,
                                      const int32_t* __restrict__ bits, scalar_t* __restrict__ out,
                                      ConvGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t K = g.kH * g.kW, HoWo = g.Ho * g.Wo;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < g.in_numel;
       e += int64_t(gridDim.x) * blockDim.x) {
    if (!get_bit(bits, e)) {
      out[e] = scalar_t(0);
      continue;
    }
    const int64_t r = e / g.chw, i = e % g.chw;
    const int64_t c = i / (g.H * g.W), y = i / g.W % g.H, x = i % g.W;
    const int64_t o0 = c / g.cin_g * g.cout_g;
    const scalar_t* d0 = delta + r * g.out_sample + o0 * HoWo;
    const scalar_t* w0 = weight + (o0 * g.cin_g + c % g.cin_g) * K;
    opmath_t sum = opmath_t(0);
    for (int64_t ky = 0; ky < g.kH; ++ky) {
      for (int64_t kx = 0; kx < g.kW; ++kx) {
        int64_t oy, ox;
        if (!tap_target(g, y, x, ky, kx, oy, ox)) continue;
        const scalar_t* d = d0 + oy * g.Wo + ox;
        const scalar_t* w = w0 + ky * g.kW + kx;
        for (int64_t o = 0; o < g.cout_g; ++o)
          sum += static_cast<opmath_t>(d[o * HoWo]) * static_cast<opmath_t>(w[o * g.cin_g * K]);
      }
    }
    out[e] = static_cast<scalar_t>(sum);
  }
}

// ------------------------------------------------------------------- conv_fwd_events
// A thread per (input element e = (r, c, y, x), output channel o of c's group): nothing when
// x[e] is 0, else x[e]*weight[o, c mod cin_g, tap] added at each tap's target in acc
// ([R, C_out, Ho, Wo] in opmath_t, channels-last: the threads of a warp, consecutive o, hit
// consecutive addresses), which the other inputs reaching that output also hit.
template <typename scalar_t>
__global__ void conv_fwd_events_kernel(const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ weight,
                                       at::opmath_type<scalar_t>* __restrict__ acc, ConvGeometry g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t K = g.kH * g.kW, total = g.in_numel * g.cout_g;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = j / g.cout_g;
    const opmath_t v = static_cast<opmath_t>(x[e]);
    if (v == opmath_t(0)) continue;
    const int64_t r = e / g.chw, i = e % g.chw;
    const int64_t c = i / (g.H * g.W), y = i / g.W % g.H, xx = i % g.W;
    const int64_t o = c / g.cin_g * g.cout_g + j % g.cout_g;
    const scalar_t* w = weight + (o * g.cin_g + c % g.cin_g) * K;
    opmath_t* a = acc + r * g.Ho * g.Wo * g.C_out + o;
    for (int64_t ky = 0; ky < g.kH; ++ky) {
      for (int64_t kx = 0; kx < g.kW; ++kx) {
        int64_t oy, ox;
        if (!tap_target(g, y, xx, ky, kx, oy, ox)) continue;
        atomicAdd(a + (oy * g.Wo + ox) * g.C_out, v * static_cast<opmath_t>(w[ky * g.kW + kx]));
      }
    }
  }
}

// --------------------------------------------------------------------------- host
at::Tensor conv_dw_spikes_cuda(const at::Tensor& delta_in, const at::Tensor& colptr_in,
                               const at::Tensor& rows_in, const at::Tensor& xvals_in,
                               at::IntArrayRef in_shape, at::IntArrayRef kernel, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "conv_dw_spikes";
  check_cuda(delta_in, op, "delta");
  check_floating(delta_in, op, "delta");
  const ConvGeometry g =
      conv_geometry(delta_in.sizes(), in_shape, kernel, stride, padding, dilation, groups, op);
  const Csc x = csc_arg(colptr_in, rows_in, xvals_in, delta_in, op, "delta");
  check_numel(x.colptr, checked_add(g.chw, 1, op, "C_in*H*W + 1"), op, "colptr",
              "C_in*H*W + 1 of `in_shape`");
  const c10::cuda::CUDAGuard guard(delta_in.device());
  const at::Tensor delta = delta_in.contiguous();
  const auto opmath_dtype = at::toOpMathType(delta.scalar_type());
  at::Tensor acc = at::zeros({g.C_out, g.cin_g, g.kH, g.kW}, delta.options().dtype(opmath_dtype));
  if (g.weight_numel > 0 && x.nnz > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "conv_dw_spikes", [&] {
      conv_dw_spikes_kernel<scalar_t>
          <<<block_per_item(g.chw, op, "input positions C_in*H*W"), threads_for(g.cout_g * g.kH * g.kW), 0,
             stream()>>>(delta.data_ptr<scalar_t>(), x.colptr.data_ptr<int64_t>(),
                         x.rows.data_ptr<int32_t>(),
                         x.xvals.numel() ? x.xvals.data_ptr<scalar_t>() : nullptr,
                         acc.data_ptr<at::opmath_type<scalar_t>>(), g, x.nnz);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return acc.to(delta.scalar_type());  // no copy when the dtype is already float/double
}

at::Tensor conv_dx_masked_cuda(const at::Tensor& delta_in, const at::Tensor& weight_in,
                               const at::Tensor& bits_in, at::IntArrayRef in_shape,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "conv_dx_masked";
  check_cuda(delta_in, op, "delta");
  check_floating(delta_in, op, "delta");
  check_same_device(weight_in, delta_in, op, "weight");
  check_same_dtype(weight_in, delta_in, op, "weight", "delta");
  TORCH_CHECK(weight_in.dim() == 4, op, ": `weight` must be 4-D [C_out, C_in/groups, kH, kW], got shape ",
              weight_in.sizes());
  const ConvGeometry g = conv_geometry(delta_in.sizes(), in_shape, weight_in.sizes().slice(2), stride,
                                       padding, dilation, groups, op);
  TORCH_CHECK(weight_in.size(0) == g.C_out && weight_in.size(1) == g.cin_g, op,
              ": `weight` must be [C_out, C_in/groups, kH, kW] = [", g.C_out, ", ", g.cin_g, ", ", g.kH,
              ", ", g.kW, "], got shape ", weight_in.sizes());
  check_bits(bits_in, delta_in, op, "bits");
  check_numel(bits_in, g.in_numel / 32 + (g.in_numel % 32 != 0), op, "bits",
              "ceil(R*C_in*H*W/32) words");
  const c10::cuda::CUDAGuard guard(delta_in.device());
  const at::Tensor delta = delta_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bits = bits_in.contiguous();
  at::Tensor out = at::empty({g.R, g.C_in, g.H, g.W}, delta.options());
  if (g.in_numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "conv_dx_masked", [&] {
    conv_dx_masked_kernel<scalar_t><<<grid_for(g.in_numel), kThreads, 0, stream()>>>(
        delta.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bits.data_ptr<int32_t>(),
        out.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor conv_fwd_events_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "conv_fwd_events";
  check_cuda(x_in, op, "x");
  check_floating(x_in, op, "x");
  check_same_device(weight_in, x_in, op, "weight");
  check_same_dtype(weight_in, x_in, op, "weight", "x");
  TORCH_CHECK(x_in.dim() == 4, op, ": `x` must be 4-D [R, C_in, H, W], got shape ", x_in.sizes());
  TORCH_CHECK(weight_in.dim() == 4, op, ": `weight` must be 4-D [C_out, C_in/groups, kH, kW], got shape ",
              weight_in.sizes());
  const ConvGeometry g =
      conv_geometry_of_input(x_in.sizes(), weight_in.sizes(), stride, padding, dilation, groups, op);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  if (has_bias) {
    check_same_device(*bias_in, x_in, op, "bias");
    check_same_dtype(*bias_in, x_in, op, "bias", "x");
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == g.C_out, op, ": `bias` must be [C_out] = [",
                g.C_out, "], got shape ", bias_in->sizes());
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const auto acc_type = at::toOpMathType(x.scalar_type());
  // Channels-last, as the CPU kernel returns it (at::zeros would drop the memory format).
  at::Tensor acc = at::empty({g.R, g.C_out, g.Ho, g.Wo}, x.options().dtype(acc_type),
                             at::MemoryFormat::ChannelsLast).zero_();
  if (acc.numel() != 0 && g.in_numel != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_fwd_events", [&] {
      conv_fwd_events_kernel<scalar_t><<<grid_for(g.in_numel * g.cout_g), kThreads, 0, stream()>>>(
          x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
          acc.data_ptr<at::opmath_type<scalar_t>>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (has_bias) acc.add_(bias_in->to(acc_type).view({1, g.C_out, 1, 1}));
  return acc.to(x.scalar_type());  // keeps the layout
}

}  // namespace
}  // namespace cuda
}  // namespace snntorch_sparse

TORCH_LIBRARY_IMPL(snntorch_sparse, CUDA, m) {
  m.impl("conv_dw_spikes", &snntorch_sparse::cuda::conv_dw_spikes_cuda);
  m.impl("conv_dx_masked", &snntorch_sparse::cuda::conv_dx_masked_cuda);
  m.impl("conv_fwd_events", &snntorch_sparse::cuda::conv_fwd_events_cuda);
}
