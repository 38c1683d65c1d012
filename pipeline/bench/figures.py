"""Figures the pipeline's benchmarks share."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(ordered: Sequence[float], q: float) -> float:
    """The value at fraction ``q`` (0..1) of an ascending sequence (index ``int(len * q)``); NaN when
    empty."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
