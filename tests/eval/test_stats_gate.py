"""Confidence intervals, the two-arm test and the promotion gate's policy."""

from __future__ import annotations

import json
import math

import pytest

from eval.gate import GatePolicy, PromotionGate, numbers_text, paired_worse_p
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


def suite_of(cases: int, newly_failing: int) -> dict:
    return {
        "cases": cases,
        "candidate_passed": cases - newly_failing,
        "baseline_passed": cases,
        "regressions": [f"case-{i}" for i in range(newly_failing)],
        "fixed": [],
    }


@pytest.mark.parametrize(
    ("cases", "newly_failing", "verdict"),
    [(60, 3, "promote"), (60, 4, "reject"), (19, 1, "reject"), (20, 1, "promote"), (10, 0, "promote")],
)
def test_regressions_are_tolerated_up_to_a_share_of_the_suite(cases, newly_failing, verdict):
    decision = PromotionGate().decide({**metrics(), "regression": suite_of(cases, newly_failing)})
    assert decision.verdict == verdict
    (check,) = [c for c in decision.checks if c["name"] == "regression"]
    assert check["numbers"] == {"newly_failing": newly_failing, "allowed": cases // 20, "cases": cases, "fixed": 0}


def quality(candidate: float, worse: int | None, better: int | None) -> dict:
    pairs = {} if worse is None else {"worse_pairs": worse, "better_pairs": better}
    return {"candidate": candidate, "baseline": 0.93, "n": 78, **pairs}


@pytest.mark.parametrize(
    ("measured", "verdict"),
    [
        (quality(0.87, worse=7, better=2), "promote"),  # 6 points down, but 7 vs 2 pairs could be chance
        (quality(0.80, worse=12, better=2), "reject"),  # 13 points down, and 12 vs 2 is not chance
        (quality(0.00, worse=70, better=0), "reject"),  # garbled
        (quality(0.90, worse=5, better=3), "promote"),  # within the tolerance: no test needed
        (quality(0.87, worse=None, better=None), "reject"),  # no pairs recorded: the tolerance alone decides
    ],
)
def test_a_quality_fall_past_the_tolerance_fails_only_when_significant(measured, verdict):
    decision = PromotionGate().decide({**metrics(), "quality": measured})
    assert decision.verdict == verdict
    (check,) = [c for c in decision.checks if c["name"] == "quality"]
    assert 0 <= check["numbers"]["p_value"] <= 1 and check["numbers"]["alpha"] == 0.05


def test_paired_worse_p_is_the_exact_sign_test():
    assert paired_worse_p(0, 0) == 1.0
    assert paired_worse_p(5, 0) == pytest.approx(1 / 32)
    assert paired_worse_p(7, 2) == pytest.approx(sum(math.comb(9, k) for k in range(7, 10)) / 2**9)
    assert paired_worse_p(2, 7) > 0.9


def test_every_check_records_the_numbers_it_decided_with():
    decision = PromotionGate().decide(metrics())
    numbers = {c["name"]: c["numbers"] for c in decision.checks}
    assert numbers["win_rate"]["n"] == 35 and numbers["win_rate"]["threshold"] == 0.5
    assert numbers["heldout_loss"] == {"before": 1.0, "after": 0.9, "limit": pytest.approx(1.1)}
    tests = {c["name"]: c.get("test", "") for c in decision.checks}
    assert "Wilson" in tests["win_rate"] and "sign test" in tests["quality"]


def test_numbers_read_on_one_line():
    assert numbers_text({"n": 35, "estimate": 0.62857, "low": 0.4, "skip": None}) == "n=35, estimate=0.629, low=0.4"
    assert numbers_text({"counts": {"canary": {"up": 3, "n": 20}}, "p": 0.01}) == (
        "counts.canary.up=3, counts.canary.n=20, p=0.01"
    )


def test_more_looks_widen_the_win_rate_interval():
    # 27 wins of 40: the 95 % lower bound clears 0.5, the 98.3 % one (95 % over three looks) does not
    close = metrics(wins=27, losses=13)
    assert PromotionGate(GatePolicy(looks=1)).decide(close).verdict == "promote"
    three = PromotionGate(GatePolicy(looks=3)).decide(close)
    assert three.verdict == "reject" and not three.settled  # another look may still show it
    check = next(c for c in three.checks if c["name"] == "win_rate")
    assert check["numbers"]["low"] < 0.5 < check["numbers"]["high"] and "98.3 %" in check["test"]


@pytest.mark.parametrize(
    ("changes", "settled"),
    [
        ({"wins": 18, "losses": 17}, False),  # a coin flip: more pairs may show a side
        ({"wins": 5, "losses": 0}, False),  # too few pairs, but some: more samples bring more
        ({"wins": 0, "losses": 0}, True),  # every pair a tie (identical answers): more of the same
        ({"wins": 5, "losses": 30}, True),  # clearly not better: even the upper bound is under 0.5
        ({"regressions": ["moon-1"]}, True),  # the greedy suite answers the same at every look
        ({"loss": (1.0, 1.5)}, True),  # the training run's number: no look changes it
        ({"quality": (0.70, 0.95)}, True),  # far past the tolerance: even its upper bound is
        ({"quality": (0.86, 0.95)}, False),  # past the tolerance, within reach of chance
    ],
)
def test_a_rejection_is_unsettled_only_when_more_answers_could_turn_it(changes, settled):
    decision = PromotionGate(GatePolicy(looks=3)).decide(metrics(**changes))
    assert decision.verdict == "reject" and decision.settled is settled
    assert decision.as_dict()["settled"] is settled


def test_a_rejection_on_a_settled_and_an_open_check_is_settled():
    decision = PromotionGate(GatePolicy(looks=3)).decide(metrics(wins=18, losses=17, regressions=["moon-1"]))
    assert decision.verdict == "reject" and decision.settled


def test_looks_pool_their_pairs_and_answers():
    from eval.offline import Evaluation, pooled

    def look(wins, losses, ties, passed, checked, worse, better):
        quality = {"candidate": passed[0] / checked, "baseline": passed[1] / checked, "n": checked}
        quality |= {"candidate_passed": passed[0], "baseline_passed": passed[1]}
        quality |= {"worse_pairs": worse, "better_pairs": better}
        win = {**wilson(wins, wins + losses).as_dict(), "wins": wins, "losses": losses, "ties": ties}
        return Evaluation("ft-2", "ft-1", {"win_rate": win, "quality": quality, "settings": {"prompts": 10}})

    first, second = look(12, 8, 2, (18, 19), 20, 3, 2), look(15, 5, 0, (20, 19), 20, 1, 2)
    both = pooled(first, second).metrics
    assert both["win_rate"]["wins"] == 27 and both["win_rate"]["losses"] == 13 and both["win_rate"]["ties"] == 2
    assert both["win_rate"]["n"] == 40 and both["win_rate"]["estimate"] == pytest.approx(27 / 40, abs=1e-4)
    assert both["quality"]["n"] == 40 and both["quality"]["candidate"] == pytest.approx(38 / 40)
    assert (both["quality"]["worse_pairs"], both["quality"]["better_pairs"]) == (4, 4)
    assert both["settings"]["prompts"] == 20


def test_a_decision_is_plain_json():
    for changes in ({}, {"wins": 18, "losses": 17}, {"quality": (0.86, 0.95)}):
        decision = PromotionGate(GatePolicy(looks=3)).decide(metrics(**changes))
        assert json.loads(json.dumps(decision.as_dict())) == decision.as_dict()
