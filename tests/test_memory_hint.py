"""Large CPU outputs in huge pages (``advise_huge_pages``, ``_ops.empty_output``), reused
from the kernels' cache of freed outputs (``csrc/cpu/alloc.h``), and the max pooling that
writes into them (``_conv.max_pool2d``): a memory hint must change no value, must take
effect where the system allows it, a cached block must never serve two live tensors, and
the pooling must equal the library's in values and gradients."""

import re

import pytest
import torch
from torch import nn

import snntorch_sparse
from snntorch_sparse import _conv, _ops
from snntorch_sparse import reference as R
from snntorch_sparse._ops import empty_output, ops

needs_hint = pytest.mark.skipif(not _ops._HUGE_PAGES, reason="no compiled kernels")


def _thp_mode():
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return re.search(r"\[(\w+)\]", text).group(1)


@needs_hint
@pytest.mark.parametrize("numel,offset", [(1000, 0), (3 << 20, 0), (3 << 20, 5), (5 << 20, 1)])
def test_hint_changes_no_value(numel, offset):
    base = torch.randn(numel + offset, dtype=torch.float64)
    t = base[offset:]  # a view that starts off any page boundary
    before = base.clone()
    ops.advise_huge_pages(t)
    assert torch.equal(base, before)


@needs_hint
@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"),
                    reason="transparent huge pages are off on this system")
def test_hinted_output_gets_huge_pages():
    # Above glibc's largest heap-served block (32 MiB): a fresh mapping, never reused pages.
    t = empty_output((64 << 20) // 4, torch.float32, "cpu")
    t.fill_(1.0)  # the first write faults the pages in
    start, end = t.data_ptr(), t.data_ptr() + t.nbytes
    huge_kb = 0  # over the mappings the buffer spans (the advice splits its mapping)
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                overlaps = int(m.group(1), 16) < end and start < int(m.group(2), 16)
            elif overlaps and line.startswith("AnonHugePages:"):
                huge_kb += int(line.split()[1])
    assert huge_kb >= 2048, huge_kb


def _spikes(u):
    return ops.spike(u, R.ATAN, 2.0, 0.2, 1.0)


@needs_hint
def test_large_outputs_reuse_freed_blocks():
    snntorch_sparse.empty_cache()
    assert _ops.cached_output_bytes() == 0
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(3000, 1000, generator=g), torch.randn(3000, 1000, generator=g)
    a = _spikes(u)[0]
    ptr = a.data_ptr()
    b = _spikes(v)[0]  # a is alive: another block
    assert b.data_ptr() != ptr
    del a
    assert _ops.cached_output_bytes() >= u.numel() * 4  # kept, rounded up to huge pages
    c = _spikes(v)[0]  # the freed block again, written afresh
    assert c.data_ptr() == ptr and _ops.cached_output_bytes() == 0
    want = R.spike(v, R.ATAN, 2.0, 0.2, 1.0)[0]
    assert torch.equal(b, want) and torch.equal(c, want)
    small = _spikes(u[:10])[0]  # below the size limit: torch's own allocator
    del b, c, small
    assert _ops.cached_output_bytes() >= 2 * u.numel() * 4
    snntorch_sparse.empty_cache()
    assert _ops.cached_output_bytes() == 0


@needs_hint
def test_outputs_freed_on_other_threads_return_to_the_cache():
    """Outputs of a backward are freed wherever autograd drops them (its own threads)."""
    snntorch_sparse.empty_cache()
    u = torch.randn(3000, 1000, requires_grad=True)
    spk = _spikes(u)[0]
    spk.backward(torch.ones_like(spk))  # band_grad's output becomes u.grad (not cached)
    del spk
    assert _ops.cached_output_bytes() > 0
    snntorch_sparse.empty_cache()


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1,
                                                                 ceil_mode=True),
                                  nn.MaxPool2d((2, 3), dilation=(1, 2))], ids=str)
@pytest.mark.parametrize("layout", ["standard", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_equals_the_library(pool, layout, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 9, 14, generator=g, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, :, ::2]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = _conv.max_pool2d(a, pool), pool(b)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(out, ref) and torch.equal(a.grad, b.grad)
    assert out.stride() == ref.stride()  # the layout a following layer sees


def test_max_pool_backward_is_first_order_only():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    (d_x,) = torch.autograd.grad(_conv.max_pool2d(x, nn.MaxPool2d(2)).sum(), x,
                                 create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        d_x.sum().backward()
