// The geometry of a 2-D convolution given to the conv ops (in_shape, kernel, stride, padding,
// dilation, groups and delta's shape), checked once on the host by the CPU and CUDA ops
// alike: every error names the argument, and every size the kernels derive fits int64.
#pragma once
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "sizes.h"

namespace snntorch_sparse {

struct ConvGeometry {
  int64_t R, C_in, H, W, C_out, Ho, Wo;
  int64_t kH, kW, sH, sW, pH, pW, dH, dW;
  int64_t groups, cin_g, cout_g;  // channels per group: C_in/groups, C_out/groups
  int64_t out_sample;             // C_out*Ho*Wo: elements of delta per sample
  int64_t chw;                    // C_in*H*W: the columns of the input's CSC
  int64_t in_numel;               // R*C_in*H*W: elements of dx, bits of the mask
  int64_t weight_numel;           // C_out*cin_g*kH*kW
};

namespace detail {

inline void check_pair(c10::IntArrayRef v, int64_t min, const char* op, const char* name) {
  TORCH_CHECK(v.size() == 2 && v[0] >= min && v[1] >= min, op, ": `", name, "` must be 2 integers >= ",
              min, " ([height, width]), got ", v);
}

// Output length along one axis; the kernel's dilated extent must fit the padded input.
inline int64_t out_size(int64_t n, int64_t k, int64_t s, int64_t p, int64_t d, const char* op,
                        const char* axis) {
  const int64_t padded = checked_add(n, checked_mul(2, p, op, "2*padding"), op, "input + 2*padding");
  const int64_t extent = checked_add(checked_mul(d, k - 1, op, "dilation*(kernel-1)"), 1, op,
                                     "dilated kernel extent");
  TORCH_CHECK(extent <= padded, op, ": the dilated kernel (", extent, " along ", axis,
              ") must fit the padded input (", padded, " = `in_shape` + 2*`padding`)");
  return (padded - extent) / s + 1;
}

}  // namespace detail

// delta_sizes: the sizes of `delta` (must be 4-D [R, C_out, Ho, Wo]); kernel: [kH, kW].
inline ConvGeometry conv_geometry(c10::IntArrayRef delta_sizes, c10::IntArrayRef in_shape,
                                  c10::IntArrayRef kernel, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                  const char* op) {
  TORCH_CHECK(in_shape.size() == 3 && in_shape[0] >= 1 && in_shape[1] >= 1 && in_shape[2] >= 1, op,
              ": `in_shape` must be 3 integers >= 1 ([C_in, H, W]), got ", in_shape);
  detail::check_pair(kernel, 1, op, "kernel");
  detail::check_pair(stride, 1, op, "stride");
  detail::check_pair(padding, 0, op, "padding");
  detail::check_pair(dilation, 1, op, "dilation");
  TORCH_CHECK(delta_sizes.size() == 4, op, ": `delta` must be 4-D [R, C_out, Ho, Wo], got shape ",
              delta_sizes);
  ConvGeometry g;
  g.R = delta_sizes[0];
  g.C_out = delta_sizes[1];
  g.C_in = in_shape[0];
  g.H = in_shape[1];
  g.W = in_shape[2];
  g.kH = kernel[0];
  g.kW = kernel[1];
  g.sH = stride[0];
  g.sW = stride[1];
  g.pH = padding[0];
  g.pW = padding[1];
  g.dH = dilation[0];
  g.dW = dilation[1];
  g.groups = groups;
  TORCH_CHECK(groups >= 1 && g.C_in % groups == 0 && g.C_out % groups == 0, op,
              ": `groups` must be >= 1 and divide C_in = `in_shape`[0] (", g.C_in,
              ") and C_out = `delta`.shape[1] (", g.C_out, "), got ", groups);
  g.cin_g = g.C_in / groups;
  g.cout_g = g.C_out / groups;
  g.Ho = detail::out_size(g.H, g.kH, g.sH, g.pH, g.dH, op, "H");
  g.Wo = detail::out_size(g.W, g.kW, g.sW, g.pW, g.dW, op, "W");
  TORCH_CHECK(delta_sizes[2] == g.Ho && delta_sizes[3] == g.Wo, op, ": `delta` must be [R, C_out, ",
              g.Ho, ", ", g.Wo, "] (Ho = (H + 2p - d(k-1) - 1)/s + 1 of `in_shape` ", in_shape,
              "), got shape ", delta_sizes);
  g.out_sample = checked_mul(checked_mul(g.Ho, g.Wo, op, "Ho*Wo"), g.C_out, op, "C_out*Ho*Wo");
  g.chw = checked_mul(checked_mul(g.C_in, g.H, op, "C_in*H"), g.W, op, "C_in*H*W");
  g.in_numel = checked_mul(g.R, g.chw, op, "R*C_in*H*W");
  g.weight_numel = checked_mul(
      checked_mul(checked_mul(g.C_out, g.cin_g, op, "C_out*C_in/groups"), g.kH, op, "weight numel"),
      g.kW, op, "weight numel");
  return g;
}

// The geometry of a convolution of `x` [R, C_in, H, W] with `weight` [C_out, C_in/groups, kH, kW]
// (the forward: there is no delta yet; its sizes follow from the others).
inline ConvGeometry conv_geometry_of_input(c10::IntArrayRef x_sizes, c10::IntArrayRef weight_sizes,
                                          c10::IntArrayRef stride, c10::IntArrayRef padding,
                                          c10::IntArrayRef dilation, int64_t groups, const char* op) {
  detail::check_pair(stride, 1, op, "stride");
  detail::check_pair(padding, 0, op, "padding");
  detail::check_pair(dilation, 1, op, "dilation");
  TORCH_CHECK(groups >= 1 && x_sizes[1] % groups == 0 && weight_sizes[0] % groups == 0 &&
                  weight_sizes[1] * groups == x_sizes[1],
              op, ": `weight` must be [C_out, C_in/groups, kH, kW] with C_in = `x`.shape[1] (",
              x_sizes[1], ") and groups = ", groups, " dividing C_in and C_out, got shape ",
              weight_sizes);
  TORCH_CHECK(weight_sizes[2] >= 1 && weight_sizes[3] >= 1, op,
              ": `weight` must have a kernel of at least 1x1, got shape ", weight_sizes);
  const int64_t Ho = detail::out_size(x_sizes[2], weight_sizes[2], stride[0], padding[0], dilation[0], op, "H");
  const int64_t Wo = detail::out_size(x_sizes[3], weight_sizes[3], stride[1], padding[1], dilation[1], op, "W");
  return conv_geometry({x_sizes[0], weight_sizes[0], Ho, Wo}, x_sizes.slice(1), weight_sizes.slice(2),
                       stride, padding, dilation, groups, op);
}

}  // namespace snntorch_sparse
