"""The op ``nonzero_csc`` (the compact input of ``spiking_linear``) against
``reference.nonzero_csc``: CPU kernel in float32/float64 and, with a GPU, the CUDA kernel in
every dtype against the CPU reference in float64; densities from empty to too dense, binary
and graded values, degenerate and odd shapes; opcheck; bad inputs; ``compact_input``."""

import pytest
import torch

from snntorch_sparse import _fused, _ops, reference as ref

ops = _ops.ops

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MAX_DENSITY = 0.25
# (R, n_in): a single row / column, n_in below, at and across the kernels' blocks, odd sizes.
SHAPES = [(1, 37), (53, 1), (200, 64), (301, 129), (1000, 700)]
DENSITIES = [0.0, 0.01, 0.2, 0.3]  # 0.3 > MAX_DENSITY: too dense


def make_x(R, n_in, density, binary, dtype, seed, device="cpu"):
    """Random ``[R, n_in]`` with about ``density`` nonzeros: 1s, or graded values that
    include some exact 1s (so the 'all ones' flag must look at every value)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(R, n_in, generator=g, dtype=torch.float64) < density
    vals = torch.ones(R, n_in, dtype=torch.float64)
    if not binary:
        vals = torch.where(torch.rand(R, n_in, generator=g) < 0.3, vals,
                           torch.randn(R, n_in, generator=g, dtype=torch.float64))
    return (mask * vals).to(dtype).to(device)


def assert_same(got, want):
    for name, a, b in zip(("colptr", "rows", "xvals"), got, want):
        assert a.dtype == b.dtype, name
        assert a.device == b.device, name
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "graded"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_matches_reference(shape, density, binary, dtype):
    x = make_x(*shape, density, binary, dtype, seed=hash((shape, density, binary)) % 2**31)
    want = ref.nonzero_csc(x, MAX_DENSITY)
    got = ops.nonzero_csc(x, MAX_DENSITY)
    assert_same(got, want)
    too_dense = int((x != 0).sum()) > MAX_DENSITY * x.numel()
    assert (got[0].numel() == 0) == too_dense
    if not too_dense:
        assert got[0].numel() == shape[1] + 1
        spikes_only = not bool(((x != 0) & (x != 1)).any())
        assert (got[2].numel() == 0) == spikes_only
        assert spikes_only or got[2].numel() == got[1].numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "graded"])
def test_cpu_dense_rows_in_sparse_input(binary, dtype):
    """Kept compact (max density 1) with whole chunks of rows too dense to be listed (the
    kernel then reads those rows again) next to sparse and empty ones, and a row of NaN,
    -0.0 and tiny values (nonzero unless exactly ±0)."""
    x = make_x(1200, 300, 0.02, binary, dtype, seed=11)
    x[100:500] = make_x(400, 300, 0.9, binary, dtype, seed=12)
    x[700:900] = 0
    x[950, :5] = torch.tensor([float("nan"), -0.0, 1e-30, -1.0, 0.0], dtype=dtype)
    got = ops.nonzero_csc(x, 1.0)
    want = ref.nonzero_csc(x, 1.0)
    for name, a, b in zip(("colptr", "rows", "xvals"), got, want):
        assert torch.equal(a, b) or (name == "xvals" and torch.equal(a.nan_to_num(7.0),
                                                                   b.nan_to_num(7.0))), name
    assert got[1].numel() == int((x != 0).sum())


def test_cpu_reconstructs_input():
    """Independent of the reference: the CSC arrays scatter back to x."""
    x = make_x(257, 131, 0.05, False, torch.float64, seed=3)
    colptr, rows, xvals = ops.nonzero_csc(x, 1.0)
    col = torch.repeat_interleave(torch.arange(131), colptr.diff())
    back = torch.zeros_like(x)
    back[rows.long(), col] = xvals
    assert torch.equal(back, x)
    same_col = col[1:] == col[:-1]
    assert bool((rows[1:][same_col] > rows[:-1][same_col]).all())  # ascending in a column


def test_cpu_threshold_and_special_values():
    x = torch.zeros(4, 5)
    x[0, 0] = x[1, 2] = x[3, 4] = x[2, 1] = x[0, 3] = 1.0  # 5 of 20 = 25 %
    assert ops.nonzero_csc(x, 0.25)[0].numel() == 6         # at the limit: kept
    assert ops.nonzero_csc(x, 0.24)[0].numel() == 0         # just over: too dense
    x[2, 2] = -0.0  # a zero; NaN is a nonzero that is not 1
    x[3, 0] = float("nan")
    got = ops.nonzero_csc(x, 1.0)
    want = ref.nonzero_csc(x, 1.0)
    for a, b in zip(got, want):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    assert got[1].numel() == 6 and got[2].numel() == 6


@pytest.mark.parametrize("shape", [(0, 7), (5, 0), (0, 0)], ids=str)
def test_cpu_empty(shape):
    x = torch.zeros(shape)
    assert_same(ops.nonzero_csc(x, MAX_DENSITY), ref.nonzero_csc(x, MAX_DENSITY))


def test_non_contiguous_input():
    x = make_x(90, 40, 0.1, False, torch.float64, seed=5)
    xt = x.t()  # a strided view
    assert_same(ops.nonzero_csc(xt, MAX_DENSITY), ref.nonzero_csc(xt.contiguous(), MAX_DENSITY))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "graded"])
@pytest.mark.parametrize("density", [0.05, 0.3])
def test_opcheck(density, binary):
    x = make_x(33, 17, density, binary, torch.float64, seed=11)
    torch.library.opcheck(ops.nonzero_csc.default, (x, MAX_DENSITY))


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(10), "2-D"),
    (torch.zeros(3, 4, 5), "2-D"),
    (torch.zeros(3, 4, dtype=torch.int32), "float"),
], ids=["1d", "3d", "int"])
def test_bad_input(bad, match):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        ops.nonzero_csc(bad, MAX_DENSITY)


def test_compact_input_contract():
    x = make_x(120, 30, 0.02, True, torch.float32, seed=7)
    colptr, rows, xvals = _fused.compact_input(x)
    assert_same((colptr, rows, xvals), ref.nonzero_csc(x, _fused.COMPACT_INPUT_MAX_DENSITY))
    assert xvals.numel() == 0
    assert _fused.compact_input(make_x(120, 30, 0.5, True, torch.float32, seed=8)) is None


# ------------------------------------------------------------------------------ CUDA
@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=["f16", "bf16", "f32", "f64"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "graded"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES + [(5000, 3)], ids=str)
def test_cuda_matches_reference(shape, density, binary, dtype):
    x = make_x(*shape, density, binary, dtype, seed=hash((shape, density)) % 2**31, device="cuda")
    want = ref.nonzero_csc(x.cpu().double(), MAX_DENSITY)
    got = ops.nonzero_csc(x, MAX_DENSITY)
    assert all(t.is_cuda for t in got)
    assert got[2].dtype == dtype
    assert_same((got[0].cpu(), got[1].cpu(), got[2].cpu().double()), want)


@CUDA
@pytest.mark.cuda
def test_cuda_empty_and_errors():
    for shape in [(0, 7), (5, 0)]:
        x = torch.zeros(shape, device="cuda")
        got = ops.nonzero_csc(x, MAX_DENSITY)
        assert_same(tuple(t.cpu() for t in got), ref.nonzero_csc(x.cpu(), MAX_DENSITY))
    with pytest.raises(RuntimeError, match="2-D"):
        ops.nonzero_csc(torch.zeros(10, device="cuda"), MAX_DENSITY)
    with pytest.raises(RuntimeError, match="float"):
        ops.nonzero_csc(torch.zeros(3, 4, dtype=torch.int32, device="cuda"), MAX_DENSITY)


@CUDA
@pytest.mark.cuda
def test_cuda_opcheck():
    x = make_x(70, 45, 0.05, False, torch.float32, seed=13, device="cuda")
    torch.library.opcheck(ops.nonzero_csc.default, (x, MAX_DENSITY))
