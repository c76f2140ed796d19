"""``fuse``: turn a per-step feed-forward ``nn.Sequential`` into whole-sequence stages.

A per-step snnTorch model is called once per time step on ``[B, ...]``; its fused form is
called once on ``[T, B, ...]``. Each module becomes one *stage*:

* a stateless module (Linear, convolution, pooling, Dropout, Flatten, ...) runs once on
  all ``T·B`` samples (time folded into the batch) — the same values as ``T`` calls;
* BatchNorm normalises each step by its own batch statistics, as ``T`` calls do;
* a neuron right after an ``nn.Linear`` / ``nn.Conv2d`` becomes, with it, one fused
  :class:`SpikingLinear` / :class:`SpikingConv2d` (sparse weight and input gradients);
  another ``nn.Conv2d`` keeps the sparse convolution backward on its own;
* any other neuron runs its whole-sequence form (``forward_sequence``).
"""

import copy

import snntorch
import torch
from torch import nn

from . import _conv, _fused
from ._layer import BACKWARDS
from .convert import _OURS, _to_ours
from .leaky import Leaky
from .spiking_conv import SpikingConv2d
from .spiking_linear import SpikingLinear
from .surrogate import DEFAULT_B_TH, band_for
from .synaptic import Synaptic

#: The neurons with a whole-sequence form: snnTorch's and our drop-ins.
_NEURONS = tuple(_OURS) + tuple(_OURS.values())

