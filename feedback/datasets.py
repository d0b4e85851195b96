"""Training sets from the store: SFT, DPO and KTO rows, scrubbed, capped, split, with a snapshot.

Where the rows come from (a "verdict" is the majority of the votes on one choice, see below):

    SFT  imported SFT examples; choices with a good verdict; every correction (the correction is the
         answer, whatever the rating said)                                 -> {"messages": prompt + [answer]}
    DPO  imported DPO examples; comparisons (winner over loser, ties skipped); a correction over the
         answer it corrects; answers to the same prompt with a good and a bad verdict
                                                                           -> OpenAI DPO rows (`to_trl_dpo`)
    KTO  imported KTO examples; every verdict (good -> true, bad -> false); corrections (true)
                                                                           -> TRL {"prompt", "completion", "label"}

Majority rule: each user has one vote per choice (the store upserts ratings per user): thumbs up +1,
down -1; score >= 4 +1, <= 2 -1, 3 is 0. A positive sum is a good verdict, a negative one bad, zero
(a tie, or only neutral scores) gives no row. Comparisons of the same pair are decided the same way.
Answers cut short (finish_reason "length" or "abort") are never used as a target, only as a rejected
or bad example; prompts the trainers cannot take (tool messages, images, not ending with a user turn)
are skipped.

Then every build, in this order: scrubs obvious PII (`scrub_text`), drops duplicate rows (same content
hash, first kept), caps the rows each user contributes (`max_per_user`, the most recent kept; anonymous
feedback counts as user ""; imported examples are curated by an operator and are not capped), and
splits by a hash of the prompt, so a prompt never crosses splits. When the split would leave train
empty (a tiny set), every row goes to train. Rows keep the store's order: imported first, then by time.

`Dataset.snapshot` is what the adapter registry stores: the source ids (`example:12`, `rating:fb-…`,
`comparison:cmp-…`), the SHA-256 of the canonical rows (same data, same hash) and counts.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session

from feedback.db import new_session
from feedback.formats import InvalidLine, Kind, canonical_line, content_hash, parse_messages, validate_row
from feedback.models import Comparison, Completion, Example, Rating

CUT_SHORT = ("length", "abort")
_SPLIT_SALT = b"ratchet-heldout-v1\0"
_CHUNK = 500

# -- PII scrubbing -------------------------------------------------------------------------------

_SECRET = re.compile(
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys (sk-…, sk-proj-…, rk-…)
    r"|\b(?:ghp|gho|ghu|ghs|github_pat)_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\b[0-9a-fA-F]{32,}\b"  # long hex: hashes used as secrets, API keys
)
# base64-ish runs: only when long and mixing upper, lower and digits, so long plain words survive
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/=_-])")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w+.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w])")


def _looks_like_token(match: re.Match[str]) -> str:
    text = match.group()
    mixed = any(c.isdigit() for c in text) and any(c.islower() for c in text) and any(c.isupper() for c in text)
    return "[key]" if mixed else text


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[phone]" if 9 <= digits <= 15 else match.group()


def scrub_text(text: str) -> str:
    """Replace emails, phone numbers and key-like strings by `[email]`, `[phone]`, `[key]`."""
    text = _SECRET.sub("[key]", text)
    text = _TOKEN.sub(_looks_like_token, text)
    text = _EMAIL.sub("[email]", text)
    return _PHONE.sub(_phone, text)


def scrub_row(value: Any) -> Any:
    """A copy of a row with every message `content` scrubbed (roles, labels, weights untouched)."""
    if isinstance(value, list):
        return [scrub_row(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_text(v) if k == "content" and isinstance(v, str) else scrub_row(v) for k, v in value.items()}
    return value


# -- the dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    kind: Kind
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    snapshot: dict[str, Any]  # {"kind", "ids", "sha256", "counts", "params"}


@dataclass
class _Row:
    data: dict[str, Any]
    origin: str  # imported / rating / correction / comparison / pair
    sources: tuple[str, ...]
    user: str | None  # None: imported, exempt from the per-user cap
    at: float  # when the signal arrived, for the cap's "most recent"


def to_trl_dpo(row: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI DPO row as TRL's conversational preference row {"prompt", "chosen", "rejected"}."""
    return {
        "prompt": row["input"]["messages"],
        "chosen": row["preferred_output"],
        "rejected": row["non_preferred_output"],
    }


