"""Fused whole-sequence LIF layers: one autograd node for all ``T`` steps.

Two ``torch.autograd.Function``s share the neuron part (DESIGN.md §2):

* :func:`lif_sequence` — a Leaky layer over ``[T, B, ...]`` currents (used by
  ``Leaky.forward_sequence``);
* :func:`spiking_linear` — ``I[t] = X[t]·Wᵀ + b`` (one GEMM for all ``T·B`` rows) followed
  by the same neuron (the engine of ``SpikingLinear``).

Forward: ``U = lif_fwd(I, U[0], β, θ)`` over ``[T, M]`` (``M`` = one step's elements),
then ``(S, bits, vals) = spike(U − θ)``: the spikes and the compact band
``{|U − θ| < B_th}`` (bits + in-band values, see ``reference``).

Backward: ``ε = γ·g(u)·[|u| < B_th]·e + m`` (``e = ∂L/∂S``, ``m = ∂L/∂U`` when the membrane
is an output) and the reverse scan ``Δ[t] = ε[t] + a[t+1]·Δ[t+1]`` in one pass
(``lif_bwd_band``: ``ε`` is formed a step at a time, the surrogate only in the band), then
``∂L/∂I = Δ``, ``∂L/∂U[0] = a[1]·Δ[1]`` and, when they require grad,

    ∂L/∂β = Σ_t Δ[t]·U[t−1]  (·(1 − r[t]) for reset "zero")
    ∂L/∂θ = −Σ_t γ·g(u[t])·[band]·e[t]  − Σ_t r[t]·Δ[t]  (the last term for "subtract")

with ``r[t] = H(U[t−1] − θ)`` the detached reset flag (kept as packed bits, only for
reset "zero" or a learnable θ with "subtract").

Storage rule: the spikes' band (bits + in-band values) is all a layer keeps of its own
activity. The dense membrane is kept only when β requires grad (its gradient needs
``U[t−1]``); the reset flags only as bits.

Host synchronisations, all in the forward: ``spike`` sizes its band values; a
``spiking_linear`` that keeps its input compact counts the input's nonzeros (and checks
whether they are all 1), and reads a scalar fixed β as a number for the trace form — once
per time chunk (:func:`chunk_steps`). The backward has none: every size it needs (the
band's value count) is already on the host.

The spike outputs carry a band tag when the band is finite (:func:`tag_band`): a
``spiking_linear`` that consumes such a tensor computes its input gradient only inside
that band (paper eq. 12), since the upstream multiplies it by its surrogate, which is 0
outside. The tag holds only for the very tensor it was put on, unmodified: it records the
tensor's version counter and ``grad_fn``, so an in-place op (``h += skip``,
``h.mul_(g)``) voids it, and a view, slice, clone or concatenation is a new tensor
without it (:func:`band_of`).

The backwards are first order only (:func:`first_order_only`): a backward recorded for
double differentiation (``create_graph=True``) gives results that raise a clear error
when differentiated again, never a silent zero.
"""

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ._ops import compute_dtype, empty_output, first_order_only, ops
from .reference import ATAN, NONE, SUBTRACT, ZERO
from .surrogate import AdaptiveBand, _check_b_th

#: An input whose share of non-zeros is at most this is kept for backward in compact
#: (CSC) form; a denser one is kept as is (there is no sparsity to exploit).
COMPACT_INPUT_MAX_DENSITY = 0.25


@dataclass(frozen=True)
class Neuron:
    """The non-tensor options of a fused LIF layer.

    ``b_th`` is ``math.inf`` for the dense surrogate; ``gamma`` the graded-spikes factor.
    """

    gamma: float = 1.0
    reset: int = SUBTRACT
    shape: int = ATAN
    p: float = 2.0
    b_th: float = 0.2

    @property
    def banded(self):
        return math.isfinite(self.b_th)

    @classmethod
    def of(cls, gamma, reset, shape, p, b_th):
        """The options from a call's arguments; ``b_th`` None is the dense surrogate."""
        return cls(float(gamma), int(reset), int(shape), float(p),
                   math.inf if b_th is None else b_th)


# ---------------------------------------------------------------------------- bits
# Byte-wise bit packing with the layout of ``reference.pack_bits`` (element ``k`` is bit
# ``k % 32`` of int32 word ``k // 32``): on a little-endian machine (x86, ARM, CUDA) that
# is bit ``k % 8`` of byte ``k // 8``, so one byte per element of scratch suffices.
_SHIFTS = {}


def _shifts(device):
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS[device]


def pack_bits(mask):
    """Pack a boolean tensor (flattened) into int32 words; equals ``reference.pack_bits``."""
    flat = mask.reshape(-1)
    n = flat.numel()
    words = (n + 31) // 32
    padded = torch.zeros(words * 32, dtype=torch.uint8, device=flat.device)
    padded[:n] = flat
    packed = (padded.view(-1, 8) << _shifts(flat.device)).sum(1, dtype=torch.uint8)
    return packed.view(torch.int32)


def unpack_bits(bits, n):
    """Inverse of :func:`pack_bits`: a flat boolean tensor of length ``n``."""
    raw = bits.view(torch.uint8).unsqueeze(1) >> _shifts(bits.device)
    return (raw & 1).view(-1)[:n].bool()


def _empty_bits(device):
    return torch.empty(0, dtype=torch.int32, device=device)


# ----------------------------------------------------------------- shared neuron part
def _per_element(v, step_shape, dtype, name):
    """``v`` (scalar or broadcastable to one step) as a contiguous ``[M]`` vector."""
    try:
        return v.detach().to(dtype).expand(step_shape).reshape(-1)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(v.shape)} does not broadcast to one step "
                         f"of shape {tuple(step_shape)}") from None


def _previous(mem0f, mem):
    """``U[t−1]`` for t = 1..T as ``[T, M]`` (a temporary)."""
    return torch.cat((mem0f.unsqueeze(0), mem[:-1]))


