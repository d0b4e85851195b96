"""The training signals in the store, as rows per method: which imported examples, ratings, corrections and
comparisons become which SFT, DPO and KTO rows (`feedback.datasets` then scrubs, deduplicates, caps and
splits them).

Where the rows come from (a "verdict" is the majority of the votes on one choice, see below):

    SFT  imported SFT examples; choices with a good verdict; every correction (the correction is the
         answer, whatever the rating said)                                 -> {"messages": prompt + [answer]}
    DPO  imported DPO examples; comparisons (winner over loser, ties skipped); a correction over the
         answer it corrects; answers to the same prompt with a good and a bad verdict
                                                                           -> OpenAI DPO rows
    KTO  imported KTO examples; every verdict (good -> true, bad -> false); corrections (true)
                                                                           -> TRL {"prompt", "completion", "label"}

Majority rule: each user has one vote per choice (the store upserts ratings per user): thumbs up +1,
down -1; score >= 4 +1, <= 2 -1, 3 is 0. A positive sum is a good verdict, a negative one bad, zero
(a tie, or only neutral scores) gives no row. Comparisons of the same pair are decided the same way.
Answers cut short (finish_reason "length" or "abort") are never used as a target, only as a rejected
or bad example; prompts the trainers cannot take (tool messages, images, not ending with a user turn)
are skipped. Rows keep the store's order: imported first, then by time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session

from feedback.db import new_session
from feedback.formats import InvalidLine, Kind, canonical_line, parse_messages, validate_row
from feedback.models import Comparison, Completion, Example, Rating

CUT_SHORT = ("length", "abort")
_CHUNK = 500


@dataclass
class Row:
    """One training row with where it came from (for the snapshot) and whose it is (for the cap)."""

    data: dict[str, Any]
    origin: str  # imported / rating / correction / comparison / pair
    sources: tuple[str, ...]
    user: str | None  # None: imported, exempt from the per-user cap
    at: float  # when the signal arrived, for the cap's "most recent"


def _vote(rating: Rating) -> int:
    if rating.rating is not None:
        return (rating.rating > 0) - (rating.rating < 0)
    if rating.score is not None:
        return 1 if rating.score >= 4 else -1 if rating.score <= 2 else 0
    return 0


def _answer(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text}]


@dataclass
class Verdict:
    """The majority verdict on one choice, with the ratings that carried it (earliest first)."""

    prompt: list[dict[str, Any]]
    text: str
    complete: bool
    good: bool
    ratings: list[Rating]

    @property
    def user(self) -> str:
        return self.ratings[0].user

    @property
    def at(self) -> float:
        return max(r.updated for r in self.ratings)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(f"rating:{r.id}" for r in self.ratings)


@dataclass
class Signals:
    examples: list[Example]
    completions: dict[str, Completion]
    ratings: list[Rating]
    comparisons: list[Comparison]
    left_out: frozenset[tuple[str, ...]] = frozenset()  # verdicts (by their ratings) training leaves out

    @classmethod
    def load(cls, engine: Engine, since: float | None) -> Signals:
        with new_session(engine) as session:
            examples = select(Example).order_by(Example.id)
            ratings = select(Rating).order_by(Rating.created, Rating.id)
            comparisons = select(Comparison).order_by(Comparison.created, Comparison.id)
            if since is not None:
                examples = examples.where(Example.created >= since)
                ratings = ratings.where(Rating.updated >= since)
                comparisons = comparisons.where(Comparison.updated >= since)
            store = cls(
                examples=list(session.scalars(examples)),
                completions={},
                ratings=list(session.scalars(ratings)),
                comparisons=list(session.scalars(comparisons)),
            )
            ids = {r.completion_id for r in store.ratings}
            ids |= {c.completion_a for c in store.comparisons} | {c.completion_b for c in store.comparisons}
            store.completions = _completions(session, sorted(ids))
        return store

    def imported(self, kind: Kind) -> list[Row]:
        """Imported examples of `kind`, re-canonicalised (rows written by other paths may not be)."""
        rows = []
        for example in self.examples:
            try:
                valid = validate_row(example.data)
            except InvalidLine:
                continue
            if valid.kind == kind:
                rows.append(Row(valid.data, "imported", (f"example:{example.id}",), None, example.created))
        return rows

    def prompt(self, completion_id: str) -> list[dict[str, Any]] | None:
        """The completion's request messages, canonical, or None when a trainer could not take them."""
        completion = self.completions.get(completion_id)
        if completion is None:
            return None
        try:
            messages = parse_messages(completion.messages, "messages")
        except InvalidLine:
            return None
        return messages if messages[-1]["role"] == "user" else None

    def choice(self, completion_id: str, index: int) -> tuple[str, bool] | None:
        """(text, complete) of one choice, or None when it is missing or empty."""
        completion = self.completions.get(completion_id)
        choices = completion.choices if completion is not None else []
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index") == index:
                text = choice.get("text")
                if isinstance(text, str) and text.strip():
                    return text, choice.get("finish_reason") not in CUT_SHORT
        return None

    def verdicts(self) -> list[Verdict]:
        by_choice: dict[tuple[str, int], list[Rating]] = defaultdict(list)
        for rating in self.ratings:
            by_choice[(rating.completion_id, rating.choice_index)].append(rating)
        verdicts = []
        for (completion_id, index), ratings in by_choice.items():
            total = sum(_vote(r) for r in ratings)
            prompt, choice = self.prompt(completion_id), self.choice(completion_id, index)
            if total == 0 or prompt is None or choice is None:
                continue
            winners = [r for r in ratings if _vote(r) * total > 0]
            verdict = Verdict(prompt, choice[0], choice[1], total > 0, winners)
            if verdict.sources not in self.left_out:
                verdicts.append(verdict)
        return sorted(verdicts, key=lambda v: (v.at, v.sources))

    def drop_disputed(self) -> int:
        """Leave out the verdicts the other ratings contradict (feedback.agreement); returns how many."""
        from feedback.agreement import disputed

        verdicts = self.verdicts()
        flags = disputed([v.text for v in verdicts], [v.good for v in verdicts])
        self.left_out = self.left_out | {v.sources for v, flag in zip(verdicts, flags, strict=True) if flag}
        return int(sum(flags))

    def corrections(self) -> list[tuple[Rating, list[dict[str, Any]], str | None]]:
        """(rating, prompt, original answer or None) for every rating that carries a correction."""
        found = []
        for rating in self.ratings:
            prompt = self.prompt(rating.completion_id)
            if rating.correction and rating.correction.strip() and prompt is not None:
                original = self.choice(rating.completion_id, rating.choice_index)
                found.append((rating, prompt, original[0] if original else None))
        return found

    def compared(self) -> list[tuple[list[dict[str, Any]], str, str, list[Comparison]]]:
        """(prompt, winner text, loser text, comparisons that carried it) per decided pair."""
        by_pair: dict[tuple[str, str], list[Comparison]] = defaultdict(list)
        for comparison in self.comparisons:
            by_pair[(comparison.completion_a, comparison.completion_b)].append(comparison)
        found = []
        for (a, b), votes in by_pair.items():
            total = sum((v.winner == a) - (v.winner == b) for v in votes)
            winner, loser = (a, b) if total > 0 else (b, a)
            prompt, chosen, rejected = self.prompt(a), self.choice(winner, 0), self.choice(loser, 0)
            if total == 0 or prompt is None or prompt != self.prompt(b) or chosen is None or rejected is None:
                continue  # a tie, or answers to different prompts: not a preference between answers
            if chosen[1] and chosen[0] != rejected[0]:
                found.append((prompt, chosen[0], rejected[0], [v for v in votes if v.winner == winner]))
        return found


