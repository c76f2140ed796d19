r"""Convolution currents with the sparse backward (DESIGN.md §2, "Convolution").

The currents of a ``SpikingConv2d`` are ``I = conv2d(X, W) + b`` over all ``R = T·B``
images at once (time folded into the batch): in the sparse mode on the CPU, when the input
is sparse (spikes), summed over its nonzeros only (event-driven, ``ops.conv_fwd_events``;
equal to the library's convolution up to the order of the sums), else one library
convolution. The neuron scan
after it is ``_fused.lif_sequence``, so of the neuron only its band is kept; of the
convolution :class:`_ConvCurrents` keeps:

* the input in compact form (CSC over ``[R, C_in·H·W]``, see ``_fused.compact_input``)
  when at most :data:`COMPACT_INPUT_MAX_DENSITY` of it is nonzero — spikes —, else as is;
* the weight, only when the input gradient is needed.

Backward, with ``Δ = ∂L/∂I`` from the neuron scan:

.. math::

    ∂W[o,i,k_y,k_x] = \sum_{r,y,x} Δ[r,o,y,x]\,X[r,i,ys+k_yd-p,\,xs+k_xd-p]

over the input's nonzeros (``ops.conv_dw_spikes``, ≈ ``nnz(X)·C_out·K²/groups``
multiply-adds) when the input was kept compact, else the library's dense weight
gradient; and ``∂X = \mathrm{conv\_transpose}(Δ, W)`` only where the upstream layer's
band is set (``ops.conv_dx_masked``, ≈ ``nnz(band)·C_out·K²/groups``) when the input is
the band-tagged spike output of one of our layers — the upstream multiplies it by its
surrogate, which is 0 outside its band (paper eq. 12) — and that band holds at most
:data:`MASKED_DX_MAX_DENSITY` of the input; else the dense transpose.

Not done (left for later): the trace form of ∂W, which would exploit the *output* band
(it needs the neuron's ε inside this node); so ∂W is sparse only in the input spikes.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torch.nn import grad as nn_grad

from ._fused import _needs, band_of, band_size, compact_input, few_nonzeros
from ._ops import empty_output, first_order_only, ops

#: An input whose share of nonzeros is at most this is kept compact and its ∂W is formed
#: over the nonzeros; a denser one goes to the library's dense convolution gradient.
COMPACT_INPUT_MAX_DENSITY = 0.25

#: On the CPU, the sparse mode's forward sums the input's nonzeros only (``ops.conv_fwd_events``:
#: ≈ ``nnz(X)·C_out·K²/groups`` multiply-adds) when at most this share of the input is
#: nonzero; above, the library's dense convolution is faster (measured break-even near 20 %
#: on the 2-core CPU of docs/benchmarks.md). The CUDA forward stays the library's (the
#: kernel exists and is tested, but has not been timed on a GPU).
EVENT_FORWARD_MAX_DENSITY = 0.1

#: The input gradient is computed only inside the upstream band when at most this share of
#: the input is in it; above, the library's dense transpose convolution is faster (on the
#: 2-core CPU of docs/benchmarks.md the masked kernel breaks even near 20 %).
MASKED_DX_MAX_DENSITY = 0.15


@dataclass(frozen=True)
class ConvGeometry:
    """``stride``, ``padding``, ``dilation`` (pairs) and ``groups`` of a 2-D convolution."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    def args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def out_size(self, in_hw, kernel):
        """``(Ho, Wo)`` of an ``in_hw`` image under a ``kernel``-sized filter."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip(in_hw, kernel, self.stride, self.padding, self.dilation))


class _ConvCurrents(torch.autograd.Function):
    """``conv2d(x, W) + b`` with the sparse backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, up_bits, geo, sparse, report, track):
        need_x, need_w = _needs(ctx, track)[:2]
        # A traced graph keeps the input dense and the library's convolution (compaction
        # and the forward's choice depend on the data).
        eager = sparse and not torch.compiler.is_compiling()
        csc = (compact_input(x.reshape(x.shape[0], -1), COMPACT_INPUT_MAX_DENSITY)
               if need_w and eager else None)
        ctx.x_compact = csc is not None
        events = (eager and x.device.type == "cpu"
                  and few_nonzeros(x, csc, need_w, EVENT_FORWARD_MAX_DENSITY))
        cur = (ops.conv_fwd_events(x, weight, bias, *geo.args()) if events
               else F.conv2d(x, weight, bias, *geo.args()))
        if report is not None and not torch.compiler.is_compiling():
            report["fwd"] = "events" if events else "dense"
        saved_x = (None, None, None, None)
        if need_w:
            saved_x = (None,) + csc if ctx.x_compact else (x, None, None, None)
        ctx.save_for_backward(*saved_x, weight if need_x else None,
                              up_bits if (need_x and sparse) else None)
        ctx.geo = geo
        ctx.x_shape = x.shape
        ctx.w_shape = weight.shape
        ctx.report = report
        ctx.set_materialize_grads(False)
        return cur

    @staticmethod
    @first_order_only("SpikingConv2d")
    def backward(ctx, grad):
        x, colptr, rows, xvals, weight, up_bits = ctx.saved_tensors
        if grad is None:
            return (None,) * 8
        geo = ctx.geo  # grad in any layout: the kernels take it channels-last
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        in_shape = list(ctx.x_shape[1:])
        d_x = d_w = None
        if need_x:
            if up_bits is not None:
                d_x = ops.conv_dx_masked(grad, weight, up_bits, in_shape, *geo.args())
            else:
                d_x = nn_grad.conv2d_input(ctx.x_shape, weight, grad, *geo.args())
        if need_w:
            if ctx.x_compact:
                d_w = ops.conv_dw_spikes(grad, colptr, rows, xvals, in_shape,
                                         list(ctx.w_shape[2:]), *geo.args())
            else:
                d_w = nn_grad.conv2d_weight(x, ctx.w_shape, grad, *geo.args())
        if ctx.report is not None and not torch.compiler.is_compiling():
            if need_w:
                ctx.report["dw"] = "spikes" if ctx.x_compact else "dense"
            if need_x:
                ctx.report["dx_masked"] = up_bits is not None
        d_b = None
        if need_b:  # summing a contiguous grad over its planes first is ~4x faster
            d_b = grad.flatten(2).sum(2).sum(0) if grad.is_contiguous() else grad.sum((0, 2, 3))
        return d_x, d_w, d_b, None, None, None, None, None