def fire_spikes(mem, thetaf, nrn, scratch=None):
    """``spike(U − θ)``: the spikes, band bits and band values of a membrane ``[T, M]``.

    ``U − θ`` is written into ``scratch`` (a dead temporary of ``U``'s shape and dtype, e.g.
    the currents) or else into a fresh output buffer: a plain ``mem - θ`` of that size
    costs mostly the page faults of its fresh memory (csrc/cpu/alloc.h)."""
    if scratch is None:
        scratch = empty_output(mem.shape, mem.dtype, mem.device)
    u = torch.sub(mem, thetaf, out=scratch)
    return ops.spike(u, nrn.shape, nrn.p, nrn.b_th, nrn.gamma)


def _neuron_forward(cur, mem0f, betaf, thetaf, nrn, fire, scratch=None):
    """Membrane ``[T, M]``, spikes, band bits and values (the last three None if not
    ``fire``). ``scratch``: see :func:`fire_spikes` (``cur`` itself, when the caller owns it)."""
    mem = ops.lif_fwd(cur, mem0f, betaf, thetaf, nrn.reset)
    if not fire:
        return mem, None, None, None
    return (mem, *fire_spikes(mem, thetaf, nrn, scratch))


def _needs_rbits(nrn, theta_grad):
    return nrn.reset == ZERO or (nrn.reset == SUBTRACT and theta_grad)


def _reset_bits(mem0f, mem, thetaf):
    """Packed ``r[t] = H(U[t−1] − θ)`` over ``[T, M]``, the expression of ``lif_fwd``."""
    return pack_bits(_previous(mem0f, mem) - thetaf > 0)


def _neuron_backward(grad_spk, grad_mem, bits, vals, betaf, rbits, nrn, dmem_last=None):
    """``(Δ [T, M], ∂L/∂U[0] [M])`` from the output gradients, in one pass: the surrogate
    is evaluated only in the band and no dense ``ε`` is formed (``lif_bwd_band``).
    ``dmem_last``: the gradient into ``U[T]`` from later steps (a chunk's successor)."""
    return ops.lif_bwd_band(grad_spk, bits, vals, grad_mem, dmem_last, betaf, rbits,
                            nrn.shape, nrn.p, nrn.gamma, nrn.reset)


def _band_part(grad_spk, bits, vals, nrn):
    """The band part ``γ·g(u)·[band]·e`` of ``ε`` (None without a spike gradient), which
    only a learnable θ needs on its own."""
    if grad_spk is None:
        return None
    return ops.band_grad(grad_spk, bits, vals, nrn.shape, nrn.p, nrn.gamma, False)


def _beta_grad(delta, mem, mem0f, rbits, nrn):
    """``Σ_t Δ[t]·U[t−1]`` (``·(1 − r[t])`` for reset "zero"), per element ``[M]``."""
    term = delta * _previous(mem0f, mem)
    if nrn.reset == ZERO:
        keep = ~unpack_bits(rbits, term.numel()).view(term.shape)
        term = term * keep
    return term.sum(0)


def _theta_grad(delta, band, rbits, nrn):
    """``−Σ_t ε_band[t] − Σ_t r[t]·Δ[t]`` (the last for "subtract"), per element ``[M]``."""
    g = torch.zeros_like(delta[0])
    if band is not None:
        g = g - band.sum(0)
    if nrn.reset == SUBTRACT:
        r = unpack_bits(rbits, delta.numel()).view(delta.shape)
        g = g - (delta * r).sum(0)
    return g


def _meta(t):
    """Shape and dtype of an input, all its gradient needs (None for an absent input)."""
    return None if t is None else (t.shape, t.dtype)


def _reduce(grad_flat, step_shape, meta):
    """An ``[M]`` gradient summed back to an input's ``(shape, dtype)``."""
    shape, dtype = meta
    return grad_flat.view(step_shape).sum_to_size(shape).to(dtype)


def _needs(ctx, track):
    """``ctx.needs_input_grad``, all False when the call records no graph (``no_grad``):
    a forward for inference keeps nothing and skips the compaction work."""
    return ctx.needs_input_grad if track else (False,) * len(ctx.needs_input_grad)


def tag_band(t, bits, size=None):
    """Mark ``t`` as gradient-limited to the band ``bits`` (packed over ``t``'s elements,
    ``size`` of them set, when known).

    The tag is bound to ``t``'s current version, ``grad_fn`` and data pointer:
    :func:`band_of` drops it once ``t`` is modified in place or its data is replaced
    (``t.data = ...``, which bumps no version), so it can never describe values ``t`` no
    longer holds.
    Under ``torch.compile`` no tag is set (a traced graph has no tensor attributes): the
    downstream input gradient is then computed densely, the same values at the leaves.
    """
    return _bind(t, "_snn_sparse_band", (bits, size))


def tag_events(t, csc):
    """Record ``t``'s nonzeros by column, ``csc = (colptr, rows, xvals)`` over
    ``t.reshape(-1, t.shape[-1])`` as :func:`compact_input` makes them, or None when ``t``
    is too dense to keep compact: a ``spiking_linear`` fed ``t`` then skips compacting it.
    Bound to ``t``'s state as :func:`tag_band`."""
    return _bind(t, "_snn_sparse_csc", (csc,))


def _bind(t, attr, payload):
    if not torch.compiler.is_compiling():
        setattr(t, attr, (*payload, t.shape, t._version, t.grad_fn, t.data_ptr()))
    return t


def _bound(t, attr):
    """The payload that :func:`_bind` put on ``t``, or None if absent or stale."""
    tag = None if torch.compiler.is_compiling() else getattr(t, attr, None)
    if tag is None:
        return None
    *payload, shape, version, grad_fn, ptr = tag
    if (t._version != version or t.grad_fn is not grad_fn or t.data_ptr() != ptr
            or t.shape != shape):
        return None
    return payload


def _valid_tag(t):
    """``(bits, size)`` of ``t``'s band tag, or None if untagged or stale."""
    return _bound(t, "_snn_sparse_band")


def events_of(t):
    """``(csc,)`` recorded on ``t`` by :func:`tag_events` (``csc`` None: too dense), or None
    if untagged or stale."""
    return _bound(t, "_snn_sparse_csc")


def band_of(t):
    """The band bits of a tensor tagged by :func:`tag_band`, or None if untagged or stale."""
    tag = _valid_tag(t)
    return None if tag is None else tag[0]