def prompt_of(kind: Kind, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages a row answers: what the held-out split is keyed on."""
    if kind == "sft":
        return row["messages"][:-1]
    return row["input"]["messages"] if kind == "dpo" else row["prompt"]


def build(
    engine: Engine,
    kind: Kind,
    *,
    max_per_user: int | None = 50,
    heldout_fraction: float = 0.1,
    scrub: bool = True,
    since: float | None = None,
) -> Dataset:
    """The `kind` training set from the signals since `since` (UNIX seconds; None: all of them)."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_per_user is not None and max_per_user < 1:
        raise ValueError(f"max_per_user must be at least 1 (or None for no cap), got {max_per_user}")
    rows = _rows(_Store.load(engine, since), kind, training=True)
    params = {"max_per_user": max_per_user, "heldout_fraction": heldout_fraction, "scrub": scrub, "since": since}
    return _finish(kind, rows, params)


def build_sft(engine: Engine, **options: Any) -> Dataset:
    """SFT rows {"messages": [...]} ending with the answer to learn; options as `build`."""
    return build(engine, "sft", **options)


def build_dpo(engine: Engine, **options: Any) -> Dataset:
    """OpenAI DPO rows; `[to_trl_dpo(r) for r in ds.train]` is what TRL's DPOTrainer takes."""
    return build(engine, "dpo", **options)


def build_kto(engine: Engine, **options: Any) -> Dataset:
    """TRL KTO rows {"prompt", "completion", "label"}; options as `build`."""
    return build(engine, "kto", **options)


def store_rows(engine: Engine, kind: Kind, *, scrub: bool = True) -> list[dict[str, Any]]:
    """Every row of `kind` the store holds, in its exchange format, deduplicated, neither capped nor split.

    Imported rows come back exactly as stored (row weights included), so an export round-trips them.
    """
    rows = _rows(_Store.load(engine, None), kind, training=False)
    return [row.data for row in _dedup(_scrubbed(rows) if scrub else rows)[0]]


# -- the build pipeline: scrub, dedup, cap, split, snapshot ------------------------------------


def _finish(kind: Kind, rows: list[_Row], params: dict[str, Any]) -> Dataset:
    if params["scrub"]:
        rows = _scrubbed(rows)
    rows, duplicates = _dedup(rows)
    rows, capped = _cap(rows, params["max_per_user"])
    train, heldout = [], []
    for row in rows:
        (heldout if _is_heldout(prompt_of(kind, row.data), params["heldout_fraction"]) else train).append(row)
    if not train:  # a tiny set: train on everything rather than on nothing
        train, heldout = heldout, []
    by_origin: dict[str, int] = defaultdict(int)
    for row in rows:
        by_origin[row.origin] += 1
    train_data, heldout_data = [r.data for r in train], [r.data for r in heldout]
    snapshot = {
        "kind": kind,
        "ids": sorted({source for row in rows for source in row.sources}),
        "sha256": content_hash({"train": train_data, "heldout": heldout_data}),
        "counts": {
            "train": len(train),
            "heldout": len(heldout),
            "by_source": dict(sorted(by_origin.items())),
            "dropped": {"duplicates": duplicates, "user_cap": capped},
        },
        "params": params,
    }
    return Dataset(kind=kind, train=train_data, heldout=heldout_data, snapshot=snapshot)


def _scrubbed(rows: list[_Row]) -> list[_Row]:
    scrubbed = [_Row(scrub_row(r.data), r.origin, r.sources, r.user, r.at) for r in rows]
    # two answers that differ only in PII ("call 555 …" vs "call 666 …") are no preference once scrubbed
    return [r for r in scrubbed if r.data.get("preferred_output", 0) != r.data.get("non_preferred_output", 1)]


def _dedup(rows: list[_Row]) -> tuple[list[_Row], int]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = content_hash(row.data)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def _cap(rows: list[_Row], max_per_user: int | None) -> tuple[list[_Row], int]:
    """Keep each user's `max_per_user` most recent rows; imported rows (user None) are not capped."""
    if max_per_user is None:
        return rows, 0
    taken: dict[str, int] = defaultdict(int)
    dropped: set[int] = set()
    for i in sorted(range(len(rows)), key=lambda i: (-rows[i].at, i)):
        user = rows[i].user
        if user is None:
            continue
        taken[user] += 1
        if taken[user] > max_per_user:
            dropped.add(i)
    return [row for i, row in enumerate(rows) if i not in dropped], len(dropped)


def _is_heldout(prompt: list[dict[str, Any]], fraction: float) -> bool:
    digest = hashlib.sha256(_SPLIT_SALT + canonical_line(prompt).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# -- reading the store -------------------------------------------------------------------------


def _vote(rating: Rating) -> int:
    if rating.rating is not None:
        return (rating.rating > 0) - (rating.rating < 0)
    if rating.score is not None:
        return 1 if rating.score >= 4 else -1 if rating.score <= 2 else 0
    return 0


def _answer(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text}]


@dataclass
class _Verdict:
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
class _Store:
    examples: list[Example]
    completions: dict[str, Completion]
    ratings: list[Rating]
    comparisons: list[Comparison]

    @classmethod
    def load(cls, engine: Engine, since: float | None) -> _Store:
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

    def imported(self, kind: Kind) -> list[_Row]:
        """Imported examples of `kind`, re-canonicalised (rows written by other paths may not be)."""
        rows = []
        for example in self.examples:
            try:
                valid = validate_row(example.data)
            except InvalidLine:
                continue
            if valid.kind == kind:
                rows.append(_Row(valid.data, "imported", (f"example:{example.id}",), None, example.created))
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

    def verdicts(self) -> list[_Verdict]:
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
            verdicts.append(_Verdict(prompt, choice[0], choice[1], total > 0, winners))
        return sorted(verdicts, key=lambda v: (v.at, v.sources))

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


def _rows(store: _Store, kind: Kind, *, training: bool) -> list[_Row]:
    if kind == "sft":
        return _sft_rows(store, training=training)
    return _dpo_rows(store) if kind == "dpo" else _kto_rows(store)


def _ordered(imported: list[_Row], feedback: Iterable[_Row]) -> list[_Row]:
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


def _sft_rows(store: _Store, *, training: bool) -> list[_Row]:
    imported = store.imported("sft")
    if training:
        imported = [
            _Row(data, r.origin, r.sources, r.user, r.at)
            for r in imported
            if (data := _sft_for_training(r.data)) is not None
        ]
    feedback = [
        _Row({"messages": v.prompt + _answer(v.text)}, "rating", v.sources, v.user, v.at)
        for v in store.verdicts()
        if v.good and v.complete
    ]
    feedback += [
        _Row({"messages": prompt + _answer(r.correction)}, "correction", (f"rating:{r.id}",), r.user, r.updated)
        for r, prompt, _ in store.corrections()
    ]
    return _ordered(imported, feedback)


def _dpo_row(prompt: list[dict[str, Any]], chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "input": {"messages": prompt},
        "preferred_output": _answer(chosen),
        "non_preferred_output": _answer(rejected),
    }


def _dpo_rows(store: _Store) -> list[_Row]:
    feedback = [
        _Row(
            _dpo_row(prompt, chosen, rejected),
            "comparison",
            tuple(f"comparison:{v.id}" for v in votes),
            votes[0].user,
            max(v.updated for v in votes),
        )
        for prompt, chosen, rejected, votes in store.compared()
    ]
    feedback += [
        _Row(_dpo_row(prompt, r.correction, original), "correction", (f"rating:{r.id}",), r.user, r.updated)
        for r, prompt, original in store.corrections()
        if original is not None and original != r.correction
    ]
    # same prompt, a good and a bad verdict: pair them round-robin, so every answer is used and the
    # number of pairs grows linearly (max(good, bad)) rather than as good × bad
    by_prompt: dict[str, list[_Verdict]] = defaultdict(list)
    for verdict in store.verdicts():
        by_prompt[canonical_line(verdict.prompt)].append(verdict)
    for verdicts in by_prompt.values():
        good = [v for v in verdicts if v.good and v.complete]
        bad = [v for v in verdicts if not v.good]
        for i in range(max(len(good), len(bad)) if good and bad else 0):
            g, b = good[i % len(good)], bad[i % len(bad)]
            if g.text != b.text:
                row = _dpo_row(g.prompt, g.text, b.text)
                feedback.append(_Row(row, "pair", g.sources + b.sources, g.user, max(g.at, b.at)))
    return _ordered(store.imported("dpo"), feedback)


def _kto_rows(store: _Store) -> list[_Row]:
    feedback = [
        _Row({"prompt": v.prompt, "completion": _answer(v.text), "label": v.good}, "rating", v.sources, v.user, v.at)
        for v in store.verdicts()
        if v.complete or not v.good
    ]
    feedback += [
        _Row(
            {"prompt": prompt, "completion": _answer(r.correction), "label": True},
            "correction",
            (f"rating:{r.id}",),
            r.user,
            r.updated,
        )
        for r, prompt, _ in store.corrections()
    ]
    return _ordered(store.imported("kto"), feedback)
