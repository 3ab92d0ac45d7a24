"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got '{text}'") from None


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got '{text}'") from None
