"""Sampling uncertainty of a test accuracy: the Wilson score interval of a binomial proportion.

An accuracy measured on n test images is k/n with k correct; its 95 % interval is Wilson's (E. B. Wilson,
"Probable inference, the law of succession, and statistical inference", J. Amer. Statist. Assoc. 22(158),
209-212, 1927), which unlike the normal approximation stays inside [0, 1] and is accurate at small n and at
accuracies near 0 or 1 (Brown, Cai and DasGupta, Statist. Sci. 16(2), 101-133, 2001, recommend it).
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054          # the standard normal's 97.5 % quantile: two-sided 95 %


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high), both in [0, 1], of the Wilson score interval of ``accuracy`` (a fraction) measured on
    ``n`` > 0 independent samples; 95 % by default."""
    if n <= 0:
        raise ValueError(f"n: expected a number of samples > 0, got {n}")
    p = min(1.0, max(0.0, accuracy))
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)