#: Modules that act on each sample on its own, so one call on ``[T·B, ...]`` equals ``T``
#: calls on ``[B, ...]``; the element-wise ones keep an upstream band tag (see
#: :class:`_Folded`).
_ELEMENTWISE = (nn.Identity, nn.Dropout, nn.Flatten, nn.Unflatten)
_PER_SAMPLE = _ELEMENTWISE + (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Dropout1d, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def _static(x):
    """Whether ``x [T, B, ...]`` holds the same values at every step by construction: a
    broadcast along time (stride 0), as ``data.expand(T, ...)`` makes of the static image
    snnTorch's tutorials show at every step."""
    return x.dim() > 1 and x.shape[0] > 1 and x.stride(0) == 0


class _Folded(nn.Module):
    """A per-sample module on ``[T, B, ...]``: one call on the ``T·B`` samples.

    An element-wise, order-preserving module (Flatten, Dropout, ...) passes the band tag
    of its input on: each output element's gradient reaches only its own input element,
    whose gradient the upstream needs only inside its band.
    """

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.keeps_band = isinstance(module, _ELEMENTWISE)

    @property
    def deterministic(self):
        """Whether equal inputs give equal outputs (Dropout draws a mask per call in
        training; a custom module may be random too)."""
        return not ((self.module.training and isinstance(self.module, _DROPOUT))
                    or not isinstance(self.module, _PER_SAMPLE))

    def forward(self, x):
        # A channels-last input (event-driven convolution currents) is processed in that
        # layout (a pooling is several times faster in it) and leaves in the standard one.
        folded = x.flatten(0, 1)
        out = (_conv.max_pool2d(folded, self.module) if type(self.module) is nn.MaxPool2d
               else self.module(folded))
        out = _conv.standard_layout(out).unflatten(0, x.shape[:2])
        return _fused.pass_band(x, out) if self.keeps_band else out


class _SparseConv(nn.Module):
    """An ``nn.Conv2d`` on ``[T, B, C, H, W]`` with the sparse backward of
    :class:`SpikingConv2d`'s currents (``_conv``): its input kept compact when it is
    spikes, ∂W over the input's nonzeros, ∂X only inside an upstream band. Used where no
    neuron follows the convolution directly (tutorial 6's Conv → MaxPool → Leaky)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.geo = _conv.ConvGeometry(conv.stride, _conv_padding(conv), conv.dilation,
                                      conv.groups)
        self._report = {}

    deterministic = True

    def forward(self, x):
        cur = _conv.conv_currents(x, self.conv.weight, self.conv.bias, self.geo, True,
                                  self._report)
        return cur.unflatten(0, x.shape[:2])


def _conv_padding(conv):
    """An ``nn.Conv2d``'s padding as a pair, or None when it has no symmetric zero-padding
    form (padding_mode other than zeros, or an asymmetric "same")."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        if any(d * (k - 1) % 2 for k, d in zip(conv.kernel_size, conv.dilation)):
            return None
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(conv.padding)


class _SequenceBatchNorm(nn.Module):
    """BatchNorm over ``[T, B, C, ...]`` with each step's own batch statistics.

    In training (or without running statistics) step ``t`` is normalised by the mean and
    biased variance of ``x[t]`` over the batch (and length/pixels), and the running
    statistics are updated ``T`` times in order — exactly ``T`` per-step calls. All steps
    go through one ``batch_norm`` call, with ``(t, c)`` as its channels. In eval mode the
    running statistics normalise every sample: one call on the ``T·B`` samples.
    """

    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        bn = self.bn
        if not (bn.training or bn.running_mean is None):
            return bn(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        T, B, C = x.shape[:3]
        if x.shape[2:].numel() == C and B == 1:
            raise ValueError("Expected more than 1 value per channel when training, got "
                             f"input size {list(x.shape[1:])}")
        per_tc = x.transpose(0, 1).reshape(B, T * C, *x.shape[3:])
        rep = (lambda p: None if p is None else p.repeat(T))  # noqa: E731
        out = torch.nn.functional.batch_norm(per_tc, None, None, rep(bn.weight), rep(bn.bias),
                                             True, 0.0, bn.eps)
        if bn.training and bn.track_running_stats:
            self._update_running(x)
        return out.view(B, T, *x.shape[2:]).transpose(0, 1)

    @torch.no_grad()
    def _update_running(self, x):
        bn = self.bn
        dims = [1] + list(range(3, x.dim()))
        n = x[0].numel() // x.shape[2]
        mean = x.mean(dims)
        var = x.var(dims, correction=0) * (n / max(n - 1, 1))
        for t in range(x.shape[0]):  # T tiny updates, in the per-step order
            bn.num_batches_tracked += 1
            f = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum)
            bn.running_mean.mul_(1 - f).add_(mean[t].to(bn.running_mean.dtype), alpha=f)
            bn.running_var.mul_(1 - f).add_(var[t].to(bn.running_var.dtype), alpha=f)


class _NeuronSequence(nn.Module):
    """A neuron's whole-sequence form from zero state (``forward_sequence``): the spikes,
    or with ``output`` every sequence the per-step neuron returns (``(spk, mem)``; a
    Synaptic's ``(spk, syn, mem)``)."""

    def __init__(self, neuron, backward, output):
        super().__init__()
        self.neuron = neuron
        self.backward = backward
        self.output = output

    def forward(self, x):
        states = 2 if isinstance(self.neuron, Synaptic) else 1
        out = self.neuron.forward_sequence(x, *[torch.zeros_like(x[0])] * states,
                                           backward=self.backward)
        return out if self.output else out[0]


class FusedSequential(nn.Module):
    """The result of :func:`fuse`: ``[T, B, ...]`` in, what the per-step loop stacks out.

    ``layers`` are the stages in order: :class:`SpikingLinear` / :class:`SpikingConv2d`
    (a Linear/Conv2d and the neuron after it), a plain ``nn.Linear`` (applies to
    ``[T, B, ...]`` as is), per-sample modules folded over time, sequence BatchNorms and
    neuron sequences. ``output``: the last neuron had ``output=True``, so
    ``(spk, mem)`` is returned.
    """

    def __init__(self, layers, output=False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output = output

    def forward(self, x):
        """``x [T, B, ...]`` → spikes ``[T, B, ...]`` (or ``(spk, mem)``, see ``output``).

        Starts from zero membranes, like the per-step model after ``utils.reset``. An input
        that is the same at every step by construction (``data.expand(T, ...)``: the static
        image of snnTorch's tutorial 6) goes through the deterministic stateless layers
        before the first neuron once, on its ``B`` samples, and is broadcast over time
        where a neuron needs the steps — the same values as ``T`` calls.
        """
        T = x.shape[0]
        once = _static(x)
        if once:
            x = x[:1]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if once and not getattr(layer, "deterministic", type(layer) is nn.Linear):
                x, once = x.expand(T, *x.shape[1:]), False
            if i == last and self.output and isinstance(layer, (SpikingLinear, SpikingConv2d)):
                return layer._run(x, None)
            x = layer(x)
        return x.expand(T, *x.shape[1:]) if once else x


def _unsupported(i, layer, why):
    name = repr(layer) if "\n" not in repr(layer) else type(layer).__name__
    return ValueError(f"fuse: layer {i} ({name}) is not supported: {why}")


def _check_neuron(i, neuron, last):
    if not neuron.init_hidden:
        raise _unsupported(i, neuron, "a neuron inside nn.Sequential needs init_hidden=True")
    if neuron.output and not last:
        raise _unsupported(i, neuron, "output=True is only allowed on the last neuron")


def _pair_fusable(lif):
    """Whether ``lif``'s options have the fused Linear/Conv2d + neuron form."""
    return not (lif.inhibition or lif.state_quant or lif.surrogate_disable
                or isinstance(lif.graded_spikes_factor, nn.Parameter)
                or (not lif.reset_delay and lif.reset_mechanism != "none"))


def _band(neuron):
    return (band_for(DEFAULT_B_TH, neuron.output) if type(neuron) in _OURS
            else neuron.b_th)


def _fused_pair(weighted, lif, backward):
    """A SpikingLinear / SpikingConv2d with ``weighted``'s Parameters (shared) and
    ``lif``'s neuron, or None when the pair has no fused form (then each runs on its own).
    """
    if not _pair_fusable(lif):
        return None
    kind = type(weighted)
    if kind is nn.Linear:
        cls, args, n = SpikingLinear, (weighted.in_features, weighted.out_features), \
            weighted.out_features
        extra = {}
    elif kind is nn.Conv2d and _conv_padding(weighted) is not None:
        cls, n = SpikingConv2d, weighted.out_channels
        args = (weighted.in_channels, n, weighted.kernel_size)
        extra = {"stride": weighted.stride, "padding": _conv_padding(weighted),
                 "dilation": weighted.dilation, "groups": weighted.groups}
    else:
        return None
    # One β/θ for the layer, or one per feature / channel ([C, 1, 1] per step).
    per_neuron = (n,) if cls is SpikingLinear else (n, 1, 1)
    for t in (lif.beta, lif.threshold):
        if t.numel() != 1 and tuple(t.shape) != per_neuron:
            return None
    learn_beta = isinstance(lif.beta, nn.Parameter)
    learn_threshold = isinstance(lif.threshold, nn.Parameter)
    try:
        layer = cls(*args, **extra, beta=lif.beta.detach().reshape(-1),
                    threshold=lif.threshold.detach().reshape(-1),
                    bias=weighted.bias is not None, spike_grad=lif.spike_grad, b_th=_band(lif),
                    reset_mechanism=lif.reset_mechanism, learn_beta=learn_beta,
                    learn_threshold=learn_threshold, backward=backward,
                    graded_spikes_factor=float(lif.graded_spikes_factor),
                    device="meta")  # every tensor is replaced below; no init, no RNG draw
    except ValueError:  # e.g. a surrogate with no compiled form: the neuron runs alone
        return None
    layer.weight = weighted.weight
    layer.bias = weighted.bias
    dev, dt = weighted.weight.device, weighted.weight.dtype
    for name, learn in (("beta", learn_beta), ("threshold", learn_threshold)):
        value = getattr(lif, name)
        # A learnable β/θ is the neuron's own Parameter, viewed per neuron in the layer.
        setattr(layer, name, value if learn else
                value.detach().clone().to(device=dev, dtype=dt).reshape(
                    getattr(layer, name).shape))
    return layer


def _sparse_neuron(neuron):
    """Our drop-in for ``neuron``: itself, or a stock neuron's copy with the default band
    that shares its Parameters and buffers (the model is not modified)."""
    if type(neuron) not in _OURS:
        return neuron
    twin = copy.copy(neuron)
    for attr in ("_parameters", "_buffers", "_modules"):
        setattr(twin, attr, dict(getattr(neuron, attr)))
    return _to_ours(twin, _band(neuron))


def _modules(model):
    """The leaves of a (nested) ``nn.Sequential``, in order."""
    for m in model:
        if type(m) is nn.Sequential:
            yield from _modules(m)
        else:
            yield m


def fuse(model, backward="sparse", stateless=()):
    """Fuse a feed-forward ``nn.Sequential`` (nested ones too) of snnTorch neurons and
    stateless layers into a whole-sequence model.

    The snnTorch idiom (tutorial 6)::

        net = nn.Sequential(nn.Conv2d(1, 12, 5), nn.MaxPool2d(2),
                            snn.Leaky(beta=0.5, init_hidden=True),
                            nn.Conv2d(12, 64, 5), nn.MaxPool2d(2),
                            snn.Leaky(beta=0.5, init_hidden=True),
                            nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
                            snn.Leaky(beta=0.5, init_hidden=True, output=True))
        for t in range(T):
            spk, mem = net(x[t])        # stacked over t by the user

    becomes ``spk_seq, mem_seq = fuse(net)(x)`` with ``x [T, B, ...]``: equal outputs, and
    gradients equal the per-step model's with our neurons' own bands. Stages:

    * ``nn.Linear`` / ``nn.Conv2d`` followed by a ``Leaky`` (ours or snnTorch's): one
      :class:`SpikingLinear` / :class:`SpikingConv2d` sharing the Linear's/Conv's weight
      and bias Parameters and a learnable β/θ Parameter (fixed β/θ, reset, surrogate,
      ``b_th`` and the graded-spikes factor are copied) — the sparse weight and input
      gradients. Options with no fused form (inhibition, state_quant, a learnable γ, a
      surrogate outside the compiled shapes, a per-neuron β/θ other than one per
      feature/channel) keep the two apart, each exact on its own.
    * any other ``nn.Conv2d`` (with ``backward="sparse"``): the same sparse backward as
      :class:`SpikingConv2d`'s convolution — ∂W over its input spikes, ∂X only inside
      the upstream band (a MaxPool between it and the neuron, as in tutorial 6, is fine).
    * any other ``Leaky``, and every ``Synaptic``: its ``forward_sequence`` (a stock one
      runs as our drop-in with the default band, sharing its Parameters; the model is not
      modified). A last ``Synaptic(output=True)`` returns ``(spk, syn, mem)``.
    * Linear, Conv1d/Conv2d, Max/Avg pooling (also adaptive), Dropout (1d/2d), Flatten,
      Unflatten, Identity and the module types in ``stateless``: one call on all ``T·B``
      samples. Values equal ``T`` calls; Dropout draws its masks in another order, so
      its outputs are equal in distribution, not bit for bit. An input that is the same
      at every step by construction (``data.expand(T, ...)``, tutorial 6's static image)
      goes through these layers once, on ``B`` samples, up to the first neuron.
    * BatchNorm1d/2d: in training, each step normalised by its own batch statistics and
      the running statistics updated ``T`` times, exactly as ``T`` calls (eval mode: the
      running statistics).

    A stock ``snntorch.Leaky`` gets the sparse default band ``surrogate.DEFAULT_B_TH`` (as
    :func:`sparsify` gives it); ``backward="dense"`` keeps snnTorch's dense gradient.
    Anything else (recurrent neurons, other snnTorch neurons, custom modules) is a
    ValueError naming the layer and what to do.

    Args:
        model: the ``nn.Sequential``; neurons need ``init_hidden=True`` and only the last
            may have ``output=True``.
        backward: "sparse" (the band-limited surrogate), "dense" (the full surrogate, the
            stock snnTorch gradient) or "rate" (rate-based backpropagation, which needs
            fixed β/θ and no loss on a hidden membrane), for every fused layer and neuron.
        stateless: extra module types that act on each sample on its own (no state across
            calls), to run on all ``T·B`` samples at once.

    Example::

        >>> import torch, snntorch
        >>> from torch import nn
        >>> from snntorch_sparse import fuse
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2),
        ...                     snntorch.Leaky(beta=0.9, init_hidden=True),
        ...                     nn.Flatten(), nn.Linear(4 * 3 * 3, 10),
        ...                     snntorch.Leaky(beta=0.9, init_hidden=True, output=True))
        >>> spk, mem = fuse(net)(torch.rand(25, 8, 1, 8, 8))       # [25, 8, 10] each
    """
    if backward not in BACKWARDS:
        raise ValueError(f"fuse: backward must be one of {', '.join(map(repr, BACKWARDS))}, "
                         f"got {backward!r}")
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"fuse expects an nn.Sequential, got {type(model).__name__}")
    stateless = tuple(stateless)
    mods = list(_modules(model))
    layers = []
    output = False
    i = 0
    while i < len(mods):
        m = mods[i]
        last = i + 1 == len(mods)
        nxt = None if last else mods[i + 1]
        if isinstance(m, snntorch.SpikingNeuron):
            if type(m) not in _NEURONS:
                raise _unsupported(i, m, f"{type(m).__name__} has no whole-sequence form; "
                                   "fuse supports Leaky and Synaptic (snnTorch's or ours); "
                                   "run this model per step")
            if backward == "rate" and isinstance(m, (snntorch.Synaptic, Synaptic)):
                raise _unsupported(i, m, "backward='rate' is not defined for Synaptic; use "
                                   "'sparse' or 'dense'")
            _check_neuron(i, m, last)
            layers.append(_NeuronSequence(_sparse_neuron(m), backward, bool(m.output)))
            output = bool(m.output)
            i += 1
            continue
        if type(m) in (nn.Linear, nn.Conv2d) and type(nxt) in (snntorch.Leaky, Leaky):
            _check_neuron(i + 1, nxt, i + 2 == len(mods))
            pair = _fused_pair(m, nxt, backward)
            if pair is not None:
                layers.append(pair)
                output = bool(nxt.output)
                i += 2
                continue
        if isinstance(m, nn.Flatten) and m.start_dim == 0:
            raise _unsupported(i, m, "flattening the batch dimension (start_dim=0)")
        if isinstance(m, nn.Unflatten) and m.dim == 0:
            raise _unsupported(i, m, "unflattening the batch dimension (dim=0)")
        if type(m) is nn.Linear:
            layers.append(m)  # applies to [T, B, ...] as is
        elif type(m) is nn.Conv2d and backward == "sparse" and _conv_padding(m) is not None:
            layers.append(_SparseConv(m))
        elif type(m) in _BATCHNORM:
            layers.append(_SequenceBatchNorm(m))
        elif type(m) in _PER_SAMPLE or isinstance(m, stateless):
            if getattr(m, "return_indices", False):
                raise _unsupported(i, m, "return_indices=True returns a tuple")
            layers.append(_Folded(m))
        else:
            raise _unsupported(i, m, "fuse cannot know that it acts on each sample on its "
                               "own; if it does, pass its type in fuse(..., stateless=(...))")
        output = False
        i += 1
    if not layers:
        raise ValueError("fuse: the model is empty")
    return FusedSequential(layers, output)
