"""Command line: ``python -m snntorch_sparse info | demo | bench``."""

import argparse
import platform
import sys


def info(argv=None):
    """Print versions and which backend serves each device, and why."""
    argparse.ArgumentParser(prog="python -m snntorch_sparse info",
                            description=info.__doc__).parse_args(argv)
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
    commands = {"info": info, "demo": "demo", "bench": "bench"}
    if not argv or argv[0] not in commands:
        print("usage: python -m snntorch_sparse {info,demo,bench} [options]\n"
              "  info   versions and the backend each device uses, and why\n"
              "  demo   train the paper's network dense and sparse, print a report\n"
              "  bench  speed and memory: snnTorch per-step vs fused dense vs fused sparse",
              file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        return info(rest)
    # Imported lazily: both pull in heavier dependencies (matplotlib, tqdm, sklearn).
    if cmd == "demo":
        from .demo import main as demo_main
        return demo_main(rest)
    from .bench import main as bench_main
    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
