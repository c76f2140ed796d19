"""Band-limited surrogate gradients: a superset of :mod:`snntorch.surrogate`.

Every public name of :mod:`snntorch.surrogate` is available here unchanged, except the
five shapes below, which keep snnTorch's names and parameter names and add ``b_th``:

* forward: ``S = H(u)`` with ``u = U − θ`` (strictly ``u > 0``), returned as float32
  exactly like snnTorch's surrogates;
* backward (paper eq. 7–8, 20): ``∂S/∂u = g(u)·[|u| < b_th]``; ``b_th=None`` is the
  dense surrogate ``g(u)`` (bit-identical to snnTorch's, see each function).

The backward runs in the compiled op ``torch.ops.snntorch_sparse.spike``, which keeps
only the band (one bit per element plus the in-band ``u`` values) instead of the whole
float membrane that snnTorch saves: ``1/8 + ρ·itemsize`` bytes per element for an
in-band share ρ. Measured with :func:`snntorch_sparse.metrics.saved_bytes` on 10⁶
elements (atan, ``b_th=0.2``), against snnTorch's own ``atan``:

=========  ============  =============  =============
dtype      ρ = 2 %       ρ = 5 %        snnTorch
=========  ============  =============  =============
float32    0.205 B/elem  0.326 B/elem   4 B/elem
float64    0.285 B/elem  0.526 B/elem   8 B/elem
=========  ============  =============  =============

With ``b_th=None`` (dense) the op keeps ``u`` itself, as snnTorch does.

==================  ===========  ==============================================
shape               parameter    ``g(u)``
==================  ===========  ==============================================
``fast_sigmoid``    ``slope``    ``1 / (slope·|u| + 1)²``
``atan``            ``alpha``    ``(alpha/2) / (1 + (π/2·alpha·u)²)``
``sigmoid``         ``slope``    ``slope·e^(−slope·u) / (e^(−slope·u) + 1)²``
``triangular``      ``threshold``  ``threshold`` for ``u < 0``, ``−threshold`` for ``u ≥ 0``
``straight_through``  —          ``1``
==================  ===========  ==============================================

NaN in ``u``: the spike is 0 (``NaN > 0`` is false). NaN is never inside the band, so
with a finite ``b_th`` its gradient is exactly 0. With ``b_th=None`` the gradient is
snnTorch's: NaN for fast_sigmoid, atan and sigmoid (it propagates), the constant
``threshold`` (triangular) or 1 (straight-through) for the shapes that only test the
sign of ``u``.

Example::

    import torch
    import snntorch as snn
    from snntorch_sparse import surrogate

    sg = surrogate.fast_sigmoid(slope=25, b_th=0.2)
    lif = snn.Synaptic(alpha=0.9, beta=0.8, spike_grad=sg)   # any snnTorch neuron
    u = torch.randn(8, requires_grad=True)
    sg(u).sum().backward()          # u.grad is 0 wherever |u| >= 0.2
"""

import math
import numbers
import warnings

import snntorch.surrogate as _snn_surrogate
import torch

from . import _ops  # noqa: F401  (registers torch.ops.snntorch_sparse)
from . import reference

# Re-export snnTorch's public surrogate names first; ours below replace the five shapes.
_SNN_PUBLIC = sorted(
    name for name, obj in vars(_snn_surrogate).items()
    if not name.startswith("_") and getattr(obj, "__module__", None) == _snn_surrogate.__name__
)
globals().update({name: getattr(_snn_surrogate, name) for name in _SNN_PUBLIC})

# The python-level name of each shape's parameter (as in snnTorch); None: no parameter.
_PARAM_NAMES = {
    reference.FAST_SIGMOID: "slope",
    reference.ATAN: "alpha",
    reference.SIGMOID: "slope",
    reference.TRIANGULAR: "threshold",
    reference.STRAIGHT_THROUGH: None,
}


class SlowPathWarning(UserWarning):
    """A surrogate that the compiled kernels do not know runs its band in eager PyTorch."""




