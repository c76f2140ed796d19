"""``fuse``: turn a per-step ``nn.Sequential`` of Linear + Leaky into whole-sequence layers."""

import snntorch
from torch import nn

from .leaky import Leaky
from .spiking_linear import BACKWARDS, SpikingLinear
from .surrogate import DEFAULT_B_TH, band_for


class FusedSequential(nn.Module):
    """The result of :func:`fuse`: ``[T, B, ...]`` in, what the per-step loop stacks out.

    ``layers`` are :class:`SpikingLinear` (one per Linear + Leaky pair) and plain
    ``nn.Linear`` (a Linear with no Leaky after it, applied to all steps at once).
    ``flatten`` is ``(start_dim, end_dim)`` of a leading ``nn.Flatten`` in per-step terms.
    ``output``: the last Leaky had ``output=True``, so ``(spk, mem)`` is returned.
    """

    def __init__(self, layers, flatten=None, output=False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.flatten = flatten
        self.output = output

    def forward(self, x):
        """``x [T, B, ...]`` → spikes ``[T, B, out]`` (or ``(spk, mem)``, see ``output``).

        Starts from zero membranes, like the per-step model after ``utils.reset``.
        """
        if self.flatten is not None:  # per-step dims shift by one for the time axis
            start, end = (d + 1 if d >= 0 else d for d in self.flatten)
            x = x.flatten(start, end)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and self.output:
                return layer._run(x, None)
            x = layer(x)
        return x


def _unsupported(i, layer, why):
    return ValueError(f"fuse: layer {i} ({layer!r}) is not supported: {why}")


def _check_leaky(i, lif, last):
    if not lif.init_hidden:
        raise _unsupported(i, lif, "a Leaky inside nn.Sequential needs init_hidden=True")
    if lif.output and not last:
        raise _unsupported(i, lif, "output=True is only allowed on the last Leaky")
    checks = (
        (lif.inhibition, "inhibition"),
        (lif.state_quant, "state_quant"),
        (lif.surrogate_disable, "surrogate_disable"),
        (isinstance(lif.graded_spikes_factor, nn.Parameter), "learn_graded_spikes_factor"),
        (not lif.reset_delay and lif.reset_mechanism != "none", "reset_delay=False"),
    )
    for bad, name in checks:
        if bad:
            raise _unsupported(i, lif, f"{name} has no fused form")


def _spiking_linear(lin, lif, backward):
    """A SpikingLinear with ``lin``'s Parameters (shared) and ``lif``'s neuron."""
    learn_beta = isinstance(lif.beta, nn.Parameter)
    learn_threshold = isinstance(lif.threshold, nn.Parameter)
    layer = SpikingLinear(
        lin.in_features, lin.out_features, beta=lif.beta, threshold=lif.threshold,
        bias=lin.bias is not None, spike_grad=lif.spike_grad,
        b_th=lif.b_th if isinstance(lif, Leaky) else band_for(DEFAULT_B_TH, lif.output),
        reset_mechanism=lif.reset_mechanism, learn_beta=learn_beta,
        learn_threshold=learn_threshold, backward=backward,
        graded_spikes_factor=float(lif.graded_spikes_factor),
        device="meta",  # every tensor is replaced below; no init, no RNG draw
    )
    layer.weight = lin.weight
    layer.bias = lin.bias
    dev, dt = lin.weight.device, lin.weight.dtype
    for name, learn in (("beta", learn_beta), ("threshold", learn_threshold)):
        value = getattr(lif, name)
        setattr(layer, name, value if learn else
                value.detach().clone().to(device=dev, dtype=dt).reshape(
                    getattr(layer, name).shape))
    return layer


def fuse(model, backward="sparse"):
    """Fuse an ``nn.Sequential`` of ``nn.Linear`` and ``snntorch.Leaky(init_hidden=True)``
    layers into whole-sequence :class:`SpikingLinear` layers.

    The snnTorch idiom::

        net = nn.Sequential(nn.Flatten(),
                            nn.Linear(784, 200), snn.Leaky(beta=0.9, init_hidden=True),
                            nn.Linear(200, 10), snn.Leaky(beta=0.9, init_hidden=True, output=True))
        for t in range(T):
            spk, mem = net(x[t])        # stacked over t by the user

    becomes ``spk_seq, mem_seq = fuse(net)(x)`` with ``x [T, B, ...]``: equal outputs, and
    gradients equal the per-step model's with our Leakys' own bands. A stock
    ``snntorch.Leaky`` gets the sparse default band ``surrogate.DEFAULT_B_TH`` (as
    :func:`sparsify` gives it); ``backward="dense"`` keeps snnTorch's dense gradient. Every Linear followed by a
    Leaky (ours or snnTorch's) becomes one
    ``SpikingLinear`` sharing the Linear's weight and bias Parameters and a learnable β/θ
    Parameter; fixed β/θ, reset mechanism, surrogate, ``b_th`` and the graded-spikes factor
    are copied. A Linear with no Leaky after it stays a Linear; an ``nn.Flatten`` may come
    first. Anything else is a ValueError naming the layer.

    Args:
        model: the ``nn.Sequential``.
        backward: "sparse" (the band-limited surrogate), "dense" (the full surrogate,
            the stock snnTorch gradient) or "rate" (rate-based backpropagation, which
            needs fixed β/θ and no loss on a hidden membrane), for every SpikingLinear.

    Example::

        >>> import torch, snntorch
        >>> from torch import nn
        >>> from snntorch_sparse import fuse
        >>> net = nn.Sequential(nn.Linear(100, 50), snntorch.Leaky(beta=0.9, init_hidden=True))
        >>> spk = fuse(net)(torch.rand(25, 8, 100))       # [25, 8, 50]
    """
    if backward not in BACKWARDS:
        raise ValueError(f"fuse: backward must be one of {', '.join(map(repr, BACKWARDS))}, "
                         f"got {backward!r}")
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"fuse expects an nn.Sequential, got {type(model).__name__}")
    mods = list(model)
    flatten = None
    layers = []
    output = False
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Flatten):
            if i != 0:
                raise _unsupported(i, m, "nn.Flatten is only allowed as the first layer")
            if m.start_dim == 0:
                raise _unsupported(i, m, "flattening the batch dimension (start_dim=0)")
            flatten = (m.start_dim, m.end_dim)
            i += 1
        elif type(m) is nn.Linear:
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(nxt, snntorch.Leaky):
                last = i + 2 == len(mods)
                _check_leaky(i + 1, nxt, last)
                try:
                    layers.append(_spiking_linear(m, nxt, backward))
                except ValueError as err:  # e.g. a surrogate with no compiled form
                    raise _unsupported(i + 1, nxt, str(err)) from None
                output = bool(nxt.output)
                i += 2
            else:
                layers.append(m)
                i += 1
        elif isinstance(m, snntorch.Leaky):
            raise _unsupported(i, m, "a Leaky must follow an nn.Linear")
        else:
            raise _unsupported(i, m, "only nn.Flatten, nn.Linear and snntorch.Leaky fuse")
    if not layers:
        raise ValueError("fuse: the model has no nn.Linear layer")
    return FusedSequential(layers, flatten, output)
