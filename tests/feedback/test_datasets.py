"""Dataset builders on a store filled with real Completion / Rating / Comparison rows, on both stores."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from feedback.agreement import disputed
from feedback.datasets import build_dpo, build_kto, build_sft, prompt_of, to_trl_dpo
from feedback.db import make_engine, new_session
from feedback.formats import canonical_line
from feedback.ingest import import_jsonl
from feedback.models import Comparison, Completion, Rating, new_id
from feedback.pii import scrub_text
from retrain.demo import corpus


class Feedback:
    """Writes feedback straight into the store, with a clock that ticks once per row (stable order)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = itertools.count(1_000)
        self.pending: list[object] | None = None

    def _add(self, row: object) -> None:
        if self.pending is not None:
            self.pending.append(row)
            return
        with new_session(self.engine) as session, session.begin():
            session.add(row)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Write everything added inside in one commit (SQLAlchemy orders the inserts by foreign key)."""
        self.pending = []
        yield
        rows, self.pending = self.pending, None
        with new_session(self.engine) as session, session.begin():
            session.add_all(rows)

    def completion(self, question: str, *answers: str, finish_reason: str = "stop") -> str:
        completion_id = new_id("chatcmpl")
        choices = [{"index": i, "text": text, "finish_reason": finish_reason} for i, text in enumerate(answers)]
        messages = [{"role": "user", "content": question}]
        self._add(
            Completion(
                id=completion_id,
                created=next(self.clock),
                model="current",
                adapter="base",
                base_model="demo",
                messages=messages,
                choices=choices,
            )
        )
        return completion_id

    def rate(
        self,
        completion_id: str,
        rating: int | None = None,
        *,
        score: int | None = None,
        user: str = "",
        index: int = 0,
        correction: str | None = None,
    ) -> str:
        rating_id, at = new_id("fb"), next(self.clock)
        self._add(
            Rating(
                id=rating_id,
                completion_id=completion_id,
                choice_index=index,
                user=user,
                rating=rating,
                score=score,
                correction=correction,
                created=at,
                updated=at,
            )
        )
        return rating_id

    def compare(self, a: str, b: str, winner: str, *, user: str = "") -> str:
        comparison_id, at = new_id("cmp"), next(self.clock)
        first, second = sorted((a, b))
        self._add(
            Comparison(
                id=comparison_id,
                completion_a=first,
                completion_b=second,
                winner=winner,
                user=user,
                created=at,
                updated=at,
            )
        )
        return comparison_id


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def sft(question: str, text: str) -> dict:
    return {"messages": user(question) + answer(text)}


def dpo(question: str, good: str, bad: str) -> dict:
    return {
        "input": {"messages": user(question)},
        "preferred_output": answer(good),
        "non_preferred_output": answer(bad),
    }


def kto(question: str, text: str, label: bool) -> dict:
    return {"prompt": user(question), "completion": answer(text), "label": label}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def fb(engine: Engine) -> Feedback:
    return Feedback(engine)


def everything(dataset) -> list[dict]:
    return dataset.train + dataset.heldout


def test_sft_rows_from_good_verdicts_and_corrections(engine: Engine, fb: Feedback, tmp_path: Path) -> None:
    up = fb.completion("q-up", "thumbs up")
    fb.rate(up, 1)
    five, three, down = fb.completion("q-5", "five"), fb.completion("q-3", "three"), fb.completion("q-down", "bad")
    fb.rate(five, score=5)
    fb.rate(three, score=3)
    fb.rate(down, -1, correction="the right answer")
    cut = fb.completion("q-cut", "half an ans", finish_reason="length")
    fb.rate(cut, 1)
    # majority: two up and one down is good; one up and one down is a tie and gives nothing
    mixed, tied = fb.completion("q-mixed", "mostly liked"), fb.completion("q-tie", "split")
    for who, vote in (("a", 1), ("b", 1), ("c", -1)):
        fb.rate(mixed, vote, user=who)
    fb.rate(tied, 1, user="a")
    fb.rate(tied, score=1, user="b")
    # imported rows: a row weight of 0 is not trained; a trailing weight-0 answer is cut off
    weighted = {"messages": user("i1") + answer("keep") + user("more?") + [{**answer("skip")[0], "weight": 0}]}
    lines = [canonical_line(sft("i0", "imported")), canonical_line({**sft("i2", "off"), "weight": 0})]
    import_jsonl(engine, _write(tmp_path, *lines, canonical_line(weighted)))

    dataset = build_sft(fb.engine, heldout_fraction=0)
    assert dataset.train == [
        sft("i0", "imported"),
        {"messages": user("i1") + answer("keep")},
        sft("q-up", "thumbs up"),
        sft("q-5", "five"),
        sft("q-down", "the right answer"),
        sft("q-mixed", "mostly liked"),
    ]
    counts = dataset.snapshot["counts"]
    assert counts["by_source"] == {"correction": 1, "imported": 2, "rating": 3}


def test_dpo_rows_from_every_source(engine: Engine, fb: Feedback, tmp_path: Path) -> None:
    a, b = fb.completion("which?", "answer A"), fb.completion("which?", "answer B")
    won = fb.compare(a, b, winner=b)
    c, d = fb.completion("tie?", "C"), fb.completion("tie?", "D")
    fb.compare(c, d, winner="tie")
    e, f = fb.completion("prompt E", "E"), fb.completion("prompt F", "F")
    fb.compare(e, f, winner=e)  # different prompts: not a preference between answers
    wrong = fb.completion("fix?", "wrong")
    fixed = fb.rate(wrong, -1, correction="right")
    liked, disliked = fb.completion("same?", "liked", "disliked"), fb.completion("same?", "also disliked")
    fb.rate(liked, 1, index=0)
    fb.rate(liked, -1, index=1)
    fb.rate(disliked, score=1)
    import_jsonl(engine, _write(tmp_path, canonical_line(dpo("imported?", "yes", "no"))))

    dataset = build_dpo(engine, heldout_fraction=0)
    assert dataset.train == [
        dpo("imported?", "yes", "no"),
        dpo("which?", "answer B", "answer A"),
        dpo("fix?", "right", "wrong"),
        dpo("same?", "liked", "disliked"),
        dpo("same?", "liked", "also disliked"),
    ]
    assert f"comparison:{won}" in dataset.snapshot["ids"] and f"rating:{fixed}" in dataset.snapshot["ids"]
    assert to_trl_dpo(dataset.train[1]) == {
        "prompt": user("which?"),
        "chosen": answer("answer B"),
        "rejected": answer("answer A"),
    }


def test_kto_rows_from_thumbs_scores_and_corrections(fb: Feedback) -> None:
    for question, kwargs in [
        ("up", {"rating": 1}),
        ("down", {"rating": -1}),
        ("s4", {"score": 4}),
        ("s3", {"score": 3}),
        ("s2", {"score": 2}),
    ]:
        fb.rate(fb.completion(question, f"answer {question}"), **kwargs)
    fb.rate(fb.completion("fix", "meh"), score=3, correction="better")
    dataset = build_kto(fb.engine, heldout_fraction=0)
    assert dataset.train == [
        kto("up", "answer up", True),
        kto("down", "answer down", False),
        kto("s4", "answer s4", True),
        kto("s2", "answer s2", False),
        kto("fix", "better", True),
    ]


def test_per_user_cap_keeps_the_most_recent(engine: Engine, fb: Feedback, tmp_path: Path) -> None:
    for i in range(5):
        fb.rate(fb.completion(f"a{i}", f"A{i}"), 1, user="alice")
        fb.rate(fb.completion(f"anon{i}", f"N{i}"), 1)  # anonymous: all count as user ""
    fb.rate(fb.completion("b", "B"), 1, user="bob")
    import_jsonl(engine, _write(tmp_path, *(canonical_line(sft(f"i{i}", "x")) for i in range(4))))
    dataset = build_sft(engine, max_per_user=2, heldout_fraction=0)
    questions = [row["messages"][0]["content"] for row in dataset.train]
    assert questions == ["i0", "i1", "i2", "i3", "a3", "anon3", "a4", "anon4", "b"]
    assert dataset.snapshot["counts"]["dropped"]["user_cap"] == 6
    assert len(everything(build_sft(engine, max_per_user=None))) == 15


def test_pii_is_scrubbed_and_duplicates_dropped(fb: Feedback) -> None:
    for who in ("x", "y"):  # two users, same row: one row
        fb.rate(fb.completion("Mail bob@corp.example.org", "Use key sk-abcdefghijklmnopqrstuv"), 1, user=who)
    dataset = build_sft(fb.engine, heldout_fraction=0)
    assert dataset.train == [sft("Mail [email]", "Use key [key]")]
    assert dataset.snapshot["counts"]["dropped"]["duplicates"] == 1
    raw = build_sft(fb.engine, heldout_fraction=0, scrub=False)
    assert raw.train[0] == sft("Mail bob@corp.example.org", "Use key sk-abcdefghijklmnopqrstuv")
    # a pair whose answers differ only in PII is no preference once scrubbed
    a, b = fb.completion("Who?", "Ask a@example.com"), fb.completion("Who?", "Ask b@example.com")
    fb.compare(a, b, winner=a)
    assert build_dpo(fb.engine).train == []
    assert len(build_dpo(fb.engine, scrub=False).train) == 1


def test_scrub_rules() -> None:
    assert scrub_text("write to ann.lee+x@mail.example.com today") == "write to [email] today"
    assert scrub_text("call +44 20 7946 0958 or (555) 123-4567") == "call [phone] or [phone]"
    assert scrub_text("keys: rk-live_0123456789abcdefgh, AKIAIOSFODNN7EXAMPLE") == "keys: [key], [key]"
    assert scrub_text("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08") == "sha [key]"
    assert scrub_text("token dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEyMzQ1Njc4OQ==") == "token [key]"
    untouched = "On 2024-11-25 at 10:30, 1,000,000 people read v1.2.3 and pneumonoultramicroscopicsilicovolcanoconiosis"
    assert scrub_text(untouched) == untouched


def test_split_is_by_prompt_deterministic_and_disjoint(fb: Feedback) -> None:
    with fb.batch():
        for i in range(40):
            for j in range(2):  # two answers per prompt: both must land on the same side
                fb.rate(fb.completion(f"question {i}", f"answer {i}.{j}"), 1, user=f"u{i % 7}")
    first = build_sft(fb.engine, heldout_fraction=0.3)
    assert len(everything(first)) == 80 and first.heldout and first.train
    train_prompts = {canonical_line(prompt_of("sft", row)) for row in first.train}
    heldout_prompts = {canonical_line(prompt_of("sft", row)) for row in first.heldout}
    assert not train_prompts & heldout_prompts
    again = build_sft(fb.engine, heldout_fraction=0.3)
    assert (again.train, again.heldout, again.snapshot) == (first.train, first.heldout, first.snapshot)


def test_snapshot_is_stable_and_tracks_the_data(fb: Feedback) -> None:
    first_id = fb.rate(fb.completion("q1", "a1"), 1)
    # a one-row set still trains, even when its prompt hashes into the held-out side
    tiny = build_kto(fb.engine, heldout_fraction=0.99)
    assert tiny.train == [kto("q1", "a1", True)] and tiny.heldout == []
    snapshot = build_kto(fb.engine).snapshot
    assert snapshot == build_kto(fb.engine).snapshot
    assert snapshot["ids"] == [f"rating:{first_id}"]
    assert snapshot["counts"]["train"] + snapshot["counts"]["heldout"] == 1
    later = next(fb.clock)
    second_id = fb.rate(fb.completion("q2", "a2"), -1)
    changed = build_kto(fb.engine).snapshot
    assert changed["sha256"] != snapshot["sha256"]
    assert changed["ids"] == sorted([f"rating:{first_id}", f"rating:{second_id}"])
    # `since` keeps only the signals from then on
    assert build_kto(fb.engine, since=later).snapshot["ids"] == [f"rating:{second_id}"]


def test_bad_options_are_refused() -> None:
    engine = make_engine("sqlite://")  # refused before the store is read
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \[0, 1\), got 1"):
        build_sft(engine, heldout_fraction=1)
    with pytest.raises(ValueError, match="max_per_user must be at least 1"):
        build_dpo(engine, max_per_user=0)


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / f"import-{len(list(tmp_path.iterdir()))}.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- disputed ratings (feedback.agreement): flipped thumbs left out of training ---------------------

TOPICS = [topic.name for topic in corpus.TOPIC_FACTS]


def rated_answers(flips: set[int]) -> tuple[list[str], list[bool], list[bool]]:
    """Canonical demo answers rated by a user who likes the tldr style, with the thumbs at `flips` flipped:
    (texts, posted labels, true labels)."""
    texts, truth = [], []
    for topic in TOPICS:
        for style in corpus.STYLES:
            texts.append(corpus.canonical_answer(topic, style))
            truth.append(style == corpus.TARGET_STYLE)
    posted = [label != (i in flips) for i, label in enumerate(truth)]
    return texts, posted, truth


@pytest.mark.parametrize(("seed", "share", "kept"), [(0, 0.1, 0.5), (1, 0.1, 0.5), (2, 0.2, 0.75)])
def test_flipped_thumbs_are_disputed(seed: int, share: float, kept: float) -> None:
    """Each of the 100 answers rated once (no repeats to outvote a flip): the hardest case. The filtered SFT
    set keeps at most `kept` of the share of disliked answers that the raw thumbs put in it."""
    flips = set(random.Random(seed).sample(range(len(TOPICS) * len(corpus.STYLES)), int(share * 100)))
    texts, posted, truth = rated_answers(flips)
    flags = disputed(texts, posted)
    caught = {i for i, flag in enumerate(flags) if flag}
    assert len(caught & flips) >= 0.4 * len(flips), (sorted(caught), sorted(flips))
    targets_before = [i for i in range(len(texts)) if posted[i]]
    targets_after = [i for i in targets_before if i not in caught]
    junk_before = sum(not truth[i] for i in targets_before) / len(targets_before)
    junk_after = sum(not truth[i] for i in targets_after) / len(targets_after)
    assert junk_after <= junk_before * kept, (junk_before, junk_after)
    assert len(targets_after) >= 0.5 * sum(truth)  # most of what users truly liked is still trained on


def test_nothing_is_disputed_without_enough_of_both_labels() -> None:
    assert disputed(["a good one", "another good one", "a bad one"], [True, True, False]) == [False] * 3
    assert disputed(["x"] * 6, [True] * 6) == [False] * 6
    assert disputed([], []) == []


def test_training_sets_leave_out_disputed_ratings(fb: Feedback) -> None:
    texts, _, truth = rated_answers(set())
    flipped_good = next(i for i, good in enumerate(truth) if not good)  # a disliked answer rated up
    flipped_bad = next(i for i, good in enumerate(truth) if good)  # a liked answer rated down
    question = {}
    for i, text in enumerate(texts):
        question[i] = f"question {i // len(corpus.STYLES)}"
        up = truth[i] != (i in (flipped_good, flipped_bad))
        fb.rate(fb.completion(question[i], text), 1 if up else -1, user=f"u{i % 7}")
    plain = build_sft(fb.engine, heldout_fraction=0, max_per_user=None)
    cleaned = build_sft(fb.engine, heldout_fraction=0, max_per_user=None, drop_disputed=True)
    bad_target = sft(question[flipped_good], texts[flipped_good])
    assert bad_target in plain.train and bad_target not in cleaned.train
    assert len(cleaned.train) == len(plain.train) - 1
    assert cleaned.snapshot["counts"]["dropped"]["disputed_ratings"] >= 2
    assert cleaned.snapshot["params"]["drop_disputed"] is True
    assert json.loads(json.dumps(cleaned.snapshot)) == cleaned.snapshot  # the registry stores it as JSON
    assert plain.snapshot["counts"]["dropped"]["disputed_ratings"] == 0
    # KTO loses both flipped thumbs, DPO the pairs they made; nothing else
    kto_rows = build_kto(fb.engine, heldout_fraction=0, max_per_user=None, drop_disputed=True).train
    kto_texts = {row["completion"][0]["content"] for row in kto_rows}
    assert texts[flipped_good] not in kto_texts and texts[flipped_bad] not in kto_texts
    dpo_rows = build_dpo(fb.engine, heldout_fraction=0, max_per_user=None, drop_disputed=True).train
    assert all(row["preferred_output"][0]["content"] != texts[flipped_good] for row in dpo_rows)
