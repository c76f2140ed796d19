"""What the sub-commands share: one parser class, one error style, one exit status.

A usage error (bad option, bad value, unusable ``--out``) is one line on stderr,
``python -m snntorch_sparse <command>: error: <what>``, and exit status 2; ``--help``
prints to stdout and exits 0 (argparse's own behaviour).
"""

import argparse
import math
import sys

USAGE_ERROR = 2


class UsageError(Exception):
    """A user mistake: reported as one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """``argparse`` that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(message)


def usage_error(prog, err):
    """Print ``err`` as the one-line usage error of ``prog``; returns the exit status."""
    print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return USAGE_ERROR


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def band(text):
    """A band half-width ``B_th``: a positive finite number, or ``auto`` (adaptive band)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"B_th must be a positive finite number, got {text!r}")
    return value
