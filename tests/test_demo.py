"""``python -m snntorch_sparse demo``: a tiny run writes its report; bad input gives one
clear line on stderr and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import package_env
import torch

from snntorch_sparse import data
from snntorch_sparse.demo import main

TINY = ["--epochs", "1", "--hidden", "16", "--max-batches", "2", "--no-progress"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(TINY + ["--out", str(out), "--b-th", "0.3", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    for row in ("test accuracy", "activity hidden1", "activity hidden2", "backward ms",
                "backward speedup", "memory saved"):
        assert row in printed
    report = json.loads((out / "results.json").read_text())
    for mode in ("dense", "sparse"):
        assert report[mode]["config"]["backward"] == mode
        assert report[mode]["config"]["b_th"] == 0.3 and report[mode]["config"]["seed"] == 4
        assert len(report[mode]["history"]) == 2
    cmp = report["comparison"]
    assert cmp["backward_speedup"] > 0 and len(cmp["activity"][1]) == 2
    assert cmp["memory_saved_percent"] > 0
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fails(argv, capsys, status, *needles):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
    (["--b-th", "0"], "B_th must be a positive"),
    (["--b-th", "-0.2"], "B_th must be a positive"),
    (["--b-th", "nan"], "B_th must be a positive"),
    (["--epochs", "0"], "positive integer"),
    (["--hidden", "ten"], "positive integer"),
    (["--dataset", "shd"], "needs --data-dir"),
    (["--bogus"], "unrecognized arguments"),
])
def test_usage_errors(argv, needle, capsys):
    _fails(argv, capsys, 2, needle)


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails(TINY + ["--out", str(blocker / "sub")], capsys, 2, "--out", "cannot write")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tmp_path, capsys):
    _fails(TINY + ["--device", "cuda", "--out", str(tmp_path)], capsys, 2, "no CUDA GPU")


@pytest.mark.parametrize("dataset, needle", [
    ("shd", "shd_train.h5"), ("nmnist", "Train/<0..9>/*.bin"),
    ("fmnist", "train-images-idx3-ubyte"),
])
def test_missing_dataset_files(dataset, needle, tmp_path, capsys):
    _fails(TINY + ["--dataset", dataset, "--data-dir", str(tmp_path), "--out",
                   str(tmp_path / "o")], capsys, 1, "not found", needle.replace("/", os.sep))


def test_wrong_data_shape(tmp_path, capsys):
    """Fashion-MNIST files holding 10×10 images: the network expects 784 inputs."""
    rng = np.random.default_rng(0)
    for train, (img_name, lab_name) in data._FMNIST_FILES.items():
        imgs = rng.integers(0, 256, (8, 10, 10), dtype=np.uint8)
        (tmp_path / img_name).write_bytes(bytes([0, 0, 8, 3]) + np.array(
            imgs.shape, ">u4").tobytes() + imgs.tobytes())
        (tmp_path / lab_name).write_bytes(bytes([0, 0, 8, 1]) + np.array(
            [8], ">u4").tobytes() + bytes(8))
    _fails(TINY + ["--dataset", "fmnist", "--data-dir", str(tmp_path), "--out",
                   str(tmp_path / "o")], capsys, 1, "[T, B, 784]")


def test_cli_entry_point_one_line_error():
    """Through ``python -m snntorch_sparse demo`` (the real entry point)."""
    env = package_env()
    proc = subprocess.run([sys.executable, "-m", "snntorch_sparse", "demo", "--b-th", "-1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.startswith("python -m snntorch_sparse demo")]
    assert len(lines) == 1 and "B_th must be a positive" in lines[0]
    assert "Traceback" not in proc.stderr
