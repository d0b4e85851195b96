"""Judges: who says which of two answers to the same prompt is better.

    judge.compare(prompt, a, b) -> 1.0 (a is better), 0.0 (b is better) or 0.5 (tie)

- `RatingsJudge` is learned from the store: every thumbs, score, comparison and correction users gave
  (through feedback.datasets, so it sees the same scrubbed, deduplicated, per-user-capped signals that
  training does) fits a logistic regression over the answers' word n-grams (scikit-learn). It knows only
  what users said; nothing of the demo's simulated preference reaches it except through their ratings.
- `LLMJudge` asks any OpenAI-compatible chat endpoint, in both orders (a judge that flips with the order
  has no opinion: a tie).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.engine import Engine

TIE_MARGIN = 0.02  # RatingsJudge: scores closer than this are a tie


class JudgeUnavailable(RuntimeError):
    """The judge cannot judge (too few or one-sided ratings, an unreachable endpoint); says what to do."""


class Judge(Protocol):
    name: str

    def compare(self, prompt: str, a: str, b: str) -> float: ...


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))


def labelled_answers(engine: Engine) -> list[tuple[str, int]]:
    """(answer, 1 good / 0 bad) from every signal in the store, deduplicated."""
    from feedback.datasets import store_rows

    examples: dict[str, int] = {}
    for row in store_rows(engine, "kto"):  # thumbs, scores split at the threshold, corrections
        examples[_text(row["completion"])] = int(bool(row["label"]))
    for row in store_rows(engine, "dpo"):  # comparisons, corrections vs originals, up vs down pairs
        examples.setdefault(_text(row["preferred_output"]), 1)
        examples.setdefault(_text(row["non_preferred_output"]), 0)
    return [(text, label) for text, label in examples.items() if text.strip()]


class RatingsJudge:
    name = "ratings"

    def __init__(self, pipeline: Any, n_examples: int, n_good: int) -> None:
        self.pipeline, self.n_examples, self.n_good = pipeline, n_examples, n_good

    @classmethod
    def fit(cls, engine: Engine, *, min_examples: int = 8) -> RatingsJudge:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        examples = labelled_answers(engine)
        good = sum(label for _, label in examples)
        if len(examples) < min_examples or good == 0 or good == len(examples):
            raise JudgeUnavailable(
                f"the ratings judge needs at least {min_examples} rated answers of both kinds; the store has "
                f"{len(examples)} ({good} good): collect more ratings, or use an LLM judge (RATCHET_JUDGE=llm)"
            )
        pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True),
            LogisticRegression(class_weight="balanced", C=4.0, max_iter=1000),
        )
        pipeline.fit([text for text, _ in examples], [label for _, label in examples])
        return cls(pipeline, len(examples), good)

    def score(self, answer: str) -> float:
        """P(a user rates this answer up)."""
        return float(self.pipeline.predict_proba([answer])[0][1])

    def compare(self, prompt: str, a: str, b: str) -> float:
        score_a, score_b = self.pipeline.predict_proba([a, b])[:, 1]
        if abs(score_a - score_b) < TIE_MARGIN:
            return 0.5
        return 1.0 if score_a > score_b else 0.0

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "examples": self.n_examples, "good": self.n_good}


JUDGE_PROMPT = (
    "You compare two answers to the same user message. Reply with exactly one letter: A if answer A is "
    "better, B if answer B is better.\n\nUser message:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n"
)


class LLMJudge:
    name = "llm"

    def __init__(self, base_url: str, model: str, api_key: str = "unused", timeout: float = 60.0) -> None:
        from openai import OpenAI

        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=1)

    def _pick(self, prompt: str, a: str, b: str) -> str | None:
        from openai import OpenAIError

        try:
            reply = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, a=a, b=b)}],
                temperature=0,
                max_tokens=4,
            )
        except OpenAIError as error:
            raise JudgeUnavailable(f"the LLM judge at {self.client.base_url} failed: {error}") from error
        letter = (reply.choices[0].message.content or "").strip()[:1].upper()
        return letter if letter in ("A", "B") else None

    def compare(self, prompt: str, a: str, b: str) -> float:
        first, second = self._pick(prompt, a, b), self._pick(prompt, b, a)
        if first == "A" and second == "B":
            return 1.0
        if first == "B" and second == "A":
            return 0.0
        return 0.5

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "model": self.model, "url": str(self.client.base_url)}


# -- the ratings judge as a reinforcement reward (RATCHET_LOOP_METHOD=rft) ---------------------------

RATINGS_REWARD = "ratings_judge"  # the `type` of the loop's reinforcement jobs' grader


def ratings_reward(settings: Any, store: Any, grader: dict[str, Any]):
    """A reward for retrain/job_runner.py: P(a user rates this answer up), by a judge fitted on the store
    when the job starts. A few hundred ratings so grade as many fresh answers as training samples."""
    judge = RatingsJudge.fit(store.engine)

    def reward(answers: list[str], rows: list[dict[str, Any]]) -> list[float]:
        return [float(p) for p in judge.pipeline.predict_proba(answers)[:, 1]]

    return reward