class AdaptiveBand:
    r"""Settings of an adaptive band: ``B_th`` follows the membrane so that the band
    activity ρ (paper eq. 13) tracks ``target``.

    Per layer, after each training forward call that observed ``n`` neuron-steps of which
    ``k`` lay inside the band (the band size the ``spike`` op already counts — no extra
    pass, no extra host sync), with ``ρ = k / n``:

    .. math::

        B_{th} \leftarrow \operatorname{clip}\Big(B_{th}\cdot
        \operatorname{clip}\big((ρ^*/ρ)^{η},\, 1/s,\, s\big),\; B_{min},\, B_{max}\Big)

    with ``ρ* = target``, ``η = rate``, ``s = max_step`` (``ρ = 0`` gives the factor
    ``s``). The forward output never depends on ``B_th`` (only the surrogate does), the
    rule is deterministic given the same inputs, and the band used by a call is the one
    before that call's update. ``b_th="auto"`` is ``AdaptiveBand()``.

    Args:
        target (float): activity to track, in (0, 1); default 2 %.
        init (float): ``B_th`` before the first update (the paper's 0.2).
        min, max (float): bounds of ``B_th``; ``min=init`` gives a band that only widens
            (while ρ < target) and never goes below the paper's.
        rate (float): exponent η of the correction (0 < η ≤ 1).
        max_step (float): largest factor by which one update changes ``B_th`` (> 1).

    Example::

        >>> import snntorch_sparse as snn
        >>> lif = snn.Leaky(beta=0.9, b_th=snn.AdaptiveBand(target=0.02, init=0.2))
        >>> lif2 = snn.Leaky(beta=0.9, b_th="auto")      # the same with the defaults
    """

    def __init__(self, target=0.02, init=0.2, min=0.01, max=4.0, rate=0.2, max_step=1.5):
        def real(name, v):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"AdaptiveBand: {name} must be a finite real number, got {v!r}")
            return float(v)
        self.target, self.init = real("target", target), real("init", init)
        self.min, self.max = real("min", min), real("max", max)
        self.rate, self.max_step = real("rate", rate), real("max_step", max_step)
        if not 0 < self.target < 1:
            raise ValueError(f"AdaptiveBand: target must be in (0, 1), got {target!r}")
        if not 0 < self.min <= self.init <= self.max:
            raise ValueError("AdaptiveBand: need 0 < min <= init <= max, got "
                             f"min={min!r}, init={init!r}, max={max!r}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"AdaptiveBand: rate must be in (0, 1], got {rate!r}")
        if not self.max_step > 1:
            raise ValueError(f"AdaptiveBand: max_step must be > 1, got {max_step!r}")

    def _key(self):
        return (self.target, self.init, self.min, self.max, self.rate, self.max_step)

    def next_width(self, b_th, count, total):
        """The width after observing ``count`` in-band elements out of ``total``."""
        rho = count / total
        step = self.max_step if rho == 0 else min(max((self.target / rho) ** self.rate,
                                                      1 / self.max_step), self.max_step)
        return min(max(b_th * step, self.min), self.max)

    def __eq__(self, other):
        if not isinstance(other, AdaptiveBand):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return ("AdaptiveBand(target={!r}, init={!r}, min={!r}, max={!r}, rate={!r}, "
                "max_step={!r})".format(*self._key()))


#: The band of a neuron that did not choose one: our classes' ``b_th`` default (so the
#: one-import switch) and a stock snnTorch neuron that ``fuse`` switches. It starts at the
#: widest band (4.0: the whole surrogate, as dense, for snnTorch's shapes), narrows while
#: more than 20 % of the layer's neuron-steps are in the band, widens while fewer are, and
#: never goes below the paper's 0.2 — so that a layer whose membranes start far from
#: threshold (a silent network at initialisation) still gets a gradient. A per-step neuron
#: updates it twice per step, so it is narrow after the first steps; a fused layer once
#: per call, so after about 8 calls. Measured on snnTorch's tutorial models:
#: docs/choosing-bth.md. Give ``b_th=0.2`` for the paper's fixed band, ``"auto"`` for the
#: 2 % target.
DEFAULT_B_TH = AdaptiveBand(target=0.2, init=4.0, min=0.2)


def band_for(b_th, output):
    """The band a neuron gets from ``b_th``: as given, except that under the default band
    (:data:`DEFAULT_B_TH`, not chosen by the user) a neuron built with ``output=True`` —
    the layer the loss reads — keeps the dense surrogate (``None``).

    Why: the loss's gradient enters the network there; a silent output layer (snnTorch's
    tutorial 6 at initialisation) gets its gradient only from surrogate values far below
    threshold, which a band cuts off at the source. That layer is a few neurons, so its
    dense backward costs little; the paper's readout is never banded either. An explicit
    ``b_th`` is honoured on every layer.
    """
    return None if (b_th is DEFAULT_B_TH and output) else b_th


def _check_b_th(b_th):
    """``None`` (dense), a positive finite float, ``"auto"`` or an :class:`AdaptiveBand`
    (returned as an ``AdaptiveBand``); anything else is a ValueError."""
    if b_th is None or isinstance(b_th, AdaptiveBand):
        return b_th
    if isinstance(b_th, str) and b_th == "auto":
        return AdaptiveBand()
    if isinstance(b_th, torch.Tensor) and b_th.numel() == 1:
        b_th = b_th.item()
    msg = ('b_th must be None (dense), a positive finite float, "auto" or an '
           f"AdaptiveBand, got {b_th!r}")
    if isinstance(b_th, bool) or not isinstance(b_th, numbers.Real):
        raise ValueError(msg)
    b_th = float(b_th)
    if not (math.isfinite(b_th) and b_th > 0):
        raise ValueError(msg)
    return b_th


def _check_param(name, value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"surrogate parameter {name} must be a finite real number, got {value!r}")
    return float(value)


def _check_u(u):
    if not isinstance(u, torch.Tensor) or not u.is_floating_point():
        got = u.dtype if isinstance(u, torch.Tensor) else type(u).__name__
        raise TypeError(
            "surrogate input u (membrane minus threshold) must be a floating-point tensor "
            f"(float16/bfloat16/float32/float64), got {got}"
        )


#: Consecutive training calls of one layer with an empty band (no neuron-step within
#: ``B_th`` of threshold, so no gradient at all) after which it is reported, once.
EMPTY_PATIENCE = 100


class EmptyBandWarning(UserWarning):
    """A layer's band has been empty for a sustained stretch of training: no gradient."""


class _BandWatch:
    """Host-side watch of a surrogate's band: the last ρ and the empty-band warning.

    ``layer`` labels the layer in the warning; :func:`snntorch_sparse.metrics.band_report` and
    :func:`snntorch_sparse.sparsify` set it to the layer's name in the model.
    """

    def _init_watch(self):
        self.layer = None
        self.last_rho = None
        self.counts = [0, 0]  # in-band and observed elements since the last band_report
        self._empty = 0
        self._warned = False

    def _watch(self, count, total):
        self.last_rho = count / total
        self.counts[0] += count
        self.counts[1] += total
        self._empty = 0 if count else self._empty + 1
        if self._empty >= EMPTY_PATIENCE and not self._warned:
            self._warned = True
            where = f"layer {self.layer!r}" if self.layer else f"a layer with {self!r}"
            warnings.warn(
                f"snntorch_sparse: {where} has had an empty band (activity rho = "
                f"{self.last_rho:.2%}) for {self._empty} training calls at B_th = "
                f"{self.b_th:.3g}: no gradient reaches it. Remedy: b_th=\"auto\" (or a "
                "wider fixed b_th), larger initial weights, or b_th=None (dense); "
                "snntorch_sparse.metrics.band_report(model) lists rho and B_th per layer.",
                EmptyBandWarning, stacklevel=4)

    def observe(self, count, total):
        """Record one training call's band size ``count`` out of ``total`` elements."""
        self._watch(count, total)


class SparseSurrogate(_BandWatch):
    """A ``spike_grad`` callable: ``S = H(u)`` forward, ``g(u)·[|u| < b_th]`` backward.

    Made by :func:`fast_sigmoid`, :func:`atan`, :func:`sigmoid`, :func:`triangular`,
    :func:`straight_through` and :func:`sparse`; accepted by every snnTorch neuron.

    Attributes:
        shape (int): surrogate shape id (``reference.FAST_SIGMOID`` … ``STRAIGHT_THROUGH``).
        p (float): the shape parameter (slope, alpha or threshold; 0.0 for straight-through).
        b_th (float or None): band half-width; ``None`` means dense.
        band: the same as ``b_th`` (for an :class:`AdaptiveSurrogate`, its settings).
        counts (list): in-band and observed elements of the training calls since the last
            :func:`snntorch_sparse.metrics.band_report` ``(reset=True)``.
        name (str): the shape's name, e.g. ``"atan"``.
        layer (str or None): the layer's name in its model, once known (for warnings).
        last_rho (float or None): band activity ρ of the last training call.

    Calling it on ``u`` (any shape, floating point) returns float32 spikes.
    """

    def __init__(self, shape, p, b_th):
        if shape not in _PARAM_NAMES:
            raise ValueError(f"shape must be one of {sorted(_PARAM_NAMES)}, got {shape!r}")
        self.shape = int(shape)
        self.p = _check_param(_PARAM_NAMES[shape] or "p", p)
        self.b_th = _check_b_th(b_th)
        if isinstance(self.b_th, AdaptiveBand):
            raise ValueError("an adaptive band needs AdaptiveSurrogate (use with_band)")
        self._init_watch()

    @property
    def band(self):
        return self.b_th

    @property
    def name(self):
        return reference.SHAPES[self.shape]

    def with_band(self, b_th):
        """The same shape and parameter with another band (``None``: dense; ``"auto"`` or
        an :class:`AdaptiveBand`: an :class:`AdaptiveSurrogate`)."""
        return _banded(self.shape, self.p, b_th)

    def _spike(self, u, b_th):
        _check_u(u)
        u = u.to(_ops.compute_dtype(u))
        spk, _, vals = torch.ops.snntorch_sparse.spike(
            u, self.shape, self.p, math.inf if b_th is None else b_th, 1.0)
        # vals.numel() is the band size the op already read on the host: free to watch
        # (not while torch.compile traces: there it is a symbol, not a number).
        if (b_th is not None and torch.is_grad_enabled() and u.requires_grad and u.numel()
                and not torch.compiler.is_compiling()):
            self.observe(vals.numel(), u.numel())
        return spk.float()

    def __call__(self, u):
        return self._spike(u, self.b_th)

    def __eq__(self, other):
        if not isinstance(other, SparseSurrogate):
            return NotImplemented
        return (self.shape, self.p, self.b_th) == (other.shape, other.p, other.b_th)

    def __hash__(self):
        return hash((self.shape, self.p, self.b_th))

    def __repr__(self):
        param = _PARAM_NAMES[self.shape]
        args = [f"{param}={self.p!r}"] if param else []
        return f"{self.name}({', '.join(args + [f'b_th={self.band!r}'])})"


class AdaptiveSurrogate(torch.nn.Module):
    """A compiled surrogate whose band follows :class:`AdaptiveBand` (module state).

    Made by the surrogate functions and :func:`sparse` when ``b_th`` is ``"auto"`` or an
    :class:`AdaptiveBand`. It is an ``nn.Module``: assigned as a neuron's ``spike_grad``
    it becomes a submodule, so its state — the current width, buffer ``width`` (float64,
    0-dim) — is saved in ``state_dict`` and moved by ``.to()``. A host copy of the width
    feeds the kernel, so reading it costs no device sync; it is refreshed on
    ``load_state_dict``.

    Each call in training (module in training mode, grad enabled, ``u`` requires grad)
    uses the current width, then updates it from that call's band size
    (:meth:`AdaptiveBand.next_width`). Under ``torch.distributed`` (initialised, more than
    one rank) the count is summed over ranks first (one ``all_reduce`` of two numbers per
    update), so every rank keeps the same width; without a process group the rule is
    rank-local and deterministic. The forward output does not depend on the width.
    Inside ``torch.compile`` the band size is a traced symbol, not a number: a compiled
    graph uses the width it was traced with and neither updates it nor watches for an
    empty band (run some eager steps first, or use a fixed ``b_th``).

    Example::

        >>> import torch
        >>> from snntorch_sparse import surrogate
        >>> sg = surrogate.fast_sigmoid(slope=25, b_th="auto")
        >>> u = torch.randn(1000, requires_grad=True) * 3
        >>> spk = sg(u)                        # band 0.2 used; width updated from its ρ
        >>> sg.b_th != 0.2, "width" in sg.state_dict()
        (True, True)
    """

    def __init__(self, shape, p, band):
        super().__init__()
        self._fixed = SparseSurrogate(shape, p, None)  # shape, parameter, kernel call
        self.band = _check_b_th(band)
        if not isinstance(self.band, AdaptiveBand):
            raise ValueError(f"AdaptiveSurrogate needs an AdaptiveBand, got {band!r}")
        self._width = self.band.init
        self.register_buffer("width", torch.tensor(self._width, dtype=torch.float64))
        self.register_load_state_dict_post_hook(AdaptiveSurrogate._refresh)

    @staticmethod
    def _refresh(module, incompatible_keys):
        module._width = float(module.width)  # one sync, at load time only

    shape = property(lambda self: self._fixed.shape)
    p = property(lambda self: self._fixed.p)
    name = property(lambda self: self._fixed.name)
    last_rho = property(lambda self: self._fixed.last_rho)
    counts = property(lambda self: self._fixed.counts)

    @property
    def layer(self):
        return self._fixed.layer

    @layer.setter
    def layer(self, value):
        self._fixed.layer = value

    @property
    def b_th(self):
        """The current band half-width (a float)."""
        return self._width

    def with_band(self, b_th):
        return _banded(self.shape, self.p, b_th)

    def observe(self, count, total):
        """Update the width from one training call's band size (and watch for an empty
        band)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            both = torch.tensor([float(count), float(total)], dtype=torch.float64,
                                device=self.width.device)
            torch.distributed.all_reduce(both)
            count, total = both.tolist()
        self._fixed.b_th = self._width  # the width this call used, for the warning
        self._fixed._watch(count, total)
        self._width = self.band.next_width(self._width, count, total)
        self.width.fill_(self._width)

    def forward(self, u):
        _check_u(u)
        u = u.to(_ops.compute_dtype(u))
        spk, _, vals = torch.ops.snntorch_sparse.spike(u, self.shape, self.p, self._width, 1.0)
        if (self.training and torch.is_grad_enabled() and u.requires_grad and u.numel()
                and not torch.compiler.is_compiling()):
            self.observe(vals.numel(), u.numel())
        return spk.float()

    def extra_repr(self):
        return f"{self._fixed.name}, p={self.p!r}, band={self.band!r}, b_th={self._width:.4g}"


def _banded(shape, p, b_th):
    """The compiled surrogate ``(shape, p)`` with band ``b_th`` (fixed, None or adaptive)."""
    b_th = _check_b_th(b_th)
    if isinstance(b_th, AdaptiveBand):
        return AdaptiveSurrogate(shape, p, b_th)
    return SparseSurrogate(shape, p, b_th)


def assign_spike_grad(neuron, spike_grad):
    """Set ``neuron.spike_grad``, whether the old or the new one is a module
    (an :class:`AdaptiveSurrogate` is a submodule; a plain callable is an attribute)."""
    if "spike_grad" in neuron._modules and not isinstance(spike_grad, torch.nn.Module):
        del neuron._modules["spike_grad"]
    neuron.spike_grad = spike_grad


def fast_sigmoid(slope=25, b_th=0.2):
    r"""Fast-sigmoid (SuperSpike) surrogate restricted to the band ``|u| < b_th``.

    .. math::

        S = H(u), \qquad
        \frac{\partial S}{\partial u} = \frac{1}{(k|u| + 1)^2}\,[|u| < B_{th}]

    ``b_th=None``: the gradient is bit-identical to ``snntorch.surrogate.fast_sigmoid``
    (float32 and float64).

    Example::

        >>> import torch
        >>> from snntorch_sparse import surrogate
        >>> sg = surrogate.fast_sigmoid(slope=25, b_th=0.2)
        >>> u = torch.tensor([-0.5, -0.1, 0.1, 0.5], requires_grad=True)
        >>> sg(u).detach()
        tensor([0., 0., 1., 1.])
        >>> sg(u).sum().backward(); u.grad
        tensor([0.0000, 0.0816, 0.0816, 0.0000])
    """
    return _banded(reference.FAST_SIGMOID, slope, b_th)


def atan(alpha=2.0, b_th=0.2):
    r"""Arc-tangent surrogate (snnTorch's default) restricted to the band ``|u| < b_th``.

    .. math::

        S = H(u), \qquad
        \frac{\partial S}{\partial u} = \frac{\alpha/2}{1 + (\frac{\pi}{2}\alpha u)^2}
        \,[|u| < B_{th}]

    ``b_th=None``: the gradient is bit-identical to ``snntorch.surrogate.atan``
    (float32 and float64).

    Example::

        >>> import torch
        >>> from snntorch_sparse import surrogate
        >>> sg = surrogate.atan(alpha=2.0, b_th=0.2)
        >>> u = torch.tensor([-0.5, 0.0, 0.5], requires_grad=True)
        >>> sg(u).sum().backward(); u.grad
        tensor([0., 1., 0.])
    """
    return _banded(reference.ATAN, alpha, b_th)


def sigmoid(slope=25, b_th=0.2):
    r"""Sigmoid surrogate restricted to the band ``|u| < b_th``.

    .. math::

        S = H(u), \qquad
        \frac{\partial S}{\partial u} = \frac{k\,e^{-ku}}{(e^{-ku} + 1)^2}\,[|u| < B_{th}]

    ``b_th=None`` reproduces ``snntorch.surrogate.sigmoid`` up to float32 rounding:
    snnTorch multiplies the float32 incoming gradient by ``slope`` in float32 (rounding
    ``slope`` and the product) before reaching the membrane's dtype; this op multiplies in
    the membrane's dtype. In float64 the two differ by at most 2⁻²³ relative; in float32
    by a few ulps (the compiled ``exp`` is not PyTorch's vectorised one).

    Example::

        >>> import torch
        >>> from snntorch_sparse import surrogate
        >>> sg = surrogate.sigmoid(slope=25, b_th=0.2)
        >>> u = torch.tensor([-0.5, 0.0, 0.5], requires_grad=True)
        >>> sg(u).sum().backward(); u.grad
        tensor([0.0000, 6.2500, 0.0000])
    """
    return _banded(reference.SIGMOID, slope, b_th)


def triangular(threshold=1, b_th=0.2):
    r"""snnTorch's triangular surrogate restricted to the band ``|u| < b_th``.

    .. math::

        S = H(u), \qquad
        \frac{\partial S}{\partial u} = \begin{cases} \theta & u < 0 \\
        -\theta & u \ge 0 \end{cases}\;\cdot\;[|u| < B_{th}]

    (``θ`` is the parameter ``threshold``; the sign convention is snnTorch's.)
    ``b_th=None`` reproduces ``snntorch.surrogate.triangular`` bit for bit in float32,
    and in float64 whenever ``grad·threshold`` is exact in float32 (e.g. the default
    ``threshold=1``); otherwise within 2⁻²³ relative, because snnTorch forms that product
    in float32 (rounding ``threshold`` and the product) and this op in float64.

    Example::

        >>> import torch
        >>> from snntorch_sparse import surrogate
        >>> sg = surrogate.triangular(threshold=1, b_th=0.2)
        >>> u = torch.tensor([-0.5, -0.1, 0.1], requires_grad=True)
        >>> sg(u).sum().backward(); u.grad
        tensor([ 0.,  1., -1.])
    """
    return _banded(reference.TRIANGULAR, threshold, b_th)


def straight_through(b_th=0.2):
    r"""Straight-through estimator restricted to the band ``|u| < b_th``.

    .. math::

        S = H(u), \qquad \frac{\partial S}{\partial u} = [|u| < B_{th}]

    ``b_th=None``: bit-identical to ``snntorch.surrogate.straight_through_estimator``.

    Example::

        >>> import torch
        >>> from snntorch_sparse import surrogate
        >>> sg = surrogate.straight_through(b_th=0.2)
        >>> u = torch.tensor([-0.5, 0.1], requires_grad=True)
        >>> sg(u).sum().backward(); u.grad
        tensor([0., 1.])
    """
    return _banded(reference.STRAIGHT_THROUGH, 0.0, b_th)


def straight_through_estimator(b_th=0.2):
    """snnTorch's name for :func:`straight_through` (same callable)."""
    return straight_through(b_th)


class EagerBandSurrogate:
    """The band ``[|u| < b_th]`` around any surrogate callable, in plain PyTorch.

    The forward is ``fn(u)`` unchanged; the gradient is ``fn``'s own (by autograd)
    multiplied by the band mask. Made by :func:`sparse` for callables the compiled
    kernels do not know (the slow path).
    """

    def __init__(self, fn, b_th):
        self.fn = fn
        self.b_th = _check_b_th(b_th)

    def with_band(self, b_th):
        return EagerBandSurrogate(self.fn, b_th) if b_th is not None else self.fn

    def __call__(self, u):
        _check_u(u)
        # Same values as u; the gradient flows only where the mask holds (0 elsewhere).
        banded = torch.where(u.abs() < self.b_th, u, u.detach())
        return self.fn(banded)

    def __repr__(self):
        return f"sparse({self.fn!r}, b_th={self.b_th!r})"


# snnTorch's surrogate factories that map onto a compiled shape:
# closure qualname -> (shape id, closure variable holding the parameter or None).
_SNN_CLOSURES = {
    "fast_sigmoid.<locals>.inner": (reference.FAST_SIGMOID, "slope"),
    "atan.<locals>.inner": (reference.ATAN, "alpha"),
    "sigmoid.<locals>.inner": (reference.SIGMOID, "slope"),
    "triangular.<locals>.inner": (reference.TRIANGULAR, "threshold"),
    "straight_through_estimator.<locals>.inner": (reference.STRAIGHT_THROUGH, None),
}
_WARNED = set()


def _recognise_snntorch(fn):
    """``SparseSurrogate`` fields ``(shape, p)`` of a snnTorch surrogate closure, or None."""
    if getattr(fn, "__module__", None) != _snn_surrogate.__name__:
        return None
    entry = _SNN_CLOSURES.get(getattr(fn, "__qualname__", None))
    if entry is None:
        return None
    shape, var = entry
    if var is None:
        return shape, 0.0
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    free = dict(zip(code.co_freevars, cells)) if code is not None else {}
    try:
        return shape, _check_param(var, free[var].cell_contents)
    except (KeyError, ValueError):  # an unexpected closure layout: not ours to map
        return None


def _slow_path_warning(fn):
    kind = (getattr(fn, "__module__", None) or type(fn).__module__,
            getattr(fn, "__qualname__", None) or type(fn).__qualname__)
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(
            f"snntorch_sparse: surrogate {kind[0]}.{kind[1]} is not one of the compiled "
            "shapes (fast_sigmoid, atan, sigmoid, triangular, straight_through); its band "
            "runs in eager PyTorch (slow path, full membrane kept for backward) and cannot "
            f"adapt: the default band is the fixed {DEFAULT_B_TH.min}.",
            SlowPathWarning, stacklevel=3)


def sparse(spike_grad, b_th=0.2):
    r"""Restrict any ``spike_grad`` callable to the band ``|u| < b_th``.

    .. math::

        \frac{\partial S}{\partial u} = g(u)\,[|u| < B_{th}]

    * snnTorch's ``fast_sigmoid(slope=…)``, ``atan(alpha=…)``, ``sigmoid(slope=…)``,
      ``triangular(threshold=…)`` and ``straight_through_estimator()`` are recognised,
      with their parameters, and mapped to the compiled kernel;
    * our own surrogates are re-banded with ``b_th``;
    * any other callable keeps its forward and its own gradient, masked by the band in
      eager PyTorch (slow path; one :class:`SlowPathWarning` per kind of callable). An
      adaptive band is refused for it, except the default one, which then stays at its
      initial width (as the warning says).
      With ``b_th=None`` such a callable is returned unchanged.

    Example::

        >>> import snntorch
        >>> from snntorch_sparse import surrogate
        >>> surrogate.sparse(snntorch.surrogate.fast_sigmoid(slope=10), b_th=0.3)
        fast_sigmoid(slope=10.0, b_th=0.3)
    """
    b_th = _check_b_th(b_th)
    if isinstance(spike_grad, (SparseSurrogate, AdaptiveSurrogate, EagerBandSurrogate)):
        return spike_grad.with_band(b_th)
    if not callable(spike_grad):
        raise TypeError(f"spike_grad must be callable, got {type(spike_grad).__name__}")
    known = _recognise_snntorch(spike_grad)
    if known is not None:
        return _banded(known[0], known[1], b_th)
    if b_th is None:
        return spike_grad
    if isinstance(b_th, AdaptiveBand) and b_th is not DEFAULT_B_TH:
        raise ValueError(
            f"an adaptive band (b_th={b_th!r}) needs one of the compiled surrogate shapes "
            "(fast_sigmoid, atan, sigmoid, triangular, straight_through); for "
            f"{spike_grad!r} give a fixed b_th (a float) or b_th=None (dense)")
    _slow_path_warning(spike_grad)
    if b_th is DEFAULT_B_TH:  # not chosen by the user: the paper's 0.2, said in the warning
        b_th = b_th.min
    return EagerBandSurrogate(spike_grad, b_th)


__all__ = _SNN_PUBLIC + [
    "AdaptiveBand", "AdaptiveSurrogate", "EmptyBandWarning", "SparseSurrogate", "EagerBandSurrogate", "SlowPathWarning", "fast_sigmoid", "atan",
    "sigmoid", "triangular", "straight_through", "straight_through_estimator", "sparse",
]
__all__ = sorted(set(__all__))
