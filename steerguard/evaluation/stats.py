"""Counts and 95% intervals for the rates the evaluation checks against targets.

Why: held-out sets are small (XSTest's held-out types have ~124 safe and 100
unsafe prompts), so one prompt moves a rate by ~0.8 points. A rate printed
without its count and interval reads as more certain than it is; with them a
reader can tell a clear miss from one inside sampling noise. The pass/fail
verdict stays the plain comparison of the point estimate with the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (good at small n and rates near 0/1)."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(hits: Sequence[bool] | Sequence[int]) -> dict[str, Any]:
    """``{"k", "n", "ci95"}`` of a list of 0/1 outcomes (``ci95`` is None when empty)."""
    n = len(hits)
    k = int(sum(bool(h) for h in hits))
    if n == 0:
        return {"k": 0, "n": 0, "ci95": None}
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}
