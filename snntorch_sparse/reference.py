"""Executable specification of every compiled op, in plain PyTorch.

Every kernel in ``csrc/`` computes exactly one function below (the ``*_ref`` with the
same name as the op), and the tests compare them on fresh random inputs. When the
compiled library cannot be built these functions *are* the backend (see ``_ops.py``).

Notation (DESIGN.md §2): ``u = U − θ`` is the shifted membrane, ``B_th`` the band
half-width, ``γ`` the graded-spikes factor, ``g`` the surrogate shape. Sequences are
time-major and flattened to ``[T, M]`` (``M`` = batch × neurons); the rows of a weight
gradient are indexed by ``r = t·B + b`` (time-major).

Compact storage of the band (used by the per-step spike op *and* the fused layers):

* ``bits``: int32 words, element ``k`` of the flattened tensor is bit ``k % 32`` of word
  ``k // 32``; set iff ``|u_k| < B_th`` (NaN is never in the band).
* ``vals``: ``u_k`` for the set bits, in increasing ``k``.
* Dense mode (``B_th = inf``): ``bits`` is empty and ``vals`` holds every ``u_k``.
"""

import math

import torch

# Surrogate shapes; the integer is the ``shape`` argument of the ops.
SHAPES = ("fast_sigmoid", "atan", "sigmoid", "triangular", "straight_through")
FAST_SIGMOID, ATAN, SIGMOID, TRIANGULAR, STRAIGHT_THROUGH = range(5)
# Reset mechanisms, numbered as snnTorch's ``reset_mechanism_val``.
RESETS = ("subtract", "zero", "none")
SUBTRACT, ZERO, NONE = range(3)


