"""What every benchmark reports of a series of timings."""

from __future__ import annotations

import statistics


def summary(samples: list[float]) -> dict[str, float]:
    """n, p50, p95 and max in milliseconds, of samples in seconds."""
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }
