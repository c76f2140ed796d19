"""Command line: ``python -m snntorch_sparse info | demo | bench`` (``--help``, ``--version``).

Every sub-command reports a usage error as one line on stderr and exits with status 2
(:mod:`snntorch_sparse._cli`).
"""

import platform
import sys

from ._cli import Parser, UsageError, usage_error

PROG = "python -m snntorch_sparse"
USAGE = f"""usage: {PROG} {{info,demo,bench}} [options]   ({PROG} COMMAND --help for its options)

  info   versions and the backend each device uses, and why
  demo   train the paper's network dense and sparse on digits, print a report
  bench  speed and memory: snnTorch per-step vs fused dense vs fused sparse

options:
  -h, --help  show this message and exit
  --version   print the version and exit
"""


def info(argv=None):
    """Print versions and which backend serves each device, and why."""
    try:
        Parser(prog=f"{PROG} info", description=info.__doc__).parse_args(argv)
    except UsageError as err:
        return usage_error(f"{PROG} info", err)
    import snntorch
    import torch

    from . import __version__
    from ._ops import BACKENDS

    print(f"snntorch_sparse {__version__}")
    print(f"python          {platform.python_version()} ({sys.executable})")
    print(f"torch           {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"snntorch        {snntorch.__version__}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    print(f"GPU             {gpu}")
    print(f"CPU: {BACKENDS['cpu']}")
    print(f"CUDA: {BACKENDS['cuda']}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv and argv[0] == "--version":
        from . import __version__
        print(f"snntorch_sparse {__version__}")
        return 0
    if not argv:
        print(USAGE, end="", file=sys.stderr)
        return usage_error(PROG, "a command is required: info, demo or bench")
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        return info(rest)
    # Imported lazily: both pull in heavier dependencies (matplotlib, tqdm, sklearn).
    if cmd == "demo":
        from .demo import main as demo_main
        return demo_main(rest)
    if cmd == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    return usage_error(PROG, f"unknown command {cmd!r} (choose from info, demo, bench)")


if __name__ == "__main__":
    sys.exit(main())
