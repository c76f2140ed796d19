"""benchmarks/long_sequence.py: the bounded-memory demo runs, chunks, and agrees."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import long_sequence  # noqa: E402


def test_long_sequence_demo_runs_in_chunks():
    rows = long_sequence.main(["--T", "64", "--batch", "2", "--chunk", "16", "--methods",
                               "fused_sparse_whole", "fused_sparse_chunked"])
    whole, chunked = rows
    assert "error" not in whole and "error" not in chunked
    assert whole["chunks"] == [1, 1, 1] and min(chunked["chunks"]) > 1
    assert abs(whole["loss"] - chunked["loss"]) <= 1e-5 * abs(whole["loss"])
    assert whole["peak_growth_bytes"] > 0 and chunked["step_s"] > 0
