"""What the sub-commands share: one parser class, one error style, one exit status.

A usage error (bad option, bad value, unusable ``--out``) is one line on stderr,
``python -m snntorch_sparse <command>: error: <what>``, and exit status 2; ``--help``
prints to stdout and exits 0 (argparse's own behaviour).
"""

import argparse
import math
import os
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


def _int_at_least(low, expected):
    """An argparse type: an integer >= ``low``, else an error saying ``expected``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def fixed_band(text):
    """A fixed band half-width ``B_th``: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"B_th must be a positive finite number, got {text!r}")
    return value


def band(text):
    """A band: a fixed half-width (:func:`fixed_band`), ``auto`` (adaptive band) or
    ``default`` (the drop-in classes' default band, resolved by the caller)."""
    return text if text in ("auto", "default") else fixed_band(text)


def fraction(text):
    """A share in (0, 1], e.g. a target activity ρ."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def writable_dir(path):
    """Create ``path`` and check that a file can be written there — before any long run,
    so that a bad ``--out`` fails at once, not after the work."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"--out {path}: cannot write there ({err.strerror or err})") from None
