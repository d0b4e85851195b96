"""The statistics the gate and the canary decide with: binomial confidence intervals and two-arm tests.

Small numbers are the normal case here (a few dozen judged pairs, a canary with 20 ratings an arm), so
the interval is Wilson's (honest near 0 and 1, unlike the normal approximation) and the two-arm test is
Fisher's exact test from scipy.stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "estimate": round(self.estimate, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "n": self.n,
        }


def wilson(successes: float, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion; `successes` may be fractional (ties count one half)."""
    if n <= 0:
        return Interval(0.5, 0.0, 1.0, 0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n={n}], got {successes}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


@dataclass(frozen=True)
class ArmComparison:
    """Candidate arm vs control arm on a binary outcome (a thumbs up)."""

    candidate: Interval
    control: Interval
    p_better: float  # one-sided p-value: the candidate's rate is higher
    p_worse: float  # one-sided p-value: the candidate's rate is lower
    difference_low: float  # lower bound of the 95 % interval of candidate - control

    def as_dict(self) -> dict:
        return {
            "candidate": self.candidate.as_dict(),
            "control": self.control.as_dict(),
            "p_better": round(self.p_better, 4),
            "p_worse": round(self.p_worse, 4),
            "difference_low": round(self.difference_low, 4),
        }


def compare_arms(candidate_up: int, candidate_n: int, control_up: int, control_n: int) -> ArmComparison:
    """Fisher's exact test both ways, and Newcombe's interval of the difference (from the two Wilsons)."""
    table = [[candidate_up, candidate_n - candidate_up], [control_up, control_n - control_up]]
    if candidate_n and control_n:
        p_better = float(stats.fisher_exact(table, alternative="greater").pvalue)
        p_worse = float(stats.fisher_exact(table, alternative="less").pvalue)
    else:
        p_better = p_worse = 1.0
    a, b = wilson(candidate_up, candidate_n), wilson(control_up, control_n)
    # Newcombe's hybrid score interval of a difference of two proportions
    low = (a.estimate - b.estimate) - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    return ArmComparison(a, b, p_better, p_worse, low)