def band_size(t):
    """The number of in-band elements of a tagged tensor, or None (untagged, stale, or
    not recorded)."""
    tag = _valid_tag(t)
    return None if tag is None else tag[1]


def pass_band(src, dst):
    """Give ``dst`` the band tag of ``src`` (for an element-wise, order-preserving map from
    ``src`` to ``dst``: a cast, a reshape, a scaling); returns ``dst``."""
    tag = _valid_tag(src)
    return dst if tag is None else tag_band(dst, *tag)


def _cast_spikes(spk, dtype):
    """``spk`` in ``dtype``, keeping its band tag (a cast keeps which values are in band)."""
    return pass_band(spk, spk.to(dtype))


def _mark_band(spk, bits, vals, nrn):
    return tag_band(spk, bits, vals.numel()) if nrn.banded else spk


def check_sequence_args(cur, states, b_th, where, owner):
    """Validate a whole-sequence neuron call: ``cur`` a floating-point ``[T, B, ...]`` with
    ``T ≥ 1``, each initial state (``{name: tensor or None}``) a tensor or None, ``b_th`` a
    fixed band (an adaptive one lives in ``owner``). Returns the checked ``b_th``."""
    if not isinstance(cur, torch.Tensor) or not cur.is_floating_point() or cur.dim() < 2:
        raise ValueError("cur must be a floating-point tensor [T, B, ...] (time first), got "
                         + (f"{cur.dtype} of shape {tuple(cur.shape)}"
                            if isinstance(cur, torch.Tensor) else type(cur).__name__))
    if cur.shape[0] == 0:
        raise ValueError("cur must hold at least one time step, got T = 0")
    for name, state in states.items():
        if state is not None and not isinstance(state, torch.Tensor):
            raise TypeError(f"{name} must be a tensor broadcastable to one step "
                            f"{list(cur.shape[1:])} or None, got {type(state).__name__}")
    b_th = _check_b_th(b_th)
    if isinstance(b_th, AdaptiveBand):
        raise ValueError(f"{where} takes a fixed b_th (a float or None); an adaptive band "
                         f"lives in {owner}, which passes its current width")
    return b_th


# ---------------------------------------------------------------------- lif_sequence
class _LIFSequence(torch.autograd.Function):
    """A Leaky layer over a whole sequence (see :func:`lif_sequence`)."""

    @staticmethod
    def forward(ctx, cur, mem0, beta, theta, nrn, track):
        T = cur.shape[0]
        step = cur.shape[1:]
        dt = cur.dtype
        cur2d = cur.reshape(T, -1)
        betaf = _per_element(beta, step, dt, "beta")
        thetaf = _per_element(theta, step, dt, "threshold")
        mem0f = (torch.zeros_like(cur2d[0]) if mem0 is None
                 else _per_element(mem0, step, dt, "mem"))
        mem, spk, bits, vals = _neuron_forward(cur2d, mem0f, betaf, thetaf, nrn, True)

        _, _, beta_grad, theta_grad, _, _ = _needs(ctx, track)
        rbits = (_reset_bits(mem0f, mem, thetaf) if _needs_rbits(nrn, theta_grad)
                 else _empty_bits(cur.device))
        ctx.save_for_backward(bits, vals, beta, rbits,
                              mem if beta_grad else None, mem0f if beta_grad else None)
        ctx.nrn = nrn
        ctx.step = step
        ctx.meta = (_meta(beta), _meta(theta), _meta(mem0))
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(bits, vals)
        # [T, M]: reshaped outside, so they stay modifiable in place. ``vals`` (whose size is
        # data-dependent) is returned so that a traced graph (torch.compile) owns its size.
        return spk, mem, bits, vals

    @staticmethod
    @first_order_only("lif_sequence (Leaky.forward_sequence)")
    def backward(ctx, grad_spk, grad_mem, _grad_bits, _grad_vals):
        bits, vals, beta, rbits, mem, mem0f = ctx.saved_tensors
        nrn, step = ctx.nrn, ctx.step
        if grad_spk is None and grad_mem is None:
            return (None,) * 6
        like = grad_spk if grad_spk is not None else grad_mem
        T = like.shape[0]
        flat = lambda g: None if g is None else g.reshape(T, -1)  # noqa: E731
        betaf = _per_element(beta, step, like.dtype, "beta")
        delta, dmem0 = _neuron_backward(flat(grad_spk), flat(grad_mem), bits, vals, betaf,
                                        rbits, nrn)
        need_cur, need_mem0, need_beta, need_theta, _, _ = ctx.needs_input_grad
        beta_meta, theta_meta, mem0_meta = ctx.meta
        d_cur = delta.view(T, *step) if need_cur else None
        d_mem0 = _reduce(dmem0, step, mem0_meta) if need_mem0 else None
        d_beta = (_reduce(_beta_grad(delta, mem, mem0f, rbits, nrn), step, beta_meta)
                  if need_beta else None)
        d_theta = (_reduce(_theta_grad(delta, _band_part(flat(grad_spk), bits, vals, nrn),
                                       rbits, nrn), step, theta_meta)
                   if need_theta else None)
        return d_cur, d_mem0, d_beta, d_theta, None, None


