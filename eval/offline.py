"""Offline evaluation of a candidate adapter against a baseline, generated through the running server.

    evaluation = evaluate(client, "ft-0004", "ft-0003", judge=judge, suite=cases, prompts=heldout_prompts)

1) regression suite, greedy: each case answered by both models; a case the baseline passes and the
   candidate fails is a regression;
2) win-rate: for every suite prompt and held-out prompt (at most `max_prompts`), `samples` answers of each
   model at `temperature`; the judge compares them pairwise; ties count one half and are excluded from n;
   a 95 % Wilson interval;
3) quality: the share of those sampled answers that pass their prompt's suite check (well-formed, on topic);
4) held-out loss, from the training run (the start of the run vs its end: the gate allows a tolerance).

Answers come from the server (`model` = the candidate's registry name), never from a second copy of the
model in this process; `client` is an `openai.OpenAI` pointed at the server.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from eval.judge import Judge
from eval.regression import Case
from eval.stats import wilson


@dataclass
class Evaluation:
    candidate: str
    baseline: str
    metrics: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few pairs, for the report


def _answers(client: Any, model: str, messages: list[dict], *, n: int, temperature: float, seed: int) -> list[str]:
    response = client.chat.completions.create(
        model=model, messages=messages, n=n, temperature=temperature, seed=seed, max_tokens=128, user="ratchet-eval"
    )
    return [choice.message.content or "" for choice in sorted(response.choices, key=lambda c: c.index)]


def evaluate(
    client: Any,
    candidate: str,
    baseline: str,
    *,
    judge: Judge,
    suite: list[Case],
    prompts: list[list[dict]] | None = None,
    heldout_loss: dict[str, float | None] | None = None,
    samples: int = 2,
    temperature: float = 1.0,
    max_prompts: int = 40,
    seed: int = 0,
    concurrency: int = 4,
    run_suite: bool = True,
) -> Evaluation:
    """Measure `candidate` against `baseline` (both names the server serves: base or ft-…).

    `run_suite=False` skips the greedy suite (a later look: its answers would be the same)."""
    models = (candidate, baseline)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ratchet-eval")
    try:
        # 1) the regression suite, greedy
        regression = _regression(pool, client, models, suite) if run_suite else None
        # 2) sampled answers for the win-rate and quality, on suite prompts and held-out prompts
        chosen = _pick_prompts(suite, prompts or [], max_prompts, seed)
        sampled = {
            model: list(
                pool.map(
                    lambda item, m=model: _answers(
                        client, m, item[0], n=samples, temperature=temperature, seed=seed + item[2]
                    ),
                    [(messages, case, i) for i, (messages, case) in enumerate(chosen)],
                )
            )
            for model in models
        }
    finally:
        pool.shutdown(wait=True)

    wins = losses = ties = 0
    examples: list[dict[str, Any]] = []
    checked = {model: [0, 0] for model in models}  # passed, checked
    discordant = {"worse": 0, "better": 0}  # pairs where only the baseline's / only the candidate's answer passed
    for i, (messages, case) in enumerate(chosen):
        prompt = _last_user(messages)
        for a, b in zip(sampled[candidate][i], sampled[baseline][i], strict=False):
            verdict = judge.compare(prompt, a, b)
            wins, losses, ties = wins + (verdict == 1.0), losses + (verdict == 0.0), ties + (verdict == 0.5)
            if len(examples) < 6:
                examples.append({"prompt": prompt, "candidate": a, "baseline": b, "verdict": verdict})
            if case is not None:
                a_ok, b_ok = case.passes(a), case.passes(b)
                for model, ok in ((candidate, a_ok), (baseline, b_ok)):
                    checked[model][0] += ok
                    checked[model][1] += 1
                discordant["worse"] += b_ok and not a_ok
                discordant["better"] += a_ok and not b_ok
    win = wilson(wins, wins + losses)
    n_checked = checked[candidate][1]
    metrics = {
        "win_rate": {**win.as_dict(), "wins": wins, "losses": losses, "ties": ties},
        "regression": regression,
        "quality": {
            "candidate": checked[candidate][0] / n_checked if n_checked else None,
            "baseline": checked[baseline][0] / n_checked if n_checked else None,
            "n": n_checked,
            "candidate_passed": checked[candidate][0],
            "baseline_passed": checked[baseline][0],
            "worse_pairs": discordant["worse"],
            "better_pairs": discordant["better"],
        },
        "heldout_loss": heldout_loss or {},
        "judge": judge.describe() if hasattr(judge, "describe") else {"judge": getattr(judge, "name", "?")},
        "settings": {"samples": samples, "temperature": temperature, "prompts": len(chosen), "seed": seed},
    }
    return Evaluation(candidate, baseline, metrics, examples)


def _regression(pool: ThreadPoolExecutor, client: Any, models: tuple[str, str], suite: list[Case]) -> dict[str, Any]:
    candidate, baseline = models

    def greedy(model: str) -> list[str]:
        return list(pool.map(lambda case: _answers(client, model, case.chat, n=1, temperature=0, seed=0)[0], suite))

    passed = {model: [c.passes(a) for c, a in zip(suite, greedy(model), strict=True)] for model in models}
    outcomes = list(zip((case.id for case in suite), passed[candidate], passed[baseline], strict=True))
    return {
        "cases": len(suite),
        "candidate_passed": sum(passed[candidate]),
        "baseline_passed": sum(passed[baseline]),
        "regressions": [cid for cid, ok, ok_before in outcomes if ok_before and not ok],
        "fixed": [cid for cid, ok, ok_before in outcomes if ok and not ok_before],
    }


def pooled(first: Evaluation, later: Evaluation) -> Evaluation:
    """Two looks at one candidate as one: judged pairs and checked answers summed, the first look's suite."""
    a, b = first.metrics, later.metrics
    wins, losses, ties = (a["win_rate"][k] + b["win_rate"][k] for k in ("wins", "losses", "ties"))
    counts = {k: a["quality"][k] + b["quality"][k] for k in ("n", "candidate_passed", "baseline_passed")}
    discordant = {k: a["quality"][k] + b["quality"][k] for k in ("worse_pairs", "better_pairs")}
    n = counts["n"]
    quality = {
        "candidate": counts["candidate_passed"] / n if n else None,
        "baseline": counts["baseline_passed"] / n if n else None,
        **counts,
        **discordant,
    }
    metrics = {
        **a,
        "win_rate": {**wilson(wins, wins + losses).as_dict(), "wins": wins, "losses": losses, "ties": ties},
        "quality": quality,
        "settings": {**a["settings"], "prompts": a["settings"]["prompts"] + b["settings"]["prompts"]},
    }
    return Evaluation(first.candidate, first.baseline, metrics, first.examples)


def _pick_prompts(
    suite: list[Case], prompts: list[list[dict]], max_prompts: int, seed: int
) -> list[tuple[list[dict], Case | None]]:
    """Suite prompts (their checks give quality) first, then held-out ones; a fixed sample of at most max."""
    items: list[tuple[list[dict], Case | None]] = [(case.chat, case) for case in suite]
    seen = {_last_user(messages) for messages, _ in items}
    for messages in prompts:
        if _last_user(messages) not in seen:
            items.append((messages, None))
            seen.add(_last_user(messages))
    if len(items) > max_prompts:
        items = random.Random(seed).sample(items, max_prompts)
    return items


def _last_user(messages: list[dict]) -> str:
    return next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")


def heldout_loss_of(adapter_metrics: dict[str, Any]) -> dict[str, float | None]:
    """The candidate's run: held-out loss at its start (the parent) and at its end."""
    return {"before": adapter_metrics.get("eval_loss_start"), "after": adapter_metrics.get("eval_loss")}
