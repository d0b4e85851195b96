"""Confidence intervals, the two-arm test and the promotion gate's policy."""

from __future__ import annotations

import pytest

from eval.gate import GatePolicy, PromotionGate
from eval.stats import compare_arms, wilson


def test_wilson_matches_the_textbook_values():
    interval = wilson(8, 10)  # Wilson 95 %: 0.490 .. 0.943
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-3)
    assert interval.high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0).n == 0 and wilson(0, 0).low == 0.0
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_wilson_narrows_with_n():
    assert wilson(80, 100).high - wilson(80, 100).low < wilson(8, 10).high - wilson(8, 10).low


def test_compare_arms_sees_a_real_difference_and_not_a_fake_one():
    clear = compare_arms(18, 20, 4, 20)
    assert clear.p_better < 0.001 and clear.p_worse > 0.99 and clear.difference_low > 0.3
    same = compare_arms(10, 20, 10, 20)
    assert same.p_better > 0.3 and same.p_worse > 0.3 and same.difference_low < 0


def metrics(*, wins=30, losses=5, regressions=(), quality=(0.95, 0.95), loss=(1.0, 0.9)) -> dict:
    win = wilson(wins, wins + losses).as_dict()
    return {
        "win_rate": {**win, "wins": wins, "losses": losses, "ties": 0},
        "regression": {
            "cases": 10,
            "candidate_passed": 10 - len(regressions),
            "baseline_passed": 10,
            "regressions": list(regressions),
        },
        "quality": {"candidate": quality[0], "baseline": quality[1], "n": 40},
        "heldout_loss": {"before": loss[0], "after": loss[1]},
    }


def test_gate_promotes_a_clear_winner_and_says_why():
    decision = PromotionGate().decide(metrics())
    assert decision.verdict == "promote"
    assert all(reason.startswith("ok: ") for reason in decision.reasons)


@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({"wins": 18, "losses": 17}, "win_rate"),  # a coin flip: the lower bound is under 0.5
        ({"wins": 5, "losses": 0}, "win_rate"),  # too few pairs
        ({"regressions": ["moon-1"]}, "regression"),
        ({"quality": (0.70, 0.95)}, "quality"),  # reward hacking: preferred but garbled
        ({"loss": (1.0, 1.5)}, "heldout_loss"),
    ],
)
def test_gate_rejects_on_each_failed_check(changes, failed):
    decision = PromotionGate().decide(metrics(**changes))
    assert decision.verdict == "reject"
    assert [c["name"] for c in decision.checks if not c["passed"]] == [failed]
    assert any(reason.startswith("FAILED: ") for reason in decision.reasons)


def test_gate_rejects_what_it_cannot_see():
    assert PromotionGate().decide({}).verdict == "reject"


def test_gate_policy_is_configurable():
    lenient = PromotionGate(GatePolicy(min_pairs=5, max_regressions=1))
    assert lenient.decide(metrics(wins=5, losses=0, regressions=["x"])).verdict == "promote"
    with pytest.raises(ValueError):
        GatePolicy(min_pairs=0)