def _completions(session: Session, ids: list[str]) -> dict[str, Completion]:
    found: dict[str, Completion] = {}
    for start in range(0, len(ids), _CHUNK):
        query = select(Completion).where(Completion.id.in_(ids[start : start + _CHUNK]))
        found.update((c.id, c) for c in session.scalars(query))
    return found


def rows_of(store: Signals, kind: Kind, *, training: bool) -> list[Row]:
    """Every `kind` row of the signals; `training` cuts imported SFT rows to what is trained on."""
    if kind == "sft":
        return _sft_rows(store, training=training)
    return _dpo_rows(store) if kind == "dpo" else _kto_rows(store)


def _ordered(imported: list[Row], feedback: Iterable[Row]) -> list[Row]:
    return imported + sorted(feedback, key=lambda r: (r.at, r.sources))


# -- rows per method -----------------------------------------------------------------------------


def _sft_for_training(data: dict[str, Any]) -> dict[str, Any] | None:
    """An imported SFT row as trained: none when its row weight is 0, else cut after the last weighted answer.

    Per-message `weight: 0` stays on earlier answers: the trainer must mask those turns.
    """
    if data.get("weight") == 0:
        return None
    messages = data["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) == 1)
    return {"messages": messages[: last + 1]}


def _sft_rows(store: Signals, *, training: bool) -> list[Row]:
    imported = store.imported("sft")
    if training:
        imported = [
            Row(data, r.origin, r.sources, r.user, r.at)
            for r in imported
            if (data := _sft_for_training(r.data)) is not None
        ]
    feedback = [
        Row({"messages": v.prompt + _answer(v.text)}, "rating", v.sources, v.user, v.at)
        for v in store.verdicts()
        if v.good and v.complete
    ]
    feedback += [
        Row({"messages": prompt + _answer(r.correction)}, "correction", (f"rating:{r.id}",), r.user, r.updated)
        for r, prompt, _ in store.corrections()
    ]
    return _ordered(imported, feedback)


def _dpo_row(prompt: list[dict[str, Any]], chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "input": {"messages": prompt},
        "preferred_output": _answer(chosen),
        "non_preferred_output": _answer(rejected),
    }


def _dpo_rows(store: Signals) -> list[Row]:
    feedback = [
        Row(
            _dpo_row(prompt, chosen, rejected),
            "comparison",
            tuple(f"comparison:{v.id}" for v in votes),
            votes[0].user,
            max(v.updated for v in votes),
        )
        for prompt, chosen, rejected, votes in store.compared()
    ]
    feedback += [
        Row(_dpo_row(prompt, r.correction, original), "correction", (f"rating:{r.id}",), r.user, r.updated)
        for r, prompt, original in store.corrections()
        if original is not None and original != r.correction
    ]
    # same prompt, a good and a bad verdict: pair them round-robin, so every answer is used and the
    # number of pairs grows linearly (max(good, bad)) rather than as good × bad
    by_prompt: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in store.verdicts():
        by_prompt[canonical_line(verdict.prompt)].append(verdict)
    for verdicts in by_prompt.values():
        good = [v for v in verdicts if v.good and v.complete]
        bad = [v for v in verdicts if not v.good]
        for i in range(max(len(good), len(bad)) if good and bad else 0):
            g, b = good[i % len(good)], bad[i % len(bad)]
            if g.text != b.text:
                row = _dpo_row(g.prompt, g.text, b.text)
                feedback.append(Row(row, "pair", g.sources + b.sources, g.user, max(g.at, b.at)))
    return _ordered(store.imported("dpo"), feedback)


def _kto_rows(store: Signals) -> list[Row]:
    feedback = [
        Row({"prompt": v.prompt, "completion": _answer(v.text), "label": v.good}, "rating", v.sources, v.user, v.at)
        for v in store.verdicts()
        if v.complete or not v.good
    ]
    feedback += [
        Row(
            {"prompt": prompt, "completion": _answer(r.correction), "label": True},
            "correction",
            (f"rating:{r.id}",),
            r.user,
            r.updated,
        )
        for r, prompt, _ in store.corrections()
    ]
    return _ordered(store.imported("kto"), feedback)
