"""Run the benchmark from a source checkout and keep the results next to this script.

    python benchmarks/run.py [options of ``python -m snntorch_sparse bench``]

Identical to ``python -m snntorch_sparse bench``, except that ``--out`` defaults to
``benchmarks/results/`` (``bench_<device>.json``, ``.md``, ``.png``). ``--help`` lists
the options; see :mod:`snntorch_sparse.bench` for the method.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for an uninstalled checkout

from snntorch_sparse.bench import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", os.path.join(HERE, "results")]
    sys.exit(main(argv))