def lif_sequence(cur, mem0, beta, theta, *, gamma=1.0, reset=SUBTRACT, shape=ATAN, p=2.0,
                 b_th=0.2, stats=None):
    r"""A Leaky layer over a whole sequence in one fused forward and one fused backward.

    .. math::

        U[t] = βU[t-1] + I[t] - r[t]θ \;(\text{subtract}),\quad
        βU[t-1](1 - r[t]) + I[t] \;(\text{zero}),\quad βU[t-1] + I[t] \;(\text{none})

        S[t] = γ\,H(U[t] - θ), \qquad
        \frac{\partial S}{\partial U} = γ\,g(U - θ)\,[|U - θ| < B_{th}]

    Args:
        cur: input currents ``[T, B, ...]`` (any trailing shape), floating point.
        mem0: initial membrane, one step's shape (or broadcastable), or None for zeros.
        beta: decay, a tensor broadcastable to one step, **already clamped** to [0, 1]
            by the caller (it is not clamped again). May require grad: then the dense
            membrane is kept for backward (``∂U[t]/∂β = U[t-1]``).
        theta: threshold, a tensor broadcastable to one step; may require grad.
        gamma: graded-spikes factor (a float; a learnable γ multiplies outside).
        reset: ``reference.SUBTRACT`` / ``ZERO`` / ``NONE``.
        shape, p: surrogate shape id and parameter (see ``reference.surrogate_grad``).
        b_th: band half-width; None means the dense surrogate.
        stats: a dict, or None; ``stats["in_band"]`` receives the band size (number of
            in-band elements, known on the host without a sync) — an adaptive band's input.

    Returns:
        ``(spk, mem)``, both ``[T, ...]`` in ``cur``'s dtype; ``spk = γ·H(U − θ)``.
        Gradients flow to ``cur``, ``mem0``, ``beta`` and ``theta``; they equal
        ``reference.lif_sequence`` and, with ``b_th=None``, ``T`` per-step calls of
        ``snntorch.Leaky``.

    Example::

        >>> import torch
        >>> from snntorch_sparse._fused import lif_sequence
        >>> cur = torch.rand(100, 4, 10, requires_grad=True)
        >>> spk, mem = lif_sequence(cur, None, torch.tensor(0.9), torch.tensor(1.0))
        >>> spk.sum().backward()     # cur.grad is non-zero only through the band
    """
    b_th = check_sequence_args(cur, {"mem0": mem0}, b_th, "lif_sequence",
                               "snntorch_sparse.Leaky / SpikingLinear")
    work = compute_dtype(cur)
    if work != cur.dtype:  # float16/bfloat16 on the CPU: computed in float32
        spk, mem = lif_sequence(cur.to(work), None if mem0 is None else mem0.to(work), beta,
                                theta, gamma=gamma, reset=reset, shape=shape, p=p, b_th=b_th,
                                stats=stats)
        return _cast_spikes(spk, cur.dtype), mem.to(cur.dtype)
    beta = torch.as_tensor(beta, device=cur.device)
    theta = torch.as_tensor(theta, device=cur.device)
    nrn = Neuron.of(gamma, reset, shape, p, b_th)
    spk, mem, bits, vals = _LIFSequence.apply(cur, mem0, beta, theta, nrn,
                                              torch.is_grad_enabled())
    if stats is not None:
        stats["in_band"] = vals.numel()  # the band size, already on the host
    return _mark_band(spk.view(cur.shape), bits, vals, nrn), mem.view(cur.shape)


# --------------------------------------------------------------------- spiking_linear
@dataclass
class LinearConfig:
    """Options of :func:`spiking_linear` beyond the neuron's.

    ``sparse``: the sparse backward (compact input, band-limited input gradient, sparse
    weight-gradient forms); False is the dense baseline. ``readout``: infinite threshold,
    no reset, the membrane is the output. ``dw_form``: force a weight-gradient form
    (testing): "spikes" or "trace" (used when the input was
    kept compact); None chooses per call. ``report``: a dict the backward fills with the form
    it used (``"dw"``), whether the input gradient was masked (``"dx_masked"``) and whether
    its chunks ran as one op each (``"bwd"``: "one pass"), op by op ("ops") or both, and
    :func:`spiking_linear` with the band size (``"in_band"``) and the number of time chunks
    (``"chunks"``). ``time_chunk``: steps per chunk (:func:`chunk_steps`; None: one).
    ``membrane``: whether the caller wants the membrane sequence (False: :func:`spiking_linear`
    returns None for it, and a hidden layer never forms it whole).
    """

    neuron: Neuron
    sparse: bool = True
    readout: bool = False
    dw_form: Optional[str] = None
    report: Optional[dict] = None
    time_chunk: object = None
    membrane: bool = True


def compact_input(x2d, max_density=COMPACT_INPUT_MAX_DENSITY):
    """The nonzeros of ``x2d [R, n_in]`` by column, or None when they are too many.

    Returns ``(colptr int64 [n_in+1], rows int32 [nnz], xvals)``: column ``i`` owns
    ``rows[colptr[i]:colptr[i+1]]`` (ascending); ``xvals`` holds the values, or is empty
    when every nonzero equals 1 (spikes). None when ``nnz > max_density·numel``.
    """
    # One compiled op (reference.nonzero_csc); its host sync reads nnz and the 0/1 flag.
    colptr, rows, xvals = ops.nonzero_csc(x2d, max_density)
    if colptr.numel() == 0:  # too dense (a kept input always has n_in + 1 >= 1 pointers)
        return None
    return colptr, rows, xvals


def few_nonzeros(x, csc, compacted, max_density):
    """Whether at most ``max_density`` of ``x`` is nonzero (the event-driven forward's
    condition): read off its compact form ``csc`` when the backward made one (``compacted``
    and none made means too dense to keep compact), else counted."""
    if csc is not None:
        nnz = csc[1].numel()
    elif compacted:
        return False
    else:
        nnz = int(torch.count_nonzero(x))
    return nnz <= max_density * x.numel()


def events_input(x2d, csc, compacted, n_out):
    """The compact form of ``x2d`` for the event-driven fully connected forward, or None
    when more than :func:`event_max_density` of it is nonzero (then the GEMM runs): the
    backward's compact form ``csc`` when it made one (``compacted`` and none made means
    too dense), else compacted for the forward alone (inference)."""
    max_density = event_max_density(n_out, compacted)
    if not compacted:
        return compact_input(x2d, max_density) if max_density > 0 else None
    return csc if csc is not None and csc[1].numel() <= max_density * x2d.numel() else None


def event_max_density(n_out, compacted=True):
    """The input density up to which the event-driven fully connected forward beats the
    dense GEMM on the CPU (measured on the 2-core CPU of docs/benchmarks.md, 16 000 rows:
    ``linear_fwd_events`` against ``F.linear``). With the compact input that the backward
    keeps anyway (``compacted``): every compact input of a layer of ≥ 64 outputs (1.2–1.3×
    faster at 25 %), up to 10 % for a narrower one, whose GEMM is cheap while each nonzero
    costs a fixed overhead. Compacting for the forward alone (inference) pays up to 10 %
    for ≥ 64 outputs and never for a narrower layer."""
    if compacted:
        return COMPACT_INPUT_MAX_DENSITY if n_out >= 64 else 0.1
    return 0.1 if n_out >= 64 else 0.0


