"""The promotion gate: a policy (data, with its reasons) that turns an offline evaluation into a verdict.

    decision = PromotionGate(GatePolicy()).decide(evaluation.metrics)
    decision.verdict   # "promote" | "reject"
    decision.reasons   # one line per check, passed or failed, for the report and the registry
    decision.settled   # False: a rejection that more sampled answers could still turn (see eval/looks.py)

Every check must pass to promote. A missing measurement fails its check: a gate that cannot see a
number does not wave the candidate through.

The gate may look at a candidate more than once (`looks`): an unsettled rejection, a win-rate interval
that straddles its threshold or a quality fall that could be chance, earns another sample, pooled with the
ones before. Every look is a chance to promote, so the win-rate's interval is widened for the number of
looks (Bonferroni): the chance that a candidate no better than the baseline passes it at any look stays
within the single look's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from eval.stats import wilson


class GatePolicy(BaseModel):
    """What a candidate must show, offline, before it may take any live traffic."""

    model_config = ConfigDict(extra="forbid")

    min_pairs: int = Field(20, ge=1, description="Judged answer pairs needed (ties excluded) before deciding.")
    min_win_rate_low: float = Field(
        0.5, ge=0, lt=1, description="The 95 % lower bound of the candidate's win-rate must exceed this."
    )
    max_regressions: int = Field(
        0, ge=0, description="Regression cases the baseline passes and the candidate fails that are tolerated."
    )
    regression_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Newly failing cases tolerated as a share of the suite, on top of max_regressions (rounded "
        "down: a suite of fewer than 1/share cases tolerates none).",
    )
    quality_tolerance: float = Field(
        0.05, ge=0, le=1, description="How far the share of well-formed answers may fall below the baseline's."
    )
    quality_alpha: float = Field(
        0.05,
        gt=0,
        le=1,
        description="A fall past the tolerance fails only when the paired sign test over the answers that only "
        "one model got right finds it this significant (1 = every fall past the tolerance fails).",
    )
    loss_tolerance: float = Field(
        0.10, ge=0, description="How much the held-out loss may rise (relative: 0.10 = 10 %) over the start."
    )
    looks: int = Field(
        1, ge=1, le=5, description="Evaluations of one candidate at most, pooled; the win-rate interval widens with it."
    )

    @property
    def win_rate_confidence(self) -> float:
        """Two-sided confidence of the win-rate interval: 95 % split over the looks."""
        return 1 - 0.05 / self.looks


@dataclass
class Decision:
    verdict: str  # promote / reject
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    settled: bool = True  # False: every failed check could still pass with more sampled answers

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": self.reasons, "checks": self.checks, "settled": self.settled}


class PromotionGate:
    def __init__(self, policy: GatePolicy | None = None) -> None:
        self.policy = policy or GatePolicy()

    def decide(self, metrics: dict[str, Any]) -> Decision:
        checks = [self._win_rate(metrics), self._regressions(metrics), self._quality(metrics), self._loss(metrics)]
        failed = [check for check in checks if not check["passed"]]
        reasons = [("ok: " if c["passed"] else "FAILED: ") + c["detail"] for c in checks]
        settled = not failed or not all(check.get("open") for check in failed)
        return Decision("reject" if failed else "promote", reasons, checks, settled)

    # -- checks ----------------------------------------------------------------------------------
    def _win_rate(self, metrics: dict[str, Any]) -> dict[str, Any]:
        win = metrics.get("win_rate")
        if not win:
            return _check("win_rate", False, "no pairwise win-rate was measured")
        confidence, threshold = self.policy.win_rate_confidence, self.policy.min_win_rate_low
        if "wins" in win:  # the interval at the policy's confidence, from the counts
            interval = wilson(int(win["wins"]), int(win["wins"]) + int(win["losses"]), confidence)
            n, low, high, estimate = interval.n, interval.low, interval.high, interval.estimate
        else:
            n, low, high, estimate = int(win["n"]), float(win["low"]), float(win["high"]), float(win["estimate"])
        if n < self.policy.min_pairs:
            # all ties (identical answers) will not change with more samples; a few pairs might
            return _check("win_rate", False, f"only {n} judged pairs, {self.policy.min_pairs} needed", still_open=n > 0)
        ok = low > threshold
        relation = ">" if ok else "<="
        detail = (
            f"win-rate {estimate:.0%} over n={n} pairs, {confidence * 100:.3g} % CI lower bound {low:.2f} {relation} "
            f"{threshold:.2f}"
        )
        return _check(
            "win_rate",
            ok,
            detail,
            still_open=high > threshold,
            test=f"Wilson {confidence * 100:.3g} % interval of wins / (wins + losses), ties left out",
            n=n,
            estimate=estimate,
            low=round(low, 4),
            high=round(high, 4),
            threshold=threshold,
        )

    def _regressions(self, metrics: dict[str, Any]) -> dict[str, Any]:
        suite = metrics.get("regression")
        if suite is None:
            return _check("regression", False, "the regression suite did not run")
        failed, cases = suite.get("regressions", []), int(suite["cases"])
        allowed = self.policy.max_regressions + math.floor(self.policy.regression_share * cases + 1e-9)
        ok = len(failed) <= allowed
        detail = (
            f"regression suite: {suite['candidate_passed']}/{cases} passed (baseline "
            f"{suite['baseline_passed']}), {len(failed)} newly failing, {len(suite.get('fixed', []))} newly "
            f"passing (at most {allowed} may newly fail)"
        )
        return _check(
            "regression",
            ok,
            detail,
            test="count of cases the baseline passes and the candidate fails",
            newly_failing=len(failed),
            allowed=allowed,
            cases=cases,
            fixed=len(suite.get("fixed", [])),
        )

    def _quality(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The well-formed share may fall by the tolerance; a larger fall fails unless it could be chance.

        The answers are paired (both models answer each prompt with the same seed), so chance is judged on
        the pairs where only one of the two was well-formed: a one-sided sign test (scipy's binomtest)."""
        quality = metrics.get("quality")
        if not quality or not quality.get("n"):
            return _check("quality", False, "answer quality was not measured (no checkable prompts)")
        candidate, baseline = float(quality["candidate"]), float(quality["baseline"])
        worse, better = quality.get("worse_pairs"), quality.get("better_pairs")
        tolerance, alpha = self.policy.quality_tolerance, self.policy.quality_alpha
        p_value = 0.0 if worse is None else paired_worse_p(int(worse), int(better))
        ok = candidate >= baseline - tolerance or p_value >= alpha
        # clearly past the tolerance (even the candidate's upper bound) is not worth another look
        high = wilson(round(candidate * int(quality["n"])), int(quality["n"])).high
        still_open = high >= baseline - tolerance
        detail = (
            f"well-formed answers {candidate:.0%} vs baseline {baseline:.0%} (may fall {tolerance:.0%}, or "
            f"more unless significant at {alpha}), n={quality['n']}"
        )
        if worse is not None:
            detail += (
                f"; only the baseline's well-formed in {worse} pairs, only the candidate's in {better}, p={p_value:.3f}"
            )
        return _check(
            "quality",
            ok,
            detail,
            still_open=still_open,
            test="one-sided exact sign test over the pairs only one model answered well-formed",
            n=quality["n"],
            candidate=candidate,
            baseline=baseline,
            worse_pairs=worse,
            better_pairs=better,
            p_value=round(p_value, 4),
            tolerance=tolerance,
            alpha=alpha,
        )

    def _loss(self, metrics: dict[str, Any]) -> dict[str, Any]:
        loss = metrics.get("heldout_loss") or {}
        before, after = loss.get("before"), loss.get("after")
        if before is None or after is None:
            # no held-out split (tiny data sets hold none out): the other checks carry the decision
            return _check("heldout_loss", True, "no held-out loss (the training set held no rows out)")
        limit = before * (1 + self.policy.loss_tolerance)
        ok = after <= limit
        detail = f"held-out loss {before:.3f} -> {after:.3f} (limit {limit:.3f})"
        return _check("heldout_loss", ok, detail, before=before, after=after, limit=limit)


def paired_worse_p(worse: int, better: int) -> float:
    """One-sided p-value that pairs favouring the baseline outnumber those favouring the candidate by chance."""
    if worse + better == 0:
        return 1.0
    return float(stats.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)


def _check(
    name: str, passed: bool, detail: str, *, still_open: bool = False, test: str | None = None, **numbers: Any
) -> dict[str, Any]:
    """One check's verdict; `still_open`: a failure that more sampled answers could still turn into a pass."""
    check = {"name": name, "passed": passed, "detail": detail, "numbers": numbers}
    if not passed:
        check["open"] = bool(still_open)
    return {**check, "test": test} if test else check


def numbers_text(numbers: dict[str, Any], prefix: str = "") -> str:
    """A check's or a canary's numbers on one line: `n=35, estimate=0.629, low=0.46` (nested dicts flattened)."""
    parts = []
    for key, value in numbers.items():
        if isinstance(value, dict):
            parts.append(numbers_text(value, f"{prefix}{key}."))
        elif isinstance(value, float):
            parts.append(f"{prefix}{key}={value:.3g}")
        elif value is not None:
            parts.append(f"{prefix}{key}={value}")
    return ", ".join(part for part in parts if part)
