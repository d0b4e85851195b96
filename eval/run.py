"""One evaluation, start to finish: judge, suite and prompts from the workspace, the gate, the record.

    outcome = run_evaluation(settings, store, client, "ft-0004", "ft-0003")
    outcome.decision.verdict      # promote / reject, also recorded on the adapter and as an EvalRun
    outcome.report                # <reports>/<eval id>/report.md (and .html, .png beside it)

`client` is an `openai.OpenAI` pointed at the running server: answers are generated there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.gate import Decision, GatePolicy, PromotionGate
from eval.judge import Judge, JudgeUnavailable, LLMJudge, RatingsJudge
from eval.looks import evaluate_in_looks
from eval.offline import Evaluation, heldout_loss_of
from eval.regression import load_suite
from eval.report import write_report
from feedback.models import Adapter, AdapterStatus, EvalRun, new_id
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore
from ratchet.settings import Settings


@dataclass
class EvaluationOutcome:
    id: str
    evaluation: Evaluation
    decision: Decision
    report: Path


def gate_policy(settings: Settings) -> GatePolicy:
    return GatePolicy(
        min_pairs=settings.gate_min_pairs,
        min_win_rate_low=settings.gate_min_win_rate_low,
        max_regressions=settings.gate_max_regressions,
        regression_share=settings.gate_regression_share,
        quality_tolerance=settings.gate_quality_tolerance,
        quality_alpha=settings.gate_quality_alpha,
        loss_tolerance=settings.gate_loss_tolerance,
        looks=settings.eval_looks,
    )


def make_judge(settings: Settings, store: FeedbackStore) -> Judge:
    if settings.judge == "llm":
        if not (settings.judge_url and settings.judge_model):
            raise JudgeUnavailable("RATCHET_JUDGE=llm needs RATCHET_JUDGE_URL and RATCHET_JUDGE_MODEL")
        return LLMJudge(settings.judge_url, settings.judge_model, settings.judge_api_key.get_secret_value())
    return RatingsJudge.fit(store.engine)


def heldout_prompts(store: FeedbackStore) -> list[list[dict[str, Any]]]:
    """The prompts of the held-out split (by prompt hash: the same prompts training never sees)."""
    from feedback.datasets import build

    rows = build(store.engine, "sft").heldout
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]


def run_evaluation(
    settings: Settings, store: FeedbackStore, client: Any, candidate: str, baseline: str, *, seed: int = 0
) -> EvaluationOutcome:
    registry = AdapterRegistry(store, settings.adapters_dir)
    record = registry.get(candidate)
    evaluation, decision, _ = evaluate_in_looks(
        client,
        candidate,
        baseline,
        gate=PromotionGate(gate_policy(settings)),
        judge=make_judge(settings, store),
        suite=load_suite(settings.regression_dir),
        prompts=heldout_prompts(store),
        heldout_loss=heldout_loss_of(record.metrics),
        samples=settings.eval_samples,
        temperature=settings.eval_temperature,
        max_prompts=settings.eval_prompts,
        seed=seed,
    )
    eval_id = new_id("eval")
    report = write_report(evaluation, decision, settings.reports_dir / eval_id, run_dir=record.metrics.get("run_dir"))
    with store.session() as session:
        session.add(
            EvalRun(
                id=eval_id,
                candidate=candidate,
                baseline=baseline,
                metrics=evaluation.metrics,
                decision=decision.verdict,
                reasons=decision.reasons,
                report=str(report),
            )
        )
    verdict = {**decision.as_dict(), "eval_id": eval_id, "baseline": baseline, "report": str(report)}
    if decision.verdict == "reject":
        registry.set_status(candidate, AdapterStatus.REJECTED, verdict)
    else:
        registry.set_status(candidate, record.status, verdict)
    with store.session() as session:  # the registry links each adapter to its latest report
        session.get(Adapter, candidate).report = str(report)
    return EvaluationOutcome(eval_id, evaluation, decision, report)
