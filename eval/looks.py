"""Evaluate a candidate in looks: stop at the first look that settles the gate's verdict.

    evaluation, decision, looks = evaluate_in_looks(client, "ft-0004", "ft-0003", gate=gate, judge=judge, ...)
    evaluation.metrics["looks"]   # one line per look: its pooled verdict, whether it settled, pairs so far
    looks                         # each look's own Evaluation, unpooled

One look is eval/offline.py's evaluate (the suite, sampled answers judged pairwise, quality). When the gate
rejects and every failed check could still pass with more answers (eval/gate.py: a straddling win-rate
interval, a quality fall that may be chance), another look samples new answers (a new seed, a new prompt
sample) and the gate decides on all looks pooled. The greedy suite runs once: it would answer the same.
A clear verdict costs one look; only the close calls pay for more.
"""

from __future__ import annotations

from typing import Any

from eval.gate import Decision, PromotionGate
from eval.offline import Evaluation, evaluate, pooled

LOOK_SEED_STRIDE = 7919  # a prime: the looks' answer seeds never coincide for a realistic prompt count


def evaluate_in_looks(
    client: Any, candidate: str, baseline: str, *, gate: PromotionGate, seed: int = 0, **evaluate_kwargs: Any
) -> tuple[Evaluation, Decision, list[Evaluation]]:
    """At most `gate.policy.looks` evaluations, pooled; the last one's decision is the verdict."""
    history: list[dict[str, Any]] = []
    looks: list[Evaluation] = []
    evaluation: Evaluation | None = None
    for look in range(gate.policy.looks):
        current = evaluate(
            client, candidate, baseline, seed=seed + look * LOOK_SEED_STRIDE, run_suite=look == 0, **evaluate_kwargs
        )
        looks.append(current)
        evaluation = current if evaluation is None else pooled(evaluation, current)
        decision = gate.decide(evaluation.metrics)
        win, quality = evaluation.metrics["win_rate"], evaluation.metrics["quality"]
        history.append(
            {
                "look": look + 1,
                "verdict": decision.verdict,
                "settled": decision.settled,
                "pairs": win["n"],
                "ties": win["ties"],
                "checked_answers": quality["n"],
            }
        )
        if decision.settled:
            break
    assert evaluation is not None  # looks >= 1
    evaluation.metrics["looks"] = history
    return evaluation, decision, looks
