"""Value types of the command-line options, so that a bad value is an argparse error naming
its option (memae-fused: error: argument --lr: must be > 0, got 0)."""

from __future__ import annotations

import argparse


def ints(text: str):
    try:
        values = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers like 256, 256x256 or "
                                         f"16,32,64, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _number(kind, low, low_inclusive, high=None):
    """An argparse type: a `kind` (int or float) >= low (or > low), and < high if given."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value != value or (value < low if low_inclusive else value <= low) or (
                high is not None and value >= high):
            bound = f">= {low}" if low_inclusive else f"> {low}"
            raise argparse.ArgumentTypeError(
                f"must be {bound}" + (f" and < {high}" if high is not None else "") + f", got {text}")
        return value
    return parse


POSITIVE_INT = _number(int, 1, True)
COUNT = _number(int, 0, True)
POSITIVE = _number(float, 0, False)
NON_NEGATIVE = _number(float, 0, True)
# Weights lie in [0, 1]: a threshold of 1 or more empties every row.
THRESHOLD = _number(float, 0, True, 1.0)
