"""Packaging and start-up: the JIT cache key, a failed build that is not retried, a silent
cached import, the CUDA architecture default, and the command line's conventions."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import package_env

from snntorch_sparse import _build, _ops
from snntorch_sparse.__main__ import main


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=package_env(**env), timeout=300)


def test_jit_key_follows_content_not_location(tmp_path):
    src = _ops.csrc_dir()
    a, b = tmp_path / "checkout" / "csrc", tmp_path / "site" / "_csrc"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    assert _build.source_digest(a) == _build.source_digest(b) == _build.source_digest(src)
    with open(b / "ops.cpp", "a") as f:
        f.write("// changed\n")
    assert _build.source_digest(b) != _build.source_digest(a)


def test_cached_import_prints_nothing():
    run = _python("import snntorch_sparse")
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run.stderr


def _broken_compiler(tmp_path):
    """The system's c++, broken: every compile fails at once (a missing header)."""
    path = tmp_path / "broken-c++"
    path.write_text('#!/bin/sh\ncase " $* " in *" -c "*) exec c++ -include toolchain-is-broken.h "$@";; '
                    'esac\nexec c++ "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(shutil.which("ninja") is None or shutil.which("c++") is None,
                    reason="needs ninja and c++")
def test_failed_jit_build_is_reported_once_and_not_retried(tmp_path):
    env = dict(SNNTORCH_SPARSE_BACKEND="jit", CXX=_broken_compiler(tmp_path),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "cache"))
    code = "import snntorch_sparse._ops as o; print(o.BACKENDS['cpu'])"
    first = _python(code, **env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("compiling") == 1
    warning = [line for line in first.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warning) == 1 and "toolchain-is-broken.h" in warning[0]
    assert "circular import" not in first.stderr and "FAILED:" not in first.stderr
    log = warning[0].split("log in ")[1].split(")")[0]
    assert os.path.isfile(log) and "toolchain-is-broken.h" in open(log).read()
    assert first.stdout.startswith("reference (plain PyTorch)")

    again = _python(code, **env)
    assert again.returncode == 0 and "compiling" not in again.stderr
    assert "failed before" in again.stderr and log in again.stderr


def test_missing_compiler_is_one_clear_line(tmp_path):
    run = _python("import snntorch_sparse", SNNTORCH_SPARSE_BACKEND="jit",
                  CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert run.returncode == 0
    lines = [line for line in run.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(lines) == 1 and "no-such-c++" in lines[0] and "Fix: install" in lines[0]
    assert "compiling" not in run.stderr


def test_cuda_arch_default_without_gpu(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _build.cuda_arch_list(torch) == _build.DEFAULT_CUDA_ARCHS
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == _build.DEFAULT_CUDA_ARCHS
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert _build.cuda_arch_list(torch) == "8.6"


def test_info_names_the_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"CPU: {_ops.BACKENDS['cpu']}" in out and "CUDA: " in out


@pytest.mark.parametrize("argv, status, stream, needle", [
    (["--help"], 0, "out", "info   versions"),
    (["-h"], 0, "out", "demo"),
    (["--version"], 0, "out", "snntorch_sparse 0."),
    (["info", "--help"], 0, "out", "usage: python -m snntorch_sparse info"),
    ([], 2, "err", "a command is required"),
    (["train"], 2, "err", "unknown command 'train'"),
    (["info", "--bogus"], 2, "err", "info: error: unrecognized arguments: --bogus"),
    (["demo", "--bogus"], 2, "err", "demo: error: unrecognized arguments: --bogus"),
    (["bench", "--bogus"], 2, "err", "bench: error: unrecognized arguments: --bogus"),
])
def test_command_line_conventions(argv, status, stream, needle, capsys):
    try:
        got = main(argv)
    except SystemExit as done:  # argparse's --help
        got = done.code
    out, err = capsys.readouterr()
    assert got == status
    text = out if stream == "out" else err
    assert needle in text, (out, err)
    if status == 2:  # one error line, nothing on stdout
        assert out == "" and err.strip().splitlines()[-1].startswith("python -m snntorch_sparse")