class _StandardLayout(torch.autograd.Function):
    """``x.contiguous()`` of a channels-last ``x`` whose gradient goes back channels-last:
    the event-driven forward returns its currents channels-last, a pooling over them runs
    fastest in that layout, and its backward too — if its gradient arrives channels-last."""

    @staticmethod
    def forward(ctx, x):
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


def standard_layout(x):
    """``x`` in the standard (contiguous) layout; from channels-last, with the gradient
    handed back channels-last (:class:`_StandardLayout`)."""
    if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    return _StandardLayout.apply(x)


def _layout(x):
    """The memory format a pooling of ``x`` writes in (PyTorch's choice for a 4-D input)."""
    return (torch.channels_last if not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


class _MaxPool2d(torch.autograd.Function):
    """``F.max_pool2d`` of a 4-D CPU input (``args``: kernel size, stride, padding,
    dilation, ceil mode) writing its output, indices and input gradient into memory from
    :func:`empty_output`: on tutorial 6's ``[3200, 64, 8, 8]`` currents a library pooling
    spends most of its time in the page faults of those fresh buffers."""

    @staticmethod
    def forward(ctx, x, args):
        fmt = _layout(x)
        shape = torch.ops.aten.max_pool2d_with_indices(
            torch.empty(x.shape, device="meta"), *args)[0].shape
        out = empty_output(shape, x.dtype, x.device, fmt)
        idx = empty_output(shape, torch.int64, x.device, fmt)
        torch.ops.aten.max_pool2d_with_indices.out(x, *args, out=out, indices=idx)
        ctx.save_for_backward(x, idx)
        ctx.args = args
        return out

    @staticmethod
    @first_order_only("max pooling (fused)")
    def backward(ctx, grad):
        x, idx = ctx.saved_tensors
        d_x = empty_output(x.shape, x.dtype, x.device, _layout(x))
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            grad, x, *ctx.args, idx, grad_input=d_x)
        return d_x, None


def max_pool2d(x, pool):
    """``pool(x)`` for an ``nn.MaxPool2d``, through :class:`_MaxPool2d` for a 4-D CPU
    input (same values and gradient; its backward is first order only)."""
    if x.dim() != 4 or x.device.type != "cpu" or pool.return_indices:
        return pool(x)
    k = _pair(pool.kernel_size)
    args = (k, _pair(pool.stride or k), _pair(pool.padding), _pair(pool.dilation),
            bool(pool.ceil_mode))
    return _MaxPool2d.apply(x, args)


def conv_currents(x, weight, bias, geo, sparse, report=None):
    """``conv2d(X[t], W) + b`` of ``x [T, B, C_in, H, W]`` as ``[T·B, C_out, Ho, Wo]`` (one
    convolution, time folded into the batch), with the sparse backward when ``sparse``;
    ``x``'s band tag, if any, limits its gradient."""
    up_bits = band_of(x) if sparse else None
    size = band_size(x)
    if up_bits is not None and size is not None and size > MASKED_DX_MAX_DENSITY * x.numel():
        up_bits = None
    return _ConvCurrents.apply(x.flatten(0, 1), weight, bias, up_bits, geo, sparse, report,
                               torch.is_grad_enabled())