# --------------------------------------------------------------------------- bits
def pack_bits(mask):
    """Pack a boolean tensor (any shape, flattened) into int32 words, LSB first."""
    flat = mask.reshape(-1)
    n = flat.numel()
    words = (n + 31) // 32
    padded = torch.zeros(words * 32, dtype=torch.int64, device=flat.device)
    padded[:n] = flat.to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64, device=flat.device) << torch.arange(
        32, device=flat.device
    )
    packed = (padded.view(words, 32) * weights).sum(1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # two's complement
    return packed.to(torch.int32)


def unpack_bits(bits, n):
    """Inverse of :func:`pack_bits`: a flat boolean tensor of length ``n``."""
    shifts = torch.arange(32, device=bits.device, dtype=torch.int64)
    unpacked = (bits.to(torch.int64).unsqueeze(1) >> shifts) & 1
    return unpacked.reshape(-1)[:n].bool()


# ---------------------------------------------------------------------- surrogates
def surrogate_grad(grad, u, shape, p):
    """``grad · g(u)`` with snnTorch's own expression order (bit-exact in float64).

    ``p`` is the shape parameter: slope (fast_sigmoid, sigmoid), alpha (atan),
    threshold (triangular); unused for straight_through.
    """
    if shape == FAST_SIGMOID:  # grad / (k|u| + 1)²
        d = p * u.abs() + 1.0
        return grad / (d * d)
    if shape == ATAN:  # (α/2) / (1 + (π/2·α·u)²) · grad; python's c/x is x⁻¹·c
        x = (math.pi / 2 * p) * u
        return (1.0 / (x * x + 1)) * (p / 2) * grad
    if shape == SIGMOID:  # grad · k · e^{−ku} / (e^{−ku} + 1)²
        e = torch.exp(-p * u)
        d = e + 1
        return grad * p * e / (d * d)
    if shape == TRIANGULAR:  # snnTorch's Triangular: +θ·grad for u < 0, −θ·grad for u ≥ 0
        g = grad * p
        return torch.where(u >= 0, -g, g)
    if shape == STRAIGHT_THROUGH:
        return grad.clone()
    raise ValueError(f"unknown surrogate shape {shape}")


# ------------------------------------------------------------------------ op refs
def spike(u, shape, p, b_th, gamma):
    """Op ``spike``: ``S = γ·H(u)`` (u > 0 strictly) plus the compact band of ``u``.

    Returns ``(spk, bits, vals)``; ``spk`` has ``u``'s shape and dtype.
    ``shape`` and ``p`` are unused in the forward; they are arguments so that the
    registered autograd formula (``_ops.py``) can read them.
    """
    if not b_th > 0:  # NaN, 0, negative, -inf: as the kernels' check_b_th
        raise ValueError(f"spike: `b_th` must be > 0 (+inf: dense), got {b_th}")
    spk = (u > 0).to(u.dtype) * gamma
    flat = u.reshape(-1)
    if math.isinf(b_th):
        return spk, torch.empty(0, dtype=torch.int32, device=u.device), flat.clone()
    inband = flat.abs() < b_th
    return spk, pack_bits(inband), flat[inband].clone()


def band_grad(grad, bits, vals, shape, p, gamma, compact):
    """Op ``band_grad``: ``γ·g(u)·grad`` inside the band, 0 outside.

    ``compact=False``: returns a tensor shaped like ``grad``. ``compact=True``:
    returns only the in-band entries, in the order of ``vals``.
    """
    flat = grad.reshape(-1)
    if bits.numel() == 0:  # dense mode: vals holds every u
        out = surrogate_grad(flat, vals, shape, p) * gamma
        return out if compact else out.view(grad.shape)
    inband = unpack_bits(bits, flat.numel())
    sel = surrogate_grad(flat[inband], vals, shape, p) * gamma
    if compact:
        return sel
    out = torch.zeros_like(flat)
    out[inband] = sel
    return out.view(grad.shape)


def lif_fwd(cur, mem0, beta, theta, reset):
    """Op ``lif_fwd``: the membrane sequence ``U[1..T]`` ``[T, M]`` from ``U[0] = mem0``.

    ``beta``/``theta`` are ``[M]`` (already clamped/expanded). Reset flag
    ``r[t] = H(U[t-1] − θ)``; expression order is snnTorch's ``Leaky``:
    subtract ``(β·U + I) − r·θ``; zero ``β·((1 − r)·U) + I``; none ``β·U + I``.
    """
    mem = mem0
    out = []
    for t in range(cur.shape[0]):
        r = (mem - theta > 0).to(cur.dtype)
        if reset == SUBTRACT:
            mem = beta * mem + cur[t] - r * theta
        elif reset == ZERO:
            mem = beta * ((1 - r) * mem) + cur[t]
        else:
            mem = beta * mem + cur[t]
        out.append(mem)
    return torch.stack(out)


def lif_bwd(eps, beta, rbits, reset, dmem_last=None):
    """Op ``lif_bwd``: the Δ scan of DESIGN.md §2. Returns ``(delta [T, M], dmem0 [M])``.
    (``dmem_last``, not part of the op: ``a[T]·Δ[T]``, see :func:`lif_bwd_band`.)

    ``eps[t] = e[t]·γ·g(u[t])·band + m[t]`` (the direct gradient into ``U[t]``);
    ``Δ[t] = eps[t] + a[t+1]·Δ[t+1]``; ``dmem0 = a[0]·Δ[0]`` (0-based t), with
    ``a[t] = β`` (subtract/none) or ``β·(1 − r[t])`` (zero). ``rbits`` packs
    ``r[t] = H(U[t-1] − θ)`` over ``[T, M]`` (empty unless ``reset == ZERO``).
    """
    T, M = eps.shape
    if reset == ZERO:
        r = unpack_bits(rbits, T * M).view(T, M).to(eps.dtype)
        a = beta * (1 - r)
    else:
        a = beta.expand(T, M)
    delta = torch.empty_like(eps)
    if T == 0:
        return delta, (torch.zeros(M, dtype=eps.dtype, device=eps.device) if dmem_last is None
                       else dmem_last.clone())
    for t in range(T - 1, -1, -1):
        acc = eps[t] + (a[t + 1] * acc if t + 1 < T else (0 if dmem_last is None else dmem_last))
        delta[t] = acc
    return delta, a[0] * delta[0]


def lif_bwd_band(grad_spk, bits, vals, grad_mem, dmem_last, beta, rbits, shape, p, gamma, reset):
    """Op ``lif_bwd_band``: the neuron backward of a layer from its output gradients,
    :func:`lif_bwd` of ``eps = band_grad(grad_spk) + grad_mem`` (either may be None, not
    both), with ``a[T]·Δ[T] = dmem_last`` (None: 0) — the gradient that reaches the last
    membrane from later steps when a sequence is processed in chunks: the ``dmem0`` of the
    chunk after, so a chunked scan equals the whole one bit for bit.

    The compiled kernels form ``eps`` one step at a time and evaluate the surrogate only at
    the band's elements, so no dense ``eps`` exists.
    """
    if grad_spk is None:
        if grad_mem is None:
            raise RuntimeError("lif_bwd_band: needs `grad_spk` or `grad_mem` (both are None)")
        eps = grad_mem
    else:
        eps = band_grad(grad_spk, bits, vals, shape, p, gamma, False)
        if grad_mem is not None:
            eps = eps + grad_mem
    return lif_bwd(eps, beta, rbits, reset, dmem_last)


def nonzero_csc(x, max_density):
    """Op ``nonzero_csc``: the nonzeros of ``x [R, n_in]`` by column (CSC), the input
    format of :func:`dw_spikes` / :func:`dw_trace`.

    Returns ``(colptr int64 [n_in+1], rows int32 [nnz], xvals)``: column ``i`` owns
    ``k ∈ [colptr[i], colptr[i+1])`` with ``rows`` ascending; ``xvals`` holds ``x[rows_k, i]``
    in the same order, or is empty when every nonzero equals 1 (spikes). When
    ``nnz > max_density·numel`` all three are empty ("too dense, keep ``x`` as is").

    Example::

        >>> x = torch.tensor([[0., 1.], [1., 0.], [0., 1.]])
        >>> nonzero_csc(x, 0.5)
        (tensor([0, 1, 3]), tensor([1, 0, 2], dtype=torch.int32), tensor([]))
    """
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"nonzero_csc: `x` must be a 2-D floating-point tensor [R, n_in], "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
    nzt = x.t() != 0
    nnz = int(nzt.sum())
    if nnz > max_density * x.numel():
        return (torch.empty(0, dtype=torch.int64, device=x.device),
                torch.empty(0, dtype=torch.int32, device=x.device), x.new_empty(0))
    col, rows = nzt.nonzero(as_tuple=True)  # row-major over x.t(): by column, rows ascending
    colptr = torch.zeros(x.shape[1] + 1, dtype=torch.int64, device=x.device)
    colptr[1:] = torch.cumsum(nzt.sum(1), 0)
    xvals = x[rows, col]
    if not bool((xvals != 1).any()):
        xvals = x.new_empty(0)
    return colptr, rows.to(torch.int32), xvals


def csc_dense(colptr, rows, xvals, R, dtype):
    """The dense ``[R, n_in]`` input of a compact (CSC) one, as :func:`nonzero_csc` makes
    it (``xvals`` empty: every nonzero is 1)."""
    n_in = colptr.numel() - 1
    x = torch.zeros(R, n_in, dtype=dtype, device=colptr.device)
    col = torch.repeat_interleave(
        torch.arange(n_in, device=x.device), colptr[1:] - colptr[:-1]
    )
    x[rows.long(), col] = xvals if xvals.numel() else 1
    return x


def dw_spikes(delta, colptr, rows, xvals, n_in):
    """Op ``dw_spikes``: ``dWᵀ[i, :] = Σ_k x_k·Δ[rows_k, :]`` over input nonzeros.

    The input nonzeros are stored by column (CSC over ``[R, n_in]``): column ``i``
    owns ``k ∈ [colptr[i], colptr[i+1])``; ``xvals`` empty means every value is 1.
    Returns ``[n_in, n_out]`` (the transpose of the weight gradient).
    """
    out = delta.new_zeros(n_in, delta.shape[1])
    col = torch.repeat_interleave(
        torch.arange(n_in, device=delta.device), colptr[1:] - colptr[:-1]
    )
    contrib = delta[rows.long()]
    if xvals.numel():
        contrib = contrib * xvals[:, None]
    return out.index_add_(0, col, contrib)


def dw_trace(rowptr, cols, eps_vals, colptr, rows, xvals, beta, T, B, n_out):
    """Op ``dw_trace``: paper eq. 9–10, ``dWᵀ[i, j] = Σ_active ε[r, j]·trace[r, i]``.

    Active set as CSR over rows ``r = t·B + b`` (``rowptr [T·B+1]``, ``cols``,
    ``eps_vals``); the input as CSC (as in :func:`dw_spikes`). The trace is the
    scalar-β filtered input ``trace[t] = β·trace[t−1] + X[t]``; it is never stored.
    Valid for scalar β with reset subtract/none and no direct membrane gradient: then
    ``Δ[t] = Σ_{s≥t} β^{s−t} ε[s]``, so ``Σ_t Δ[t]ᵀX[t] = Σ_s ε[s]ᵀ trace[s]``.
    """
    x = csc_dense(colptr, rows, xvals, T * B, eps_vals.dtype)
    return dw_trace_dense(rowptr, cols, eps_vals, x, beta, T, B, n_out)


def dw_trace_dense(rowptr, cols, eps_vals, x, beta, T, B, n_out):
    """Op ``dw_trace_dense``: :func:`dw_trace` for a dense input ``x [T·B, n_in]`` — the
    weight gradient in ``≈ nnz(ε)·n_in`` multiply-adds instead of the dense
    ``T·B·n_in·n_out``, when few outputs are active."""
    x = x.view(T, B, -1)
    trace = torch.empty_like(x)
    acc = torch.zeros_like(x[0])
    for t in range(T):
        acc = beta * acc + x[t]
        trace[t] = acc
    trace = trace.view(T * B, -1)
    row = torch.repeat_interleave(
        torch.arange(T * B, device=x.device), rowptr[1:] - rowptr[:-1]
    )
    eps = torch.zeros(T * B, n_out, dtype=eps_vals.dtype, device=x.device)
    eps[row, cols.long()] = eps_vals
    return (eps.t() @ trace).t()  # dWᵀ, laid out as the transpose of dW (as the kernels)


def dx_masked(delta, weight_t, bits):
    """Op ``dx_masked``: ``dX[r, i] = Σ_j Δ[r, j]·Wᵀ[i, j]`` where bit ``r·n_in + i``
    of ``bits`` is set (the upstream spiking layer is in its band), else 0 (eq. 12)."""
    full = delta @ weight_t.t()
    keep = unpack_bits(bits, full.numel()).view(full.shape)
    return torch.where(keep, full, torch.zeros_like(full))


# ------------------------------------------------------------- whole-layer refs
class _SpikeRef(torch.autograd.Function):
    """Plain-autograd spike with the band-limited surrogate (paper eq. 7–8, 20)."""

    @staticmethod
    def forward(ctx, u, shape, p, b_th, gamma):
        ctx.save_for_backward(u)
        ctx.args = (shape, p, b_th, gamma)
        return (u > 0).to(u.dtype) * gamma

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        shape, p, b_th, gamma = ctx.args
        g = surrogate_grad(grad, u, shape, p) * gamma
        if not math.isinf(b_th):
            g = torch.where(u.abs() < b_th, g, torch.zeros_like(g))
        return g, None, None, None, None


def linear_fwd_events(colptr, rows, xvals, weight_t, bias, R):
    """Op ``linear_fwd_events``: the fully connected currents summed over the input's
    nonzeros (event-driven; DESIGN.md §2), the input given compact as by
    :func:`nonzero_csc` (``xvals`` empty: every nonzero is 1):

        I[r, j] = b[j] + Σ_{i: X[r, i] ≠ 0} X[r, i]·Wᵀ[i, j]

    — ``X·Wᵀ + b`` (equal up to the order of the sums) for finite weights, at a cost of
    ``nnz(X)·n_out`` instead of ``R·n_in·n_out``, never reading the dense ``X [R, n_in]``.
    ``weight_t [n_in, n_out]``, ``bias [n_out]`` or None.
    """
    if weight_t.dim() != 2 or colptr.numel() != weight_t.shape[0] + 1:
        raise ValueError(f"linear_fwd_events: `weight_t` [n_in, n_out] and `colptr` [n_in + 1] "
                         f"expected, got shapes {tuple(weight_t.shape)} and {tuple(colptr.shape)}")
    out = csc_dense(colptr, rows, xvals, R, weight_t.dtype) @ weight_t
    return out if bias is None else out + bias


def linear_lif_events(colptr, rows, xvals, weight_t, bias, mem0, beta, theta, R, reset, b_th,
                      gamma, max_density):
    """Op ``linear_lif_events``: a hidden fully connected LIF layer's forward from its
    compact input, the composition

        I = linear_fwd_events(X),  U = lif_fwd(I, U[0]),  (S, bits, vals) = spike(U − θ),
        (colptr', rows', xvals') = nonzero_csc(S, max_density)

    over ``R = T·B`` rows (row ``t·B + b``; ``mem0``/``beta``/``theta`` ``[B·n_out]``, the
    neuron ``(b, j)`` at ``b·n_out + j``). Returns ``(S [R, n_out], bits, vals, U[T] [B·n_out],
    colptr', rows', xvals')`` — the spikes, their band (finite ``b_th``), the last membrane
    (the next time chunk's ``U[0]``) and the spikes' own compact form (the next layer's
    input). The kernel never forms ``I`` or ``U`` whole.
    """
    n_out = weight_t.shape[1]
    if (mem0.dim() != 1 or mem0.numel() == 0 or mem0.numel() % n_out or R <= 0
            or R % (mem0.numel() // n_out)):
        raise ValueError(f"linear_lif_events: `mem0` [B·n_out] with R = {R} a whole number of "
                         f"steps expected, got shape {tuple(mem0.shape)}")
    if not math.isfinite(b_th):
        raise ValueError(f"linear_lif_events: `b_th` must be finite (the compact band), got {b_th}")
    cur = linear_fwd_events(colptr, rows, xvals, weight_t, bias, R).reshape(-1, mem0.numel())
    mem = lif_fwd(cur, mem0, beta, theta, reset)
    spk, bits, vals = spike(mem - theta, ATAN, 2.0, b_th, gamma)
    spk = spk.reshape(R, n_out)
    return (spk, bits, vals, mem[-1].clone(), *nonzero_csc(spk, max_density))


def linear_lif_bwd(grad_spk, bits, vals, dmem_last, beta, colptr, rows, xvals, weight_t, up_bits,
                   shape, p, gamma, need_x, need_b):
    """Op ``linear_lif_bwd``: the backward of a hidden fully connected LIF layer with reset
    "subtract" or "none" (``a[t] = β``), a compact input (``colptr, rows, xvals`` as
    :func:`nonzero_csc`) and no membrane gradient, the composition

        Δ, ∂U[0] = lif_bwd_band(grad_spk, bits, vals, dmem_last, β),  ∂Wᵀ = dw_spikes(Δ, x),
        ∂b = Σ_r Δ[r],   ∂X = dx_masked(Δ, Wᵀ, up_bits)

    (``grad_spk [T, B·n_out]``; ``dmem_last`` the gradient reaching the last membranes from
    later steps — a time chunk's successor's ``∂U[0]`` — or None; ``∂b`` only if ``need_b``,
    ``∂X [T·B, n_in]`` only if ``need_x``, else empty). Returns ``(∂Wᵀ [n_in, n_out], ∂b, ∂X, ∂U[0] [B·n_out])``. The
    kernel never stores Δ: it adds each row's terms as the reverse scan reaches it.
    """
    n_in, n_out = weight_t.shape
    empty_rbits = torch.empty(0, dtype=torch.int32, device=grad_spk.device)
    delta, dmem0 = lif_bwd_band(grad_spk, bits, vals, None, dmem_last, beta, empty_rbits, shape,
                                p, gamma, SUBTRACT)
    delta = delta.reshape(-1, n_out)
    dwt = dw_spikes(delta, colptr, rows, xvals, n_in)
    db = delta.sum(0) if need_b else delta.new_empty(0)
    dx = dx_masked(delta, weight_t, up_bits) if need_x else delta.new_empty(0)
    return dwt, db, dx, dmem0


def spike_fn(u, shape=ATAN, p=2.0, b_th=0.2, gamma=1.0):
    """Reference spike with autograd: ``γ·H(u)`` forward, ``γ·g(u)·[|u| < B_th]`` backward."""
    return _SpikeRef.apply(u, shape, p, math.inf if b_th is None else b_th, gamma)


def lif_sequence(cur, mem0, beta, theta, gamma=1.0, reset=SUBTRACT, shape=ATAN, p=2.0,
                 b_th=0.2):
    """A Leaky layer over a whole sequence, by plain autograd (the gradient oracle).

    ``cur [T, ...]``; ``beta``/``theta`` broadcast against one step (may require grad;
    β is clamped to [0, 1] here as snnTorch does). Returns ``(spk [T, ...], mem [T, ...])``.
    """
    beta = beta.clamp(0, 1)
    mem = mem0
    spks, mems = [], []
    for t in range(cur.shape[0]):
        r = (mem - theta > 0).to(cur.dtype).detach()
        if reset == SUBTRACT:
            mem = beta * mem + cur[t] - r * theta
        elif reset == ZERO:
            mem = beta * ((1 - r) * mem) + cur[t]
        else:
            mem = beta * mem + cur[t]
        spks.append(spike_fn(mem - theta, shape, p, b_th, gamma))
        mems.append(mem)
    return torch.stack(spks), torch.stack(mems)


def _neuron_layer(cur, mem0, beta, theta, gamma, reset, shape, p, b_th, readout):
    """The neuron part of a fused layer: spikes, or the membrane of a readout."""
    if mem0 is None:
        mem0 = torch.zeros_like(cur[0])
    if readout:  # never fires, so never resets
        _, mem = lif_sequence(cur, mem0, beta, torch.full_like(cur[0], math.inf), gamma,
                              NONE, shape, p, b_th)
        return mem
    spk, _ = lif_sequence(cur, mem0, beta, theta, gamma, reset, shape, p, b_th)
    return spk


def spiking_linear(x, weight, bias, beta, theta, gamma=1.0, reset=SUBTRACT, shape=ATAN,
                   p=2.0, b_th=0.2, readout=False, mem0=None):
    """``SpikingLinear`` by plain autograd: ``I[t] = X[t]·Wᵀ + b`` then :func:`lif_sequence`.

    ``readout=True`` is the paper's readout (infinite threshold): returns the membrane.
    """
    cur = x @ weight.t()
    if bias is not None:
        cur = cur + bias
    return _neuron_layer(cur, mem0, beta, theta, gamma, reset, shape, p, b_th, readout)


def spiking_conv2d(x, weight, bias, beta, theta, stride=1, padding=0, dilation=1, groups=1,
                   gamma=1.0, reset=SUBTRACT, shape=ATAN, p=2.0, b_th=0.2, readout=False,
                   mem0=None):
    """``SpikingConv2d`` by plain autograd: ``I[t] = conv2d(X[t], W) + b`` (all ``T·B``
    images at once) then :func:`lif_sequence`. ``x [T, B, C_in, H, W]``; a per-channel
    ``beta``/``theta`` is ``[C_out]``.
    """
    T, B = x.shape[:2]
    cur = torch.nn.functional.conv2d(x.flatten(0, 1), weight, bias, stride, padding, dilation,
                                     groups)
    cur = cur.view(T, B, *cur.shape[1:])
    per_channel = lambda v: v.view(-1, 1, 1) if v.dim() == 1 else v  # noqa: E731
    return _neuron_layer(cur, mem0, per_channel(beta), per_channel(theta), gamma, reset, shape,
                         p, b_th, readout)


def rate_eligibility(mem, mem0, beta, theta, gamma=1.0, reset=SUBTRACT, shape=ATAN, p=2.0,
                     b_th=0.2):
    """``κ [T, ...]`` and ``e = (1/T)·Σ_t κ[t]·dS/dU[t]`` by the literal recursion of DESIGN.md
    §2: ``κ[1] = 1``, ``κ[t] = 1 + a[t]·κ[t−1]``, ``a = β`` (subtract, none) or
    ``β·(1 − r[t])`` (zero), ``dS/dU = γ·g(U − θ)·[|U − θ| < B_th]``. All detached."""
    mem, mem0 = mem.detach(), mem0.detach()
    beta = beta.detach().clamp(0, 1)
    u = mem - theta
    sg = surrogate_grad(torch.ones_like(u), u, shape, p) * gamma
    if b_th is not None and not math.isinf(b_th):
        sg = torch.where(u.abs() < b_th, sg, torch.zeros_like(sg))
    prev = torch.cat((mem0.expand_as(mem[:1]), mem[:-1]))
    kappas = []
    kappa = None
    for t in range(mem.shape[0]):
        if kappa is None:
            kappa = torch.ones_like(mem[0])
        else:
            a = beta * (1 - (prev[t] - theta > 0).to(mem.dtype)) if reset == ZERO else beta
            kappa = 1 + a * kappa
        kappas.append(kappa)
    kappa = torch.stack(kappas)
    return kappa, (kappa * sg).mean(0)


def rate_spiking_linear(x, weight, bias, beta, theta, gamma=1.0, reset=SUBTRACT, shape=ATAN,
                        p=2.0, b_th=0.2, readout=False, mem0=None):
    """``SpikingLinear(backward="rate")`` by plain autograd: the straight-through form of
    DESIGN.md §2. With ``c = x̄·Wᵀ + b`` (``x̄`` the mean of ``x`` over t),

        out = S + (c·e − detach(c·e))          broadcast over T (hidden layer)
        out = U + (c·κ[t] − detach(c·κ[t]))    (readout: the membrane, κ per step)

    so the forward is the spiking forward and the gradients are ``δ = e ⊙ Σ_t G[t]``
    (readout ``Σ_t κ[t]·G[t]``), ``∂W = δᵀx̄``, ``∂b = Σ_b δ``, ``∂X[t] = δW/T``.
    Pass ``x = cur`` and ``weight = None`` for a bare Leaky layer (``c = x̄``).
    """
    def currents(v):
        return v if weight is None else v @ weight.t() + (0 if bias is None else bias)
    return _rate_layer(x, currents, beta, theta, gamma, reset, shape, p, b_th, readout, mem0)


def rate_spiking_conv2d(x, weight, bias, beta, theta, stride=1, padding=0, dilation=1,
                        groups=1, gamma=1.0, reset=SUBTRACT, shape=ATAN, p=2.0, b_th=0.2,
                        readout=False, mem0=None):
    """``SpikingConv2d(backward="rate")`` by plain autograd: :func:`rate_spiking_linear`'s
    straight-through form with ``c = conv2d(x̄, W) + b``. A per-channel ``beta``/``theta``
    is ``[C_out]``."""
    def currents(v):  # [..., C, H, W] with any leading dims
        out = torch.nn.functional.conv2d(v.flatten(0, -4), weight, bias, stride, padding,
                                         dilation, groups)
        return out.view(*v.shape[:-3], *out.shape[1:])
    per_channel = lambda v: v.view(-1, 1, 1) if v.dim() == 1 else v  # noqa: E731
    return _rate_layer(x, currents, per_channel(beta), per_channel(theta), gamma, reset,
                       shape, p, b_th, readout, mem0)


def _rate_layer(x, currents, beta, theta, gamma, reset, shape, p, b_th, readout, mem0):
    with torch.no_grad():
        cur = currents(x)
        m0 = torch.zeros_like(cur[0]) if mem0 is None else mem0.expand_as(cur[0])
        if readout:
            _, mem = lif_sequence(cur, m0, beta, torch.full_like(cur[0], math.inf), gamma,
                                  NONE, shape, p, b_th)
        else:
            out, mem = lif_sequence(cur, m0, beta, theta, gamma, reset, shape, p, b_th)
        kappa, e = rate_eligibility(mem, m0, beta, theta if not readout else math.inf,
                                    gamma, reset if not readout else NONE, shape, p, b_th)
    c = currents(x.mean(0, keepdim=True))[0]
    if readout:
        return mem + (c * kappa - (c * kappa).detach())
    return out + (c * e - (c * e).detach())


# ---- convolution
def conv_out_size(n, k, s, p, d):
    """Output length of a convolution along one axis: ``(n + 2p − d(k−1) − 1) // s + 1``."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _check_conv_delta(op, delta, in_shape, kernel, stride, padding, dilation):
    """``delta`` must be ``[R, C_out, Ho, Wo]`` with the output size of the geometry (the
    dense torch functions would otherwise fail with a message naming none of our arguments)."""
    want = [conv_out_size(n, k, s, p, d) for n, k, s, p, d in
            zip(in_shape[1:], kernel, stride, padding, dilation)]
    if delta.dim() != 4 or list(delta.shape[2:]) != want:
        raise ValueError(f"{op}: `delta` must be [R, C_out, {want[0]}, {want[1]}] (the conv output "
                         f"size of in_shape={list(in_shape)}), got shape {tuple(delta.shape)}")


def conv_dw_spikes(delta, colptr, rows, xvals, in_shape, kernel, stride, padding, dilation,
                   groups):
    """Op ``conv_dw_spikes``: the weight gradient of a 2-D convolution from the input nonzeros,

        ∂W[o, c mod C_g, ky, kx] = Σ_{nonzeros (r, c, y, x) of X} X[r, c, y, x]·Δ[r, o, oy, ox]
            over o in the group of c, with oy = (y + p − ky·d)/s integral and in [0, Ho)
            (likewise ox with x, kx and the width's s, p, d),

    = ``torch.nn.grad.conv2d_weight(X, ...)``; ``C_g = C_in/groups``. ``Δ`` is ``[R, C_out,
    Ho, Wo]``; ``X`` (``[R, C_in, H, W]``, ``in_shape = [C_in, H, W]``) is the CSC of
    ``X.reshape(R, C_in·H·W)`` given by :func:`nonzero_csc`: rows ascending within a column
    (the CPU kernel requires it), repeated entries add up.
    Returns ``[C_out, C_in/groups, kH, kW]`` (torch's weight layout).
    """
    _check_conv_delta("conv_dw_spikes", delta, in_shape, kernel, stride, padding, dilation)
    R, C_out = delta.shape[:2]
    n = colptr.numel() - 1
    col = torch.repeat_interleave(torch.arange(n, device=delta.device), colptr[1:] - colptr[:-1])
    x = delta.new_zeros(R, n)
    x.index_put_((rows.long(), col), xvals if xvals.numel() else delta.new_ones(rows.numel()),
                 accumulate=True)
    weight_shape = (C_out, in_shape[0] // groups, *kernel)
    return torch.nn.grad.conv2d_weight(x.view(R, *in_shape), weight_shape, delta, stride,
                                       padding, dilation, groups)


def conv_dx_masked(delta, weight, bits, in_shape, stride, padding, dilation, groups):
    """Op ``conv_dx_masked``: the input gradient of a 2-D convolution (``conv_transpose(Δ, W)``)
    where the upstream layer's band bit is set, else exactly 0 (eq. 12):

        ∂X[r, c, y, x] = Σ_{o in c's group, ky, kx} Δ[r, o, oy, ox]·W[o, c mod C_g, ky, kx]
            (oy, ox as in :func:`conv_dw_spikes`) if bit r·C_in·H·W + (c·H + y)·W + x is set

    = ``torch.nn.grad.conv2d_input([R, *in_shape], W, Δ, ...)`` masked; ``W`` is
    ``[C_out, C_in/groups, kH, kW]``, ``bits`` packed as :func:`pack_bits`.
    """
    _check_conv_delta("conv_dx_masked", delta, in_shape, weight.shape[2:], stride, padding,
                      dilation)
    full = torch.nn.grad.conv2d_input((delta.shape[0], *in_shape), weight, delta, stride,
                                      padding, dilation, groups)
    keep = unpack_bits(bits, full.numel()).view(full.shape)
    return torch.where(keep, full, torch.zeros_like(full))


def conv_fwd_events(x, weight, bias, stride, padding, dilation, groups):
    """Op ``conv_fwd_events``: the 2-D convolution ``conv2d(x, W) + b`` summed over the
    input's nonzeros (event-driven; DESIGN.md §2):

        I[r, o, oy, ox] = b[o] + Σ_{nonzeros (r, c, y, x) of X} X[r, c, y, x]·W[o, c mod C_g, ky, kx]
            over the taps (ky, kx) with oy = (y + p − ky·d)/s, ox likewise (as
            :func:`conv_dw_spikes`), o in the group of c

    — the dense convolution's value (equal up to the order of the sums) for finite
    weights; cost ≈ ``nnz(X)·C_out·K²/groups`` instead of ``R·Ho·Wo·C_out·C_in·K²/groups``.
    ``x [R, C_in, H, W]``, ``W [C_out, C_in/groups, kH, kW]``, ``bias [C_out]`` or None.
    Returned channels-last (``torch.channels_last``), the layout the kernels sum in.
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"conv_fwd_events: `x` and `weight` must be 4-D, got shapes "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    out = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return out.contiguous(memory_format=torch.channels_last)


# ---- synaptic
def syn_fwd(cur, syn0, mem0, alpha, beta, theta, reset):
    """Op ``syn_fwd``: synaptic current and membrane ``(syn, mem)``, both ``[T, M]``.

    ``alpha``/``beta``/``theta``/``syn0``/``mem0`` are ``[M]`` (α, β already clamped).
    Reset flag ``r[t] = H(U[t-1] − θ)``; the current is never reset (snnTorch's
    ``Synaptic`` in every reset mode). Expression order is snnTorch's::

        syn[t] = α·syn[t-1] + I[t]
        base   = β·U[t-1] + syn[t]
        U[t]   = base − r·θ (subtract);  base − base·r (zero);  base (none)
    """
    syn, mem = syn0, mem0
    syns, mems = [], []
    for t in range(cur.shape[0]):
        syn, mem = _syn_step(cur[t], syn, mem, alpha, beta, theta, reset)
        syns.append(syn)
        mems.append(mem)
    return torch.stack(syns), torch.stack(mems)


def _syn_step(cur_t, syn, mem, alpha, beta, theta, reset):
    """One step of :func:`syn_fwd` (the reset flag detached, as snnTorch's)."""
    r = (mem - theta > 0).to(cur_t.dtype).detach()
    syn = alpha * syn + cur_t
    base = beta * mem + syn
    if reset == SUBTRACT:
        return syn, base - r * theta
    if reset == ZERO:
        return syn, base - base * r
    return syn, base


def syn_bwd(eps_mem, grad_syn, alpha, beta, rbits, reset):
    """Op ``syn_bwd``: the reverse two-state scan of :func:`syn_fwd`.

    ``eps_mem[t] = e[t]·γ·g(u[t])·band + m[t]`` is the direct gradient into ``U[t]``;
    ``grad_syn`` the one into ``syn[t]`` (an empty tensor: none). With ``a[t] = β``
    (subtract/none) or ``β·(1 − r[t])`` (zero) and ``c[t] = 1`` or ``1 − r[t]`` (zero):

        Δm[t] = ε_mem[t] + a[t+1]·Δm[t+1]
        Δs[t] = (c[t]·Δm[t] + grad_syn[t]) + α·Δs[t+1]

    Returns ``(dcur = Δs [T, M], dsyn0 = α·Δs[1], dmem0 = a[1]·Δm[1])`` (1-based t).
    ``rbits`` packs ``r[t]`` over ``[T, M]`` (read only for ``reset == ZERO``).
    """
    T, M = eps_mem.shape
    if reset == ZERO:
        keep = 1 - unpack_bits(rbits, T * M).view(T, M).to(eps_mem.dtype)
        a = beta * keep
    else:
        keep = None
        a = beta.expand(T, M)
    gs = grad_syn if grad_syn.numel() else torch.zeros_like(eps_mem)
    dcur = torch.empty_like(eps_mem)
    dm, ds = eps_mem.new_zeros(M), eps_mem.new_zeros(M)
    a_next = eps_mem.new_zeros(M)  # a[T+1]: nothing after the last step
    for t in range(T - 1, -1, -1):
        dm = eps_mem[t] + a_next * dm
        cm = dm if keep is None else keep[t] * dm
        ds = (cm + gs[t]) + alpha * ds
        dcur[t] = ds
        a_next = a[t]
    return dcur, alpha * ds, a_next * dm


def synaptic_sequence(cur, syn0, mem0, alpha, beta, theta, gamma=1.0, reset=SUBTRACT,
                      shape=ATAN, p=2.0, b_th=0.2):
    """A Synaptic layer over a whole sequence, by plain autograd (the gradient oracle),
    step by step as ``snntorch.Synaptic`` (α and β clamped to [0, 1] here).

    Returns ``(spk, syn, mem)``, each ``[T, ...]``; ``spk = γ·H(U − θ)`` with the
    band-limited surrogate of :func:`spike_fn`.
    """
    alpha, beta = alpha.clamp(0, 1), beta.clamp(0, 1)
    syn, mem = syn0, mem0
    spks, syns, mems = [], [], []
    for t in range(cur.shape[0]):
        syn, mem = _syn_step(cur[t], syn, mem, alpha, beta, theta, reset)
        spks.append(spike_fn(mem - theta, shape, p, b_th, gamma))
        syns.append(syn)
        mems.append(mem)
    return torch.stack(spks), torch.stack(syns), torch.stack(mems)
