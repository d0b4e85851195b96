"""The online A/B test of a canary: live thumbs-up rates per arm, and the decision they support.

While a canary runs, `current` traffic is split sticky per user (serving/runtime.py): completions are
logged with `route` "canary" or "current". Each arm's ratings since the canary started are counted
(thumbs up/down; scores of 4-5 up, 1-2 down, 3 neither), and

    wait      until both arms have `canary_min_ratings`;
    rollback  when the canary is significantly worse (Fisher's exact test, one-sided, `canary_alpha`);
    promote   when it is significantly better, or non-inferior (the 95 % lower bound of its rate minus
              the control's is above -`canary_margin`);
    at `canary_max_ratings` an arm, the point estimate decides (ties promote: the offline gate passed).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select

from eval.stats import compare_arms
from feedback.models import Completion, Rating
from feedback.store import FeedbackStore
from ratchet.settings import Settings

# Per rating, in SQL: 1 when it is liked (a thumbs up, a score of 4-5), and 1 when it is judged at all (a thumb,
# or a score other than 3). The canary and the dashboard count with these.
LIKED = case((Rating.rating == 1, 1), (Rating.score >= 4, 1), else_=0)
JUDGED = case((Rating.rating.is_not(None), 1), (Rating.score >= 4, 1), (Rating.score <= 2, 1), else_=0)


def arm_counts(store: FeedbackStore, canary: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{"canary": {"up", "n"}, "current": {"up", "n"}} over ratings of completions since the canary began."""
    query = (
        select(Completion.route, func.sum(LIKED), func.sum(JUDGED))
        .join(Rating, Rating.completion_id == Completion.id)
        .where(
            and_(
                Completion.created >= float(canary.get("started", 0)),
                Completion.model == "current",
                Completion.route.in_(("canary", "current")),
            )
        )
        .group_by(Completion.route)
    )
    counts = {"canary": {"up": 0, "n": 0}, "current": {"up": 0, "n": 0}}
    with store.session() as session:
        for route, ups, n in session.execute(query):
            counts[route] = {"up": int(ups or 0), "n": int(n or 0)}
    return counts


def decide(counts: dict[str, dict[str, int]], settings: Settings) -> dict[str, Any]:
    """What the live numbers say: {"action": wait|promote|rollback, "reason", "stats"}."""
    canary, control = counts["canary"], counts["current"]
    result = compare_arms(canary["up"], canary["n"], control["up"], control["n"])
    stats = {
        "counts": counts,
        **result.as_dict(),
        "test": "Fisher's exact test, one-sided each way; Newcombe 95 % interval of the difference",
        "thresholds": {
            "min_ratings": settings.canary_min_ratings,
            "max_ratings": settings.canary_max_ratings,
            "alpha": settings.canary_alpha,
            "margin": settings.canary_margin,
        },
    }
    rates = f"canary {canary['up']}/{canary['n']} up vs current {control['up']}/{control['n']}"
    if min(canary["n"], control["n"]) < settings.canary_min_ratings:
        return {
            "action": "wait",
            "reason": f"{rates}: {settings.canary_min_ratings} ratings an arm needed",
            "stats": stats,
        }
    if result.p_worse < settings.canary_alpha:
        return {
            "action": "rollback",
            "reason": f"{rates}: significantly worse (p={result.p_worse:.3f})",
            "stats": stats,
        }
    if result.p_better < settings.canary_alpha:
        return {
            "action": "promote",
            "reason": f"{rates}: significantly better (p={result.p_better:.3f})",
            "stats": stats,
        }
    if result.difference_low > -settings.canary_margin:
        reason = f"{rates}: non-inferior (difference > {result.difference_low:+.2f} at 95 %)"
        return {"action": "promote", "reason": reason, "stats": stats}
    if min(canary["n"], control["n"]) >= settings.canary_max_ratings:
        better = result.candidate.estimate >= result.control.estimate
        reason = (
            f"{rates}: no significant difference after {settings.canary_max_ratings} an arm; point estimate decides"
        )
        return {"action": "promote" if better else "rollback", "reason": reason, "stats": stats}
    return {"action": "wait", "reason": f"{rates}: not yet conclusive", "stats": stats}
