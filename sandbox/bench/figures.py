"""The figures every series of ``bench sandbox`` reports from its samples (seconds)."""

from __future__ import annotations

import statistics


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean of ``samples``, in microseconds, and how many there were."""
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50_us": round(ordered[n // 2] * 1e6, 1),
        "p99_us": round(ordered[min(n - 1, int(n * 0.99))] * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
        "runs": n,
    }
