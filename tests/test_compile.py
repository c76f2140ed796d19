"""torch.compile(fullgraph=True) over a per-step loop of our Leaky equals eager."""

import shutil

import pytest
import torch

import snntorch_sparse as snn

T, B, N_IN, N_OUT = 4, 3, 5, 7


def make_net(b_th, init_hidden, dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(N_IN, N_OUT).to(dtype)
    lif = snn.Leaky(beta=0.9, learn_beta=True, learn_threshold=True, b_th=b_th,
                    init_hidden=init_hidden, spike_grad=snn.surrogate.fast_sigmoid(slope=5))
    return lin, lif.to(dtype)


def step_loop(lin, lif, x):
    """The usual snnTorch training loop: one Linear and one Leaky call per step."""
    init_hidden = lif.init_hidden
    mem = None if init_hidden else torch.zeros(x.shape[1], N_OUT, dtype=x.dtype)
    spks, mems = [], []
    for t in range(x.shape[0]):
        if init_hidden:
            spk = lif(lin(x[t]))
            mem = lif.mem
        else:
            spk, mem = lif(lin(x[t]), mem)
        spks.append(spk)
        mems.append(mem)
    return torch.stack(spks), torch.stack(mems)


def run(fn, lin, lif, x):
    """Outputs and the gradients of every parameter and of the input."""
    if lif.init_hidden:
        lif.mem = torch.zeros(0, dtype=x.dtype)
    x = x.detach().clone().requires_grad_()
    params = [x, *lin.parameters(), lif.beta, lif.threshold]
    spk, mem = fn(lin, lif, x)
    w = torch.linspace(-1, 1, spk.numel(), dtype=x.dtype).view(spk.shape)
    loss = (spk * w).sum() + (mem * w.flip(0)).sum()
    return (spk.detach(), mem.detach()), torch.autograd.grad(loss, params)


def recording(backend_name, graphs):
    """A backend that keeps the FX graph Dynamo hands it, then compiles with another."""
    inner = torch._dynamo.lookup_backend(backend_name)

    def backend(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    return backend


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("b_th,init_hidden", [(0.3, False), (None, True)],
                         ids=["band-explicit_mem", "dense-init_hidden"])
def test_aot_eager_equals_eager(b_th, init_hidden):
    dtype = torch.float64
    lin, lif = make_net(b_th, init_hidden, dtype)
    x = torch.rand(T, B, N_IN, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2
    graphs = []
    compiled = torch.compile(step_loop, fullgraph=True, backend=recording("aot_eager", graphs))
    (out, grads) = run(compiled, lin, lif, x)
    (ref_out, ref_grads) = run(step_loop, lin, lif, x)
    # fullgraph=True already forbids graph breaks; Dynamo may restart its analysis once
    # (specialising python scalars), so the graph that runs is the last one.
    spike_calls = [n for n in graphs[-1].graph.nodes
                   if n.op == "call_function" and "snntorch_sparse.spike" in str(n.target)]
    assert len(spike_calls) == 2 * T  # fire() and mem_reset() per step, our op each time
    assert all(torch.equal(a, b) for a, b in zip(out, ref_out))
    assert 0 < ref_out[0].mean() < 1  # some, not all, neurons fire
    for g, rg in zip(grads, ref_grads):
        assert torch.equal(g, rg)
    if init_hidden:
        assert torch.equal(lif.mem, ref_out[1][-1])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's inductor CPU backend needs a C++ compiler")
def test_inductor_equals_eager():
    dtype = torch.float32
    lin, lif = make_net(0.3, False, dtype)
    x = torch.rand(2, B, N_IN, dtype=dtype, generator=torch.Generator().manual_seed(2)) * 2
    # Keep the compile short: one worker (a process pool costs more than it saves here)
    # and scalar C++ (no vector-ISA probing); the lowering of our op is the same.
    with torch._inductor.config.patch({"compile_threads": 1, "cpp.vec_isa_ok": False}):
        compiled = torch.compile(step_loop, fullgraph=True, backend="inductor")
        out, grads = run(compiled, lin, lif, x)
    ref_out, ref_grads = run(step_loop, lin, lif, x)
    assert all(torch.equal(a, b) for a, b in zip(out, ref_out))
    # Inductor fuses and reorders the reductions of the parameter gradients.
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-6, atol=1e-6)
    assert grads[0].abs().sum() > 0


# ------------------------------------------------------ the fused sequence layers
def _spiking_linear_stack():
    torch.manual_seed(0)
    hidden = snn.SpikingLinear(12, 10, beta=0.9, threshold=0.3, b_th=0.3)
    readout = snn.SpikingLinear(10, 4, beta=0.9, readout=True)
    x = (torch.rand(8, 3, 12, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    return (lambda x: readout(hidden(x))), [hidden.weight, readout.weight], x


def _fused_model():
    import snntorch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(20, 10),
        snntorch.Leaky(beta=0.9, threshold=0.4, init_hidden=True), torch.nn.Linear(10, 4),
        snntorch.Leaky(beta=0.9, init_hidden=True, output=True))
    fused = snn.fuse(net)
    x = (torch.rand(8, 3, 4, 5, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    return (lambda x: fused(x)[1]), list(fused.parameters()), x


def _forward_sequence():
    lif = snn.Leaky(beta=0.9, b_th=0.3, learn_beta=True)
    cur = torch.rand(8, 3, 5, generator=torch.Generator().manual_seed(1)) * 1.5
    return (lambda c: torch.cat(lif.forward_sequence(c))), [lif.beta], cur


SEQUENCE_MODELS = {"spiking_linear": _spiking_linear_stack, "fused_model": _fused_model,
                   "forward_sequence": _forward_sequence}


def _outputs_and_grads(fn, params, x):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    w = torch.linspace(-1, 1, out.numel()).view(out.shape)
    return out.detach(), torch.autograd.grad((out * w).sum(), [x] + params)


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
@pytest.mark.parametrize("model", list(SEQUENCE_MODELS))
def test_fused_layers_compile_fullgraph(model, backend):
    """fullgraph=True (no graph break) with outputs and gradients equal to eager."""
    if backend == "inductor" and shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's inductor CPU backend needs a C++ compiler")
    fn, params, x = SEQUENCE_MODELS[model]()
    ref_out, ref_grads = _outputs_and_grads(fn, params, x)
    with torch._inductor.config.patch({"compile_threads": 1, "cpp.vec_isa_ok": False}):
        out, grads = _outputs_and_grads(torch.compile(fn, fullgraph=True, backend=backend),
                                        params, x)
    assert torch.equal(out, ref_out)
    assert grads[0].abs().sum() > 0
    for g, rg in zip(grads, ref_grads):  # a traced graph forms ∂W by the dense GEMM
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