def _active_csr(bits, nnz, R, n_out):
    """The band's set bits over ``[R, n_out]`` as CSR ``(rowptr int64, cols int32)``.

    ``nnz`` (the number of in-band values) is known on the host, so this needs no sync.
    """
    k = torch.nonzero_static(unpack_bits(bits, R * n_out), size=nnz).view(-1)
    row = torch.div(k, n_out, rounding_mode="floor")
    cols = (k - row * n_out).to(torch.int32)
    rowptr = torch.searchsorted(row, torch.arange(R + 1, device=k.device))
    return rowptr, cols


#: How many times faster per multiply-add the library's GEMM forms ∂W than the trace form
#: (``dw_trace_dense``) on the 2-core CPU of docs/benchmarks.md (measured 6–7× at the Open
#: Neuromorphic shape, ρ = 4.7 %: 2.0 s GEMM vs 0.66 s trace); with a dense input the
#: trace form is chosen when its multiply-adds, ``nnz(ε)·n_in``, are fewer than the
#: GEMM's ``T·B·n_in·n_out`` by more than this.
DENSE_DW_SPEEDUP = 8


def _dense_trace_pays(nnz_act, T, B, n_out):
    """Whether ∂W of a dense input is cheaper by the trace form (see DENSE_DW_SPEEDUP)."""
    return DENSE_DW_SPEEDUP * nnz_act < T * B * n_out


def _stack_csr(parts, ends):
    """One CSR ``(rowptr, cols, vals)`` over consecutive blocks of rows, from each block's
    ``(rowptr, cols, vals)``; ``ends``: the cumulative entry counts (``[0, n₁, n₁+n₂, …]``)."""
    starts = [p[0][:-1] + off for p, off in zip(parts, ends)]
    rowptr = torch.cat(starts + [parts[-1][0][-1:] + ends[-2]])
    return rowptr, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


#: Where the input-spike form runs as one op with the neuron scan (``linear_lif_bwd``: no
#: Δ stored, no separate neuron pass), the trace form is chosen only when it counts this
#: many times fewer multiply-adds: measured break-even on the CPU of docs/benchmarks.md
#: (SHD shape, B = 32) between trace/spikes count ratios 0.35 (one op 1.4× faster) and
#: 0.14 (trace 1.1× faster).
ONE_PASS_TRACE_FACTOR = 5


def _choose_dw(cfg, x_compact, nnz_x, binary, nnz_act, trace_beta, T, B, n_in, n_out,
               grad_mem, one_pass=False):
    """The weight-gradient form with the smallest multiply-add count (see SpikingLinear):
    for a compact input its nonzeros ("spikes") or the trace form, for a dense one the
    trace form (``dw_trace_dense``) or the library's GEMM ("dense"). ``one_pass``: the
    spikes form would run as one op (:func:`_one_pass_applies`), which weighs the trace
    form's count by :data:`ONE_PASS_TRACE_FACTOR`.

    The trace form is chosen by itself only for a binary compact input: it reads an input
    value only where an output is active, so a NaN/Inf elsewhere in a graded input would
    vanish from ∂W, where the other forms propagate it (a dense input is offered the trace
    form only when it is finite: ``trace_beta`` is None otherwise).
    """
    trace_ok = (trace_beta is not None and grad_mem is None and not cfg.readout
                and cfg.neuron.banded)
    if not x_compact:  # the trace form, or the library's GEMM
        pays = cfg.dw_form is None and _dense_trace_pays(nnz_act, T, B, n_out)
        return "trace" if trace_ok and (cfg.dw_form == "trace" or pays) else "dense"
    if cfg.dw_form == "trace" and not trace_ok:
        raise RuntimeError("dw_form='trace' needs a scalar fixed β, reset subtract/none, "
                           "a finite band and no gradient into the membrane")
    if cfg.dw_form is not None:
        return cfg.dw_form
    cost_spikes = nnz_x * n_out
    cost_trace = n_in * (T * B + nnz_act) * (ONE_PASS_TRACE_FACTOR if one_pass else 1)
    return "trace" if trace_ok and binary and cost_trace < cost_spikes else "spikes"


#: ``time_chunk="auto"``: a sequence whose ``[T·B, n_out]`` tensors (the currents, the
#: membrane, the spikes, Δ) hold at most :data:`WHOLE_MAX_BYTES` runs whole; a longer one
#: in chunks of about :data:`CHUNK_BYTES`. Chunking costs a copy of each chunk's spikes and
#: input gradient into the layer's outputs and fresh memory for every chunk (SHD shape,
#: T = 500, B = 128, 51 MB tensors: 428 ms chunked vs 298 ms whole per step on the CPU of
#: docs/benchmarks.md), so it starts only where memory, not time, is the limit (the
#: long-sequence demo: T = 20 000, B = 8, 128 MB). The chunk size is above glibc's largest
#: heap-served block (32 MiB), so every chunk temporary is mapped and handed back to the
#: system when freed — the peak RSS follows the live bytes — and large enough that the
#: per-chunk calls are amortised.
WHOLE_MAX_BYTES = 96 << 20
CHUNK_BYTES = 40 << 20


