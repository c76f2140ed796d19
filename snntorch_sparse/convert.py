"""``sparsify``: switch an existing snnTorch model to sparse surrogate gradients in place."""

import snntorch
from torch import nn

from . import metrics, surrogate
from ._banded import BandedNeuron
from .leaky import Leaky
from .synaptic import Synaptic

#: The snnTorch neurons that have a drop-in of ours (the same constructor and forward).
_OURS = {snntorch.Leaky: Leaky, snntorch.Synaptic: Synaptic}


def _to_ours(neuron, b_th):
    """Turn a plain :class:`snntorch.Leaky` / :class:`snntorch.Synaptic` into ours, in place.

    Changing the class (rather than building a copy) keeps everything the module owns:
    the same parameter and buffer objects (so an optimizer built earlier still steps
    them), device, dtype, training mode, hidden state, hooks, and its entry in
    ``snntorch.SpikingNeuron.instances``.
    """
    neuron.__class__ = _OURS[type(neuron)]
    neuron._b_th = None  # the setter below re-bands spike_grad (unless surrogate_disable)
    neuron.b_th = b_th
    return neuron


def sparsify(model, b_th=surrogate.DEFAULT_B_TH, all_neurons=False):
    r"""Give every :class:`snntorch.Leaky` and :class:`snntorch.Synaptic` in ``model`` a
    band-limited surrogate.

    Each plain ``snntorch.Leaky`` / ``snntorch.Synaptic`` (at any depth, also inside
    ``nn.Sequential``) becomes a :class:`snntorch_sparse.Leaky` /
    :class:`snntorch_sparse.Synaptic` *in place*: same object, same options, parameters,
    buffers, device, dtype, training mode and hidden state; its surrogate keeps its shape
    and parameter and gets the band ``|U − θ| < b_th`` (see
    :func:`snntorch_sparse.surrogate.sparse`):

    .. math::

        \frac{\partial S}{\partial U} = g(U - θ)\,[|U - θ| < B_{th}]

    A neuron that is already ours is left alone, so calling ``sparsify`` twice is a
    no-op. Subclasses of ``snntorch.Leaky`` that are not ours keep their class (their
    ``forward`` may differ) and get the band on their ``spike_grad``. With
    ``all_neurons=True`` every other snnTorch neuron (``Alpha``, ``RLeaky``,
    ``RSynaptic``, ``Lapicque``, subclasses of ``Synaptic``, …) gets the band on its
    ``spike_grad`` too.
    Neurons built with ``surrogate_disable=True`` are not touched.

    Args:
        model (nn.Module): the model (or a single neuron).
        b_th (float, None, "auto" or AdaptiveBand): band half-width; ``None`` keeps the
            dense surrogate; ``"auto"`` / an :class:`AdaptiveBand` gives each neuron its
            own adaptive band (see :class:`snntorch_sparse.surrogate.AdaptiveSurrogate`).
        all_neurons (bool): also band the surrogate of the other snnTorch neurons.

    Returns:
        ``model`` (modified in place).

    Example::

        >>> import torch.nn as nn
        >>> import snntorch as snn
        >>> import snntorch_sparse
        >>> net = nn.Sequential(nn.Linear(10, 20), snn.Leaky(beta=0.9, init_hidden=True),
        ...                     nn.Linear(20, 2), snn.Leaky(beta=0.9, init_hidden=True))
        >>> net = snntorch_sparse.sparsify(net, b_th=0.2)
        >>> type(net[1]).__module__
        'snntorch_sparse.leaky'
    """
    b_th = surrogate._check_b_th(b_th)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if not isinstance(module, snntorch.SpikingNeuron) or isinstance(module, BandedNeuron):
            continue
        band = surrogate.band_for(b_th, getattr(module, "output", False))
        if type(module) in _OURS:
            _to_ours(module, band)
        elif (isinstance(module, snntorch.Leaky) or all_neurons) and not getattr(
                module, "surrogate_disable", False):
            surrogate.assign_spike_grad(module, surrogate.sparse(module.spike_grad, band))
    metrics.band_report(model, reset=False)  # names each layer for the empty-band warning
    return model
