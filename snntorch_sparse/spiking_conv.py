"""``SpikingConv2d``: a 2-D convolution and a Leaky neuron over the whole sequence."""

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from . import _conv, _fused, _rate
from ._layer import SpikingLayer, positive_int
from ._ops import compute_dtype
from .reference import NONE
from .surrogate import DEFAULT_B_TH

__all__ = ["SpikingConv2d"]


def _padding(padding, kernel, stride, dilation):
    """``padding`` as a pair: an int, a pair, ``"valid"`` or ``"same"`` (stride 1, and a
    symmetric padding must exist: ``dilation·(kernel − 1)`` even)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' needs stride=1, as in nn.Conv2d")
        if any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)):
            raise ValueError("padding='same' with an even dilation·(kernel_size − 1) needs an "
                             "asymmetric padding, which SpikingConv2d does not support; pad "
                             "the input (F.pad) or choose an odd kernel")
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    pad = _pair(padding)
    if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pad):
        raise ValueError(f"padding must be a non-negative int, a pair, 'valid' or 'same', "
                         f"got {padding!r}")
    return pad


def _pair_of(value, name, minimum):
    pair = _pair(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                 and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


class SpikingConv2d(SpikingLayer):
    r"""A 2-D convolution feeding Leaky neurons, over the whole sequence at once.

    For ``X`` of shape ``[T, B, C_in, H, W]``, per neuron (channel ``o``, pixel ``y, x``)
    and step ``t = 1..T``:

    .. math::

        I[t] = \mathrm{conv2d}(X[t], W) + b, \qquad
        U[t] = βU[t-1] + I[t] - r[t]θ, \qquad r[t] = H(U[t-1] - θ),

        S[t] = γ\,H(U[t] - θ), \qquad
        \frac{\partial S}{\partial U} = γ\,g(U - θ)\,[|U - θ| < B_{th}]

    (reset "zero": ``U[t] = βU[t-1](1 - r[t]) + I[t]``; "none": no reset term). Exactly
    an ``nn.Conv2d`` followed by ``snntorch.Leaky`` run step by step (same weight layout
    and default initialisation, β clamped to [0, 1], surrogate atan(α=2) by default),
    computed as one convolution over all ``T·B`` images and one fused LIF kernel.
    ``readout=True``: infinite threshold, no reset; the layer returns its membrane.

    Backward ``"sparse"`` (DESIGN.md §2, "Convolution"): the neuron keeps only its band;
    the input is kept compact when at most 25 % of it is nonzero (spikes), and then
    ``∂W`` is formed over its nonzeros (≈ ``nnz(X)·C_out·K²/groups`` multiply-adds); the
    input gradient ``conv_transpose(Δ, W)`` is computed only inside the upstream layer's
    band when the input is the spike output of one of our layers (paper eq. 12).
    ``"dense"``: the full surrogate and the library's dense convolution gradients (the
    fair baseline; snnTorch's gradient). ``"rate"``: rate-based backpropagation — keeps
    the input rate ``x̄`` and the eligibility ``e`` (``[B, …]``, independent of T);
    ``∂W = conv2d\_weight(x̄, e ⊙ Σ_t ∂L/∂S[t])`` (see :class:`SpikingLinear`).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as ``nn.Conv2d`` (zero padding; ``padding`` may be ``"valid"`` or ``"same"``).
        beta: decay (keyword), a float or a tensor of 1 or ``out_channels`` elements
            (one per channel).
        threshold: θ, same forms as ``beta``.
        spike_grad, b_th, reset_mechanism, learn_beta, learn_threshold, readout,
        backward, graded_spikes_factor, device, dtype: as :class:`SpikingLinear`.

    Example::

        >>> import torch
        >>> import snntorch_sparse as snn
        >>> conv = snn.SpikingConv2d(1, 12, 5, beta=0.5, b_th=0.2)
        >>> x = (torch.rand(25, 8, 1, 28, 28) < 0.1).float()   # [T, B, C, H, W] spikes
        >>> spk = conv(x)                                        # [25, 8, 12, 24, 24]
        >>> spk.sum().backward()
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, beta, threshold=1.0, spike_grad=None,
                 b_th=DEFAULT_B_TH, reset_mechanism="subtract", learn_beta=False,
                 learn_threshold=False, readout=False, backward="sparse",
                 graded_spikes_factor=1.0, device=None, dtype=None):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.kernel_size = _pair_of(kernel_size, "kernel_size", 1)
        self.stride = _pair_of(stride, "stride", 1)
        self.dilation = _pair_of(dilation, "dilation", 1)
        self.padding = _padding(padding, self.kernel_size, self.stride, self.dilation)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()
        self._init_neuron(out_channels, "out_channels", beta, threshold, spike_grad, b_th,
                          reset_mechanism, learn_beta, learn_threshold, readout, backward,
                          graded_spikes_factor)

    @property
    def _geo(self):
        return _conv.ConvGeometry(self.stride, self.padding, self.dilation, self.groups)

    def reset_parameters(self):
        """``nn.Conv2d``'s default initialisation (Kaiming-uniform weight and bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _neuron_param(self, t):
        return t.view(-1, 1, 1) if t.dim() == 1 else t  # per channel, over the pixels

    def out_size(self, hw):
        """``(Ho, Wo)`` of an ``hw = (H, W)`` input."""
        return self._geo.out_size(hw, self.kernel_size)

    def _check(self, x, mem):
        expect = f"[T, B, in_channels={self.in_channels}, H, W]"
        self._check_sequence(x, lambda x: x.dim() == 5 and x.shape[2] == self.in_channels,
                             expect)
        ho, wo = self.out_size(x.shape[-2:])
        if ho <= 0 or wo <= 0:
            raise ValueError(f"input images {tuple(x.shape[-2:])} are smaller than the "
                             f"dilated kernel {self.kernel_size} (dilation {self.dilation}, "
                             f"padding {self.padding})")
        self._check_mem(mem, (x.shape[1], self.out_channels, ho, wo),
                        "[B, out_channels, Ho, Wo]")

    def _forward_fused(self, x, beta, theta, mem, cfg):
        work = compute_dtype(x)
        if work != x.dtype:  # float16/bfloat16 on the CPU: computed in float32
            cast = lambda t: None if t is None else t.to(work)  # noqa: E731
            out, mem_seq = self._conv_neuron(_fused._cast_spikes(x, work), self.weight.to(work),
                                             cast(self.bias), beta, theta, cast(mem), cfg)
            mem_seq = mem_seq.to(x.dtype)
            return ((mem_seq, mem_seq) if self.readout
                    else (_fused._cast_spikes(out, x.dtype), mem_seq))
        return self._conv_neuron(x, self.weight, self.bias, beta, theta, mem, cfg)

    def _conv_neuron(self, x, weight, bias, beta, theta, mem, cfg):
        T, B = x.shape[:2]
        cur = _conv.conv_currents(x, weight, bias, self._geo, cfg.sparse, cfg.report)
        cur = cur.view(T, B, *cur.shape[1:])
        nrn = cfg.neuron
        if self.readout:
            never = torch.full((), math.inf, dtype=cur.dtype, device=cur.device)
            _, mem_seq = _fused.lif_sequence(cur, mem, beta, never, reset=NONE,
                                             shape=nrn.shape, p=nrn.p, b_th=None)
            return mem_seq, mem_seq
        stats = {}
        spk, mem_seq = _fused.lif_sequence(
            cur, mem, beta, theta, gamma=nrn.gamma, reset=nrn.reset, shape=nrn.shape,
            p=nrn.p, b_th=nrn.b_th if nrn.banded else None, stats=stats)
        cfg.report["in_band"] = stats["in_band"]
        return spk, mem_seq

    def _forward_rate(self, x, beta, theta, mem, cfg):
        return _rate.rate_spiking_layer(x, self.weight, self.bias, beta, theta, mem,
                                        cfg.neuron, self.readout, self._geo, "SpikingConv2d")

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, " + self._neuron_repr())
