"""Best-of-n (RATCHET_LOOP_METHOD=best_of_n): the ratings judge turns a few ratings into many SFT targets.

Filtered SFT learns only from the answers users liked; when the preferred kind of answer is rare, a round
has few of them. Here every prompt users rated (the newest MAX_PROMPTS) is answered `n` times by what is
served (sampled, through the server like any client), the judge learned from the ratings (eval/judge.py)
scores each answer, and the best one becomes a training target when the judge thinks a user would more
likely rate it up than down: rejection sampling, or expert iteration, with the learned judge as the reward.
The users' own rows (liked answers and corrections, through feedback.datasets like any SFT set) come first;
the judged ones follow. The rows go to the server as an uploaded training file, and the round is an
ordinary SFT job on it, continued from `current`, evaluated and gated like any other.

    rows, heldout, counts = best_of_n_rows(store, client, "ft-0003", n=8, seed=2, drop_disputed=True)
    file_id = upload_rows(client, rows, "best-of-n.jsonl")

The users' held-out SFT rows (never the judged ones) are the job's validation file, so the gate's
held-out loss still measures the candidate on what people said.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from feedback.datasets import build
from feedback.store import FeedbackStore

MIN_SCORE = 0.5  # the judge's P(rated up) a sampled answer needs to become a target
MAX_TOKENS = 256
MAX_PROMPTS = 256  # the most recently rated prompts a round samples for: a round's cost stays bounded
CONCURRENCY = 4  # requests in flight: the server batches them


def best_of_n_rows(
    store: FeedbackStore, client: Any, model: str, *, n: int, seed: int, drop_disputed: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(train rows, held-out rows, counts): the store's SFT rows, then the judge's best of `n` answers to
    each rated prompt of the training split; held out: the store's held-out SFT rows."""
    from eval.judge import RatingsJudge

    judge = RatingsJudge.fit(store.engine)  # JudgeUnavailable (with what to do) when the ratings are too few
    rated = build(store.engine, "kto", drop_disputed=drop_disputed).train  # one row per rated answer
    prompts = list({json.dumps(row["prompt"], sort_keys=True): row["prompt"] for row in rated}.values())
    prompts = prompts[-MAX_PROMPTS:]  # rows are in the order they were rated: the newest
    users = build(store.engine, "sft", drop_disputed=drop_disputed)
    rows = list(users.train)
    known = {json.dumps(row, sort_keys=True) for row in rows}

    def sample(i: int) -> list[str]:
        reply = client.chat.completions.create(
            model=model, messages=prompts[i], n=n, temperature=1.0, max_tokens=MAX_TOKENS, seed=seed * 100_003 + i
        )
        return [c.message.content or "" for c in reply.choices if c.finish_reason == "stop"]

    judged = 0
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for messages, answers in zip(prompts, pool.map(sample, range(len(prompts))), strict=True):
            if not answers:
                continue
            scores = judge.pipeline.predict_proba(answers)[:, 1]
            best = max(range(len(answers)), key=lambda k: scores[k])
            row = {"messages": [*messages, {"role": "assistant", "content": answers[best]}]}
            key = json.dumps(row, sort_keys=True)
            if scores[best] >= MIN_SCORE and key not in known:
                known.add(key)
                rows.append(row)
                judged += 1
    counts = {"prompts": len(prompts), "samples_per_prompt": n, "user_rows": len(rows) - judged, "judged": judged}
    return rows, users.heldout, counts


def upload_rows(client: Any, rows: list[dict[str, Any]], name: str) -> str:
    """Upload SFT rows as a JSONL training file (POST /v1/files); returns its file id."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    return client.files.create(file=(name, data), purpose="fine-tune").id
