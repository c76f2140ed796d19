"""Measurements shared by the benchmark and the demo: activity (paper eq. 13), memory
saved (eq. 14), bytes kept for backward, timers and peak memory."""

import contextlib

import torch


@contextlib.contextmanager
def saved_bytes():
    """Count the bytes autograd keeps for backward while the block runs.

    Yields a dict whose ``"bytes"`` entry is the total size of the distinct storages
    saved by the graph built inside the block, leaves (parameters, user inputs) excluded:
    they exist anyway. Example::

        with saved_bytes() as kept:
            loss = model(x).sum()
        print(kept["bytes"])
    """
    seen = {}

    def pack(t):
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    result = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(seen.values())