def chunk_steps(setting, T, B, n_in, n_out, itemsize):
    """Time steps per chunk of a fused layer (``T``: one chunk).

    ``setting``: None (the whole sequence at once), ``"auto"`` (:data:`WHOLE_MAX_BYTES`,
    :data:`CHUNK_BYTES`) or a number of steps. Rounded to a multiple of the steps after
    which both the input's and the output's elements fill whole 32-bit words, so each
    chunk owns whole words of the packed band bits (its own and the upstream's).
    """
    if setting is None:
        return T
    if setting == "auto":
        if T * B * n_out * itemsize <= WHOLE_MAX_BYTES:
            return T
        steps = max(1, CHUNK_BYTES // (B * n_out * itemsize))
    else:
        steps = setting
    align = math.lcm(32 // math.gcd(B * n_out, 32), 32 // math.gcd(B * n_in, 32))
    return min(T, max(align, steps // align * align))


def _cat(parts):
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _Rows:
    """A ``[n, ...]`` result assembled chunk by chunk: with one chunk, that chunk's own
    tensor; with several, one tensor allocated at the first and filled in place (a list
    of chunks then a concatenation would hold the result twice at its peak)."""

    def __init__(self, n, chunks):
        self.n, self.single, self.out = n, chunks == 1, None

    def put(self, r0, part):
        if self.single:
            self.out = part
            return
        if self.out is None:
            self.out = part.new_empty((self.n, *part.shape[1:]))
        self.out[r0:r0 + part.shape[0]].copy_(part)


def _span(t, a, b, n):
    """``t[a:b]`` of ``t`` with ``n`` rows, or ``t`` itself when that is all of it (one
    chunk: no view for torch.compile to trace; ``n`` is passed, as a traced backward may
    not ask a saved input its shape)."""
    return t if a == 0 and b == n else t[a:b]


class _SpikingLinear(torch.autograd.Function):
    """``I = X·Wᵀ + b`` then a LIF layer, over all ``T`` steps (see :func:`spiking_linear`),
    in chunks of time steps: the forward carries ``U`` from chunk to chunk, the backward
    runs the chunks in reverse, carrying ``a·Δ`` (``lif_bwd_band``'s ``dmem_last``) and
    summing ∂W, so that apart from the layer's input and outputs nothing of size
    ``T·B·n`` is alive — only one chunk's currents, membrane temporaries and Δ. ``sink``
    (a list) receives the spikes' compact form when the forward made one (one chunk,
    ``linear_lif_events``): ``(colptr, rows, xvals)``, or None when they are too dense."""

    @staticmethod
    def forward(ctx, x, weight, bias, beta, theta, mem0, up_bits, cfg, track, sink):
        nrn = cfg.neuron
        T, B, n_in = x.shape
        n_out = weight.shape[0]
        x2d = x.reshape(T * B, n_in)
        need_x, need_w, _, need_beta, need_theta, *_ = _needs(ctx, track)
        # The input, only if the weight gradient needs it: compact when sparse enough.
        # Compaction has a data-dependent size: a traced graph keeps the input dense (the
        # dense GEMM then forms ∂W; equal values), and the library's forward.
        eager = cfg.sparse and not torch.compiler.is_compiling()
        step = (B, n_out)
        dt = x.dtype
        betaf = _per_element(beta, step, dt, "beta")
        thetaf = _per_element(theta, step, dt, "threshold")
        mem0f = (x.new_zeros(B * n_out) if mem0 is None
                 else _per_element(mem0, step, dt, "mem"))
        keep_rbits = not cfg.readout and _needs_rbits(nrn, need_theta)
        keep_mem = cfg.membrane or cfg.readout or need_beta
        wt = None
        steps = chunk_steps(cfg.time_chunk, T, B, n_in, n_out, x.element_size())
        bounds = [(t0, min(T, t0 + steps)) for t0 in range(0, T, steps)]
        mems, spks = _Rows(T, len(bounds)), _Rows(T, len(bounds))
        bitss, valss, rbitss, cscs, x_compact = [], [], [], [], True
        # The input's compact form, when the layer that made it recorded it (one chunk).
        given = events_of(x) if eager and len(bounds) == 1 else None
        # A hidden layer whose membrane nobody needs runs whole from the compact input in
        # one op (``linear_lif_events``), which also lists its spikes for the next layer.
        one_pass = not (cfg.readout or keep_mem or keep_rbits) and nrn.banded
        out_csc = None
        prev = mem0f
        for t0, t1 in bounds:
            xc = _span(x2d, t0 * B, t1 * B, T * B)
            compacted = given is not None or (need_w and eager)
            csc = given[0] if given is not None else compact_input(xc) if compacted else None
            x_compact = x_compact and csc is not None
            cscs.append(csc if need_w else None)
            events = (events_input(xc, csc, compacted, n_out)
                      if eager and x.device.type == "cpu" else None)
            if events is not None and wt is None:
                wt = weight.t().contiguous()
            if cfg.report is not None and not torch.compiler.is_compiling():
                cfg.report["fwd"] = "dense" if events is None else "events"
            if events is not None and one_pass:
                spk, bits, vals, prev, *out_csc = ops.linear_lif_events(
                    *events, wt, bias, prev, betaf, thetaf, xc.shape[0], nrn.reset, nrn.b_th,
                    nrn.gamma, COMPACT_INPUT_MAX_DENSITY)
                spks.put(t0, spk.view(t1 - t0, B * n_out))
                bitss.append(bits)
                valss.append(vals)
                continue
            cur = (ops.linear_fwd_events(*events, wt, bias, xc.shape[0]) if events is not None
                   else F.linear(xc, weight, bias)).view(t1 - t0, B * n_out)
            del events
            mem, spk, bits, vals = _neuron_forward(cur, prev, betaf, thetaf, nrn,
                                                   not cfg.readout, scratch=cur)
            if keep_rbits:
                rbitss.append(_reset_bits(prev, mem, thetaf))
            if keep_mem:
                mems.put(t0, mem)
            if not cfg.readout:
                spks.put(t0, spk)
            bitss.append(bits)
            valss.append(vals)
            # U carried to the next chunk as a copy: a view would keep this chunk's whole
            # membrane alive, and so would the loop's names while the next chunk runs.
            prev = mem[-1].clone()
            del cur, mem, spk
        mem = mems.out if keep_mem else prev.new_empty(0)
        if out_csc is not None and len(bounds) == 1:  # the next layer's input, compact
            sink.append(out_csc if out_csc[0].numel() else None)
        if cfg.report is not None:
            cfg.report["chunks"] = len(bounds)

        ctx.x_compact = need_w and x_compact
        csc_saved = [t for c in cscs for t in (c or (None, None, None))] if ctx.x_compact else []
        # The trace form needs β as a python float: read it here (a sync, forward only).
        # It walks the input trace from t = 0: over a compact input on an unchunked
        # sequence only (its CSC is per chunk); a dense input is walked whole after the
        # chunks (backward). A dense input must be finite for it: its trace carries a
        # NaN/Inf only into the outputs active later, which a NaN input silences, so ∂W
        # would hide it where the dense form propagates it (one more sync).
        # On a GPU only when asked for (dw_form="trace"): there the trace kernel (a block per
        # input neuron walking its trace) lost to the GEMM 13x (ONB 4096, H200,
        # docs/benchmarks.md), and the forward then needs neither sync.
        eligible = (need_w and eager and cfg.sparse and not cfg.readout and nrn.banded
                    and beta.numel() == 1 and not beta.requires_grad
                    and nrn.reset in (SUBTRACT, NONE)
                    and (x.device.type == "cpu" or cfg.dw_form == "trace"))
        if ctx.x_compact:
            eligible = eligible and len(bounds) == 1
        elif eligible:  # a finite sum: every element finite (one cheap pass)
            n_band = sum(v.numel() for v in valss)
            eligible = ((cfg.dw_form == "trace" or _dense_trace_pays(n_band, T, B, n_out))
                        and math.isfinite(float(x.sum())))
        ctx.trace_beta = float(beta) if eligible else None
        rbits = _cat(rbitss) if keep_rbits else _empty_bits(x.device)
        ctx.keep_mem = keep_mem
        if not keep_mem:
            ctx.mark_non_differentiable(mem)
        if cfg.readout:
            spk, bits, vals = mem.new_empty(0), _empty_bits(x.device), mem.new_empty(0)
        else:
            spk, bits, vals = spks.out, _cat(bitss), _cat(valss)
        # where each chunk's band values start (one chunk: all of them)
        ctx.band_counts = ([v.numel() for v in valss] if len(bounds) > 1 and not cfg.readout
                           else None)
        ctx.bounds = bounds
        ctx.save_for_backward(
            x if need_w and not ctx.x_compact else None,
            weight if need_x or need_w else None, bits, vals, beta, rbits,
            mem if need_beta else None, mem0f if need_beta else None,
            up_bits if (need_x and cfg.sparse) else None, *csc_saved,
        )
        ctx.cfg = cfg
        ctx.dims = (T, B, n_in, n_out)
        ctx.meta = (_meta(beta), _meta(theta), _meta(mem0))
        ctx.set_materialize_grads(False)
        if cfg.readout:
            ctx.mark_non_differentiable(spk)
        ctx.mark_non_differentiable(bits, vals)
        return spk, mem, bits, vals  # [T, B·n_out]: reshaped outside (see lif_sequence)

    @staticmethod
    @first_order_only("SpikingLinear")
    def backward(ctx, grad_spk, grad_mem, _grad_bits, _grad_vals):
        x, weight, bits, vals, beta, rbits, mem, mem0f, up_bits, *csc_saved = ctx.saved_tensors
        cfg = ctx.cfg
        nrn = cfg.neuron
        T, B, n_in, n_out = ctx.dims
        if cfg.readout:
            grad_spk = None
        if not ctx.keep_mem:  # the empty stand-in (a traced backward still passes one)
            grad_mem = None
        if grad_spk is None and grad_mem is None:
            return (None,) * 10
        like = grad_spk if grad_spk is not None else grad_mem
        step = (B, n_out)
        M = B * n_out
        flat = lambda g: None if g is None else g.reshape(T, M)  # noqa: E731
        grad_spk, grad_mem = flat(grad_spk), flat(grad_mem)
        betaf = _per_element(beta, step, like.dtype, "beta")
        need_x, need_w, need_b, need_beta, need_theta, need_mem0, *_ = ctx.needs_input_grad
        one_pass = _one_pass_applies(ctx, grad_spk, grad_mem, up_bits)
        wt = weight.t().contiguous() if (need_x and up_bits is not None) or one_pass else None
        report = cfg.report is not None and not torch.compiler.is_compiling()
        passes = set()  # how the chunks ran: "one pass" and/or "ops"
        dxs = _Rows(T * B, len(ctx.bounds))
        d_w, d_b, d_beta, d_theta, carry = None, None, None, None, None
        # A dense input's trace form is one walk over the whole input after the chunks
        # (its trace runs forward in time, the chunks backward), on their active sets.
        # It is chosen once for all chunks: mixed with a Δ-based form, the terms that the
        # carried Δ hands to earlier chunks would be counted twice.
        dense_trace = (need_w and not ctx.x_compact
                       and _choose_dw(cfg, False, 0, False, vals.numel(), ctx.trace_beta, T, B,
                                      n_in, n_out, grad_mem) == "trace")
        actives = [None] * len(ctx.bounds)
        add = lambda acc, g: g if acc is None else acc + g  # noqa: E731
        band_ends = [0] + list(itertools.accumulate(ctx.band_counts or []))
        for i in reversed(range(len(ctx.bounds))):
            t0, t1 = ctx.bounds[i]
            r0, r1 = t0 * B, t1 * B
            words = slice(t0 * M // 32, (t1 * M + 31) // 32)  # whole words (chunk_steps)
            c_bits = bits[words] if bits.numel() else bits
            c_vals = (vals if ctx.band_counts is None else vals[band_ends[i]:band_ends[i + 1]])
            c_rbits = rbits[words] if rbits.numel() else rbits
            g_spk = None if grad_spk is None else grad_spk[t0:t1]
            g_mem = None if grad_mem is None else grad_mem[t0:t1]
            c_up = (up_bits[r0 * n_in // 32:(r1 * n_in + 31) // 32] if up_bits is not None
                    else _empty_bits(like.device))
            if one_pass:
                colptr, rows, xvals = csc_saved[3 * i:3 * i + 3]
                if _choose_dw(cfg, True, rows.numel(), xvals.numel() == 0, c_vals.numel(),
                              ctx.trace_beta, t1 - t0, B, n_in, n_out, None, True) == "spikes":
                    # Δ never stored: ∂W, ∂b, ∂X of each row as the scan reaches it
                    g_w, g_b, c_dx, carry = ops.linear_lif_bwd(
                        g_spk, c_bits, c_vals, carry, betaf, colptr, rows, xvals, wt, c_up,
                        nrn.shape, nrn.p, nrn.gamma, need_x, need_b)
                    d_w = add(d_w, g_w.t())
                    d_b = add(d_b, g_b) if need_b else None
                    if need_x:
                        dxs.put(r0, c_dx)
                    passes.add("one pass")
                    if report:
                        cfg.report["dw"] = "spikes"
                    continue
            passes.add("ops")
            delta, carry = _neuron_backward(g_spk, g_mem, c_bits, c_vals, betaf, c_rbits, nrn,
                                            carry)
            delta2d = delta.view(r1 - r0, n_out)
            if need_x:
                if up_bits is not None:
                    dxs.put(r0, ops.dx_masked(delta2d, wt, c_up))
                else:
                    dxs.put(r0, delta2d @ weight)
            if dense_trace:
                actives[i] = _active_csr(c_bits, c_vals.numel(), r1 - r0, n_out) + (
                    ops.band_grad(g_spk, c_bits, c_vals, nrn.shape, nrn.p, nrn.gamma, True),)
            elif need_w:
                colptr, rows, xvals = (csc_saved[3 * i:3 * i + 3] if ctx.x_compact
                                       else (None, None, None))
                form = _choose_dw(cfg, ctx.x_compact, rows.numel() if ctx.x_compact else 0,
                                  ctx.x_compact and xvals.numel() == 0, c_vals.numel(),
                                  ctx.trace_beta if ctx.x_compact else None, t1 - t0, B, n_in,
                                  n_out, grad_mem, one_pass)
                if form == "dense":
                    g_w = delta2d.t() @ _span(x, t0, t1, T).reshape(r1 - r0, n_in)
                elif form == "spikes":
                    g_w = ops.dw_spikes(delta2d, colptr, rows, xvals, n_in).t()
                else:
                    rowptr, cols = _active_csr(c_bits, c_vals.numel(), r1 - r0, n_out)
                    eps_vals = ops.band_grad(g_spk, c_bits, c_vals, nrn.shape, nrn.p,
                                             nrn.gamma, True)
                    g_w = ops.dw_trace(rowptr, cols, eps_vals, colptr, rows, xvals,
                                       ctx.trace_beta, t1 - t0, B, n_out).t()
                d_w = add(d_w, g_w)
                if report:
                    cfg.report["dw"] = form
            if need_b:
                d_b = add(d_b, delta2d.sum(0))
            if need_beta:
                prev = mem0f if t0 == 0 else mem[t0 - 1]
                d_beta = add(d_beta, _beta_grad(delta, mem[t0:t1], prev, c_rbits, nrn))
            if need_theta:
                band = _band_part(g_spk, c_bits, c_vals, nrn)
                d_theta = add(d_theta, _theta_grad(delta, band, c_rbits, nrn))
            del delta, delta2d  # not alive while the next chunk runs
        if dense_trace:
            rowptr, cols, eps_vals = _stack_csr(actives, band_ends if ctx.band_counts else
                                                [0, vals.numel()])
            d_w = ops.dw_trace_dense(rowptr, cols, eps_vals, x.reshape(T * B, n_in),
                                     ctx.trace_beta, T, B, n_out).t()
            if report:
                cfg.report["dw"] = "trace"
        if report:
            cfg.report["bwd"] = " + ".join(sorted(passes))
            if need_x:
                cfg.report["dx_masked"] = up_bits is not None
        beta_meta, theta_meta, mem0_meta = ctx.meta
        d_x = dxs.out.view(T, B, n_in) if need_x else None
        d_beta = _reduce(d_beta, step, beta_meta) if need_beta else None
        d_theta = _reduce(d_theta, step, theta_meta) if need_theta else None
        d_mem0 = _reduce(carry, step, mem0_meta) if need_mem0 else None
        return d_x, d_w, d_b, d_beta, d_theta, d_mem0, None, None, None, None


def _one_pass_applies(ctx, grad_spk, grad_mem, up_bits):
    """Whether the backward may run a chunk as one CPU op (``linear_lif_bwd``, Δ never
    stored; used for a chunk whose ∂W goes by the input's nonzeros): reset subtract/none,
    fixed β and θ, a finite band, the input kept compact, the input gradient (if any)
    band-limited, no membrane gradient."""
    cfg, nrn = ctx.cfg, ctx.cfg.neuron
    need_x, need_w, _, need_beta, need_theta, *_ = ctx.needs_input_grad
    return not (grad_spk is None or grad_mem is not None or cfg.readout or not need_w
                or not ctx.x_compact or (need_x and up_bits is None) or need_beta
                or need_theta or nrn.reset == ZERO or not nrn.banded
                or grad_spk.device.type != "cpu" or torch.compiler.is_compiling())


def spiking_linear(x, weight, bias, beta, theta, mem0, cfg):
    """Fused ``SpikingLinear`` forward: returns ``(out, mem)`` with ``out`` the spikes
    ``[T, B, n_out]`` (or the membrane for a readout) and ``mem`` the membrane (None unless
    ``cfg.membrane`` or a readout).

    ``beta`` clamped by the caller; ``theta`` ignored for a readout. The input gradient is
    masked by the upstream band when ``x`` carries a valid band tag and ``cfg.sparse``.
    """
    work = compute_dtype(x)
    if work != x.dtype:  # float16/bfloat16 on the CPU: computed in float32
        cast = lambda t: None if t is None else t.to(work)  # noqa: E731
        out, mem = spiking_linear(_cast_spikes(x, work), weight.to(work), cast(bias), beta,
                                  theta, cast(mem0), cfg)
        mem = None if mem is None else mem.to(x.dtype)
        return (mem, mem) if cfg.readout else (_cast_spikes(out, x.dtype), mem)
    up_bits = band_of(x) if cfg.sparse else None
    if cfg.readout:
        theta = torch.full((), math.inf, dtype=x.dtype, device=x.device)
    out_csc = []  # filled by the forward: the spikes' compact form, when it made one
    spk, mem, bits, vals = _SpikingLinear.apply(x, weight, bias, beta, theta, mem0, up_bits,
                                                cfg, torch.is_grad_enabled(), out_csc)
    shape = (*x.shape[:2], weight.shape[0])
    mem = mem.view(shape) if cfg.membrane or cfg.readout else None
    if cfg.report is not None and not cfg.readout:
        cfg.report["in_band"] = vals.numel()  # the band size (an adaptive band's input)
    if cfg.readout:
        return mem, mem
    spk = _mark_band(spk.view(shape), bits, vals, cfg.neuron)
    return (tag_events(spk, *out_csc) if out_csc else spk), mem
