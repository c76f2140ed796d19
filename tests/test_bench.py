"""The benchmark: a tiny smoke run end to end, and its pieces against hand computation."""

import json
import time

import pytest
import torch

from snntorch_sparse import bench

ROW_COLUMNS = (
    "config", "method", "device", "B", "T", "rho", "spike_rate", "fwd_ms", "bwd_ms", "step_ms",
    "kept_bytes", "peak_bytes", "hidden_fwd_ms", "hidden_bwd_ms", "hidden_kept_bytes",
    "bwd_speedup_vs_snntorch", "step_speedup_vs_snntorch", "hidden_bwd_speedup_vs_snntorch",
    "bwd_speedup_vs_fused_dense", "step_speedup_vs_fused_dense", "mem_saved_vs_snntorch_pct",
    "hidden_mem_saved_vs_snntorch_pct",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = bench.main(["--device", "cpu", "--quick", "--repeats", "2", "--warmup", "0",
                     "--out", str(out)])
    return rc, out


def test_quick_run_writes_json_markdown_and_plot(quick_run, capsys):
    rc, out = quick_run
    assert rc == 0
    for ext in ("json", "md", "png"):
        assert (out / f"bench_cpu.{ext}").stat().st_size > 0
    table = (out / "bench_cpu.md").read_text()
    assert "| quick-paper | 4 |" in table and "fused_sparse" in table


def test_quick_run_json_has_every_column(quick_run):
    _, out = quick_run
    report = json.loads((out / "bench_cpu.json").read_text())
    assert {"cpu", "torch", "torch_threads", "backends"} <= set(report["machine"])
    assert report["command"].startswith("python -m snntorch_sparse bench --device cpu")
    assert report["date"] and report["settings"]["repeats"] == 2
    rows = report["rows"]
    methods = report["settings"]["methods"]
    assert set(methods) | set(report["missing"]) == set(bench.METHODS)
    assert [(r["config"], r["method"]) for r in rows] == [
        (c, m) for c in ("quick-paper", "quick-onb") for m in methods]
    for r in rows:
        assert "error" not in r, r.get("error")
        missing = [c for c in ROW_COLUMNS if c not in r]
        assert not missing, (r["config"], r["method"], missing)
        assert r["fwd_ms"] > 0 and r["bwd_ms"] > 0 and r["kept_bytes"] > 0
        assert len(r["fwd_samples_ms"]) == 2
    paper = [r for r in rows if r["config"] == "quick-paper"]
    onb = [r for r in rows if r["config"] == "quick-onb"]
    assert all(r["hidden_bwd_ms"] > 0 for r in paper)       # the isolated hidden layer
    assert all(r["hidden_bwd_ms"] is None for r in onb)      # single layer: nothing to isolate
    sparse = next(r for r in paper if r["method"] == "fused_sparse")
    assert sparse["bwd_speedup_vs_snntorch"] == pytest.approx(
        paper[0]["bwd_ms"] / sparse["bwd_ms"])
    assert sparse["mem_saved_vs_snntorch_pct"] == pytest.approx(
        100 * (paper[0]["kept_bytes"] - sparse["kept_bytes"]) / paper[0]["kept_bytes"])


def test_quick_run_calibrates_activity_and_matches_snntorch(quick_run):
    _, out = quick_run
    rows = json.loads((out / "bench_cpu.json").read_text())["rows"]
    paper = {r["method"]: r for r in rows if r["config"] == "quick-paper"}
    for rho in paper["snntorch"]["rho"]:         # both hidden layers at the 2 % target
        assert rho == pytest.approx(0.02, abs=0.004)
    # the fused dense layers compute snnTorch's forward and gradients
    assert paper["fused_dense"]["out_max_abs_diff_vs_snntorch"] < 1e-4
    assert paper["fused_dense"]["grad_rel_err_vs_snntorch"] < 1e-4


def test_quick_run_measures_cpu_peak_memory_of_a_step(quick_run):
    """CPU, default: every implementation's whole-step peak RSS growth (a fresh process
    each) is in the JSON and the table, with the saving against snnTorch."""
    _, out = quick_run
    rows = json.loads((out / "bench_cpu.json").read_text())["rows"]
    for r in rows:
        assert r["peak_bytes"] > 0, (r["config"], r["method"], r.get("peak_error"))
        assert r["peak_saved_vs_snntorch_pct"] is not None
    table = (out / "bench_cpu.md").read_text()
    assert "peak saved % vs snnTorch" in table and "growth of the peak RSS" in table


def test_quick_run_includes_spikingjelly(quick_run):
    """With SpikingJelly installed, its multi-step network runs on the same problem: a row
    per config with positive times, the ratio column, and gradients close to snnTorch's
    (its reset differs slightly by design)."""
    pytest.importorskip("spikingjelly.activation_based")
    _, out = quick_run
    report = json.loads((out / "bench_cpu.json").read_text())
    assert "spikingjelly" in report["settings"]["methods"] and not report["missing"]
    sj = {r["config"]: r for r in report["rows"] if r["method"] == "spikingjelly"}
    assert set(sj) == {"quick-paper", "quick-onb"}
    for r in sj.values():
        assert "error" not in r, r.get("error")
        assert r["fwd_ms"] > 0 and r["bwd_ms"] > 0 and r["kept_bytes"] > 0
        assert r["grad_cos_vs_snntorch"] > 0.8
    assert sj["quick-paper"]["hidden_bwd_ms"] > 0
    sparse = next(r for r in report["rows"]
                  if r["config"] == "quick-paper" and r["method"] == "fused_sparse")
    assert sparse["step_speedup_vs_spikingjelly"] == pytest.approx(
        sj["quick-paper"]["step_ms"] / sparse["step_ms"])
    assert "| quick-paper | 4 | 2/2 | spikingjelly |" in (out / "bench_cpu.md").read_text()


def test_missing_spikingjelly_is_said_once(monkeypatch, tmp_path, capsys):
    """Without SpikingJelly the run goes on with the other three and says so, naming the
    pip command (never a silent skip)."""
    monkeypatch.setattr(bench, "spikingjelly_missing", lambda: "ModuleNotFoundError: no")
    assert bench.main(["--device", "cpu", "--config", "quick-onb", "--repeats", "1",
                       "--warmup", "0", "--no-peak", "--no-plot", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["snntorch", "fused_dense", "fused_sparse"]
    assert all(r["peak_bytes"] is None for r in report["rows"])  # --no-peak
    table = (tmp_path / "bench_cpu.md").read_text()
    assert table.count("**spikingjelly: not measured**") == 1
    assert bench.SPIKINGJELLY_PIP in table and "not measured (--no-peak)" in table
    assert bench.SPIKINGJELLY_PIP in capsys.readouterr().err


def test_hidden_isolation_computes_the_same_gradient_in_both_forms():
    """The per-step and fused hidden-layer backward return the same ∂W2 and ∂spk1."""
    cfg = bench.CONFIGS["quick-paper"]
    x, labels, weights, biases, _, upstream = bench.build_problem(
        cfg, 4, torch.device("cpu"), 0.02, 0.2, seed=3)
    k = cfg.hidden_index
    grads = {}
    for method in ("snntorch", "fused_dense"):
        model = bench.make_model(method, cfg, weights, biases, 0.2, "atan")
        inputs = model.hidden_input(x, k)
        wrt = [model.weights()[k]] + model.grad_inputs(inputs)
        g = torch.autograd.grad(model.hidden_forward(inputs, k), wrt, upstream)
        grads[method] = (g[0], torch.stack(g[1:]).reshape(x.shape[0], 4, -1))
    for a, b in zip(grads["snntorch"], grads["fused_dense"]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_derive_speedups_and_memory_saved_by_hand():
    rows = [
        {"method": "snntorch", "bwd_ms": 100.0, "step_ms": 150.0, "hidden_bwd_ms": 40.0,
         "hidden_step_ms": 60.0, "kept_bytes": 1000, "hidden_kept_bytes": 400,
         "peak_bytes": None, "hidden_peak_bytes": None},
        {"method": "spikingjelly", "bwd_ms": 50.0, "step_ms": 60.0, "hidden_bwd_ms": 20.0,
         "hidden_step_ms": 30.0, "kept_bytes": 900, "hidden_kept_bytes": 350,
         "peak_bytes": None, "hidden_peak_bytes": None},
        {"method": "fused_dense", "bwd_ms": 20.0, "step_ms": 30.0, "hidden_bwd_ms": 8.0,
         "hidden_step_ms": 10.0, "kept_bytes": 800, "hidden_kept_bytes": 300,
         "peak_bytes": None, "hidden_peak_bytes": None},
        {"method": "fused_sparse", "bwd_ms": 4.0, "step_ms": 12.0, "hidden_bwd_ms": 1.0,
         "hidden_step_ms": 3.0, "kept_bytes": 50, "hidden_kept_bytes": 20,
         "peak_bytes": None, "hidden_peak_bytes": None},
    ]
    bench.derive(rows)
    s = rows[3]
    assert s["bwd_speedup_vs_snntorch"] == pytest.approx(25.0)
    assert s["step_speedup_vs_snntorch"] == pytest.approx(12.5)
    assert s["hidden_bwd_speedup_vs_snntorch"] == pytest.approx(40.0)
    assert s["hidden_step_speedup_vs_snntorch"] == pytest.approx(20.0)
    assert s["bwd_speedup_vs_fused_dense"] == pytest.approx(5.0)
    assert s["mem_saved_vs_snntorch_pct"] == pytest.approx(95.0)
    assert s["hidden_mem_saved_vs_snntorch_pct"] == pytest.approx(95.0)
    assert s["mem_saved_vs_fused_dense_pct"] == pytest.approx(93.75)
    assert s["step_speedup_vs_spikingjelly"] == pytest.approx(5.0)
    assert s["peak_saved_vs_snntorch_pct"] is None           # no peak given
    assert rows[2]["bwd_speedup_vs_snntorch"] == pytest.approx(5.0)


def test_targets_are_judged_on_the_sparse_row():
    rows = [{"config": "shd", "method": "fused_sparse", "hidden_bwd_speedup_vs_snntorch": 31.0,
             "mem_saved_vs_snntorch_pct": 89.0, "hidden_mem_saved_vs_snntorch_pct": None,
             "step_speedup_vs_snntorch": 5.0},
            {"config": "shd", "method": "snntorch", "hidden_bwd_speedup_vs_snntorch": 1.0}]
    met = {t["key"]: t["met"] for t in bench.evaluate_targets(rows, "cpu")}
    assert met == {"hidden_bwd_speedup_vs_snntorch": True, "mem_saved_vs_snntorch_pct": False,
                   "hidden_mem_saved_vs_snntorch_pct": None, "step_speedup_vs_snntorch": True,
                   "peak_saved_vs_snntorch_pct": None}


def test_config_groups_resolve_in_order_without_duplicates():
    names = [c.name for c in bench.resolve_configs(["shd", "paper", "onb-4096"], "cpu", False)]
    assert names == ["shd", "fmnist", "nmnist", "onb-4096"]
    assert [c.name for c in bench.resolve_configs([], "cpu", False)] == ["fmnist", "nmnist", "shd"]
    cuda = [c.name for c in bench.resolve_configs([], "cuda", False)]
    assert cuda[-3:] == ["onb-4096", "onb-8192", "onb-16384"]


def test_unknown_config_is_a_clean_error(capsys, tmp_path):
    assert bench.main(["--device", "cpu", "--config", "mnist", "--out", str(tmp_path)]) == 2
    assert "unknown config 'mnist'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_one_line_error(capsys, tmp_path):
    assert bench.main(["--device", "cuda", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU" in err and "\n" not in err


@pytest.mark.parametrize("flag,value", [("--threads", "-1"), ("--threads", "0"),
                                        ("--b-th", "-1"), ("--b-th", "nan"), ("--rho", "-1"),
                                        ("--rho", "1.5"), ("--repeats", "0"),
                                        ("--warmup", "-2"), ("--batch", "0"),
                                        ("--num-steps", "0")])
def test_bad_numbers_are_one_line_usage_errors(capsys, tmp_path, flag, value):
    assert bench.main(["--device", "cpu", "--quick", flag, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err


def test_num_steps_sets_every_configurations_sequence_length(tmp_path):
    """``--num-steps``: the inputs (and so every row) have that many time steps."""
    rc = bench.main(["--device", "cpu", "--config", "quick-paper,quick-onb", "--num-steps", "7",
                     "--repeats", "1", "--warmup", "0", "--no-peak", "--no-plot",
                     "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert [c["T"] for c in report["configs"]] == [7, 7]
    assert {r["T"] for r in report["rows"]} == {7} and len(report["rows"]) >= 6
    assert bench.CONFIGS["quick-paper"].T == 40  # the shared configurations stay as they were


def test_unwritable_out_fails_before_running(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    start = time.perf_counter()
    assert bench.main(["--device", "cpu", "--quick", "--out", str(blocker / "sub")]) == 2
    assert time.perf_counter() - start < 5  # nothing was benchmarked
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "cannot write" in err and "\n" not in err


def test_quick_csnn_run_reports_every_implementation(tmp_path):
    """``--config csnn --quick``: snnTorch's tutorial CSNNs at tiny sizes, the three
    implementations with their timings, kept and peak bytes, FLOP floors and layer costs,
    and the one-layer backward table."""
    rc = bench.main(["--device", "cpu", "--config", "csnn", "--quick", "--repeats", "1",
                     "--warmup", "0", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert [r["config"] for r in report["csnn"]] == ["csnn-tutorial6", "csnn-tutorial7"]
    for res in report["csnn"]:
        assert [r["method"] for r in res["rows"]] == ["snntorch", "fused_dense", "fused_sparse"]
        for r in res["rows"]:
            assert r["fwd_ms"] > 0 and r["bwd_ms"] > 0 and r["kept_bytes"] > 0
            assert r["peak_bytes"] is not None and r["floor_gmacs"] > 0
        # the sparse floor never exceeds the dense one
        assert res["rows"][2]["floor_gmacs"] <= res["rows"][1]["floor_gmacs"]
        assert [c["layer"] for c in res["layers"]] == ["Conv2d", "Conv2d", "Linear"]
    assert len(report["conv_layers"]) == 6 and all(r["speedup"] > 0
                                                   for r in report["conv_layers"])
    table = (tmp_path / "bench_cpu.md").read_text()
    assert "**csnn-tutorial6**" in table and "| tutorial7 conv2 |" in table


def test_flop_floor_counts_the_cheaper_weight_gradient():
    """Sparse: forward over the input's nonzeros when event-driven, ∂W over the fewer of
    the input's nonzeros and the layer's own band (trace form), ∂X over the upstream band;
    the other methods: everything dense."""
    from snntorch_sparse.bench_csnn import flop_floor

    costs = [{"macs": 1000.0, "in_density": 1.0, "upstream_rho": None, "own_rho": 0.05,
              "events_max": 0.1},
             {"macs": 100.0, "in_density": 0.02, "upstream_rho": 0.04, "own_rho": None,
              "events_max": 0.1}]
    assert flop_floor(costs, "fused_sparse", 10, False) == {
        "fwd": 1000.0 + 100.0 * 0.02, "bwd": 1000.0 * 0.05 + 100.0 * (0.02 + 0.04)}
    assert flop_floor(costs, "fused_dense", 10, False) == {"fwd": 1100.0,
                                                           "bwd": 1000.0 + 100.0 * 2}


def test_time_rounds_interleaves_the_methods_and_drops_one_that_fails():
    """One step of each method per round (a load burst hits them all alike), warm-up
    rounds untimed; a method whose step raises leaves the rounds, the others go on."""
    log = []

    def job(name, fail_at=None):
        def forward():
            log.append(name)
            if len(log) == fail_at:
                raise RuntimeError("out of memory")
            return name
        return forward, lambda out: None, lambda: None

    done, errors = bench._time_rounds("cpu", 1, 3, {"a": job("a"), "b": job("b", fail_at=5),
                                                    "c": job("c")})
    assert log == ["a", "b", "c", "a", "b", "c", "a", "c", "a", "c"]
    assert set(done) == {"a", "c"} and str(errors["b"]) == "out of memory"
    for timer, peak in done.values():
        assert len(timer.samples("fwd")) == len(timer.samples("bwd")) == 3 and peak is None
