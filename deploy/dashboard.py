"""What the web dashboard shows, as aggregated queries: the browser never receives every rating.

    ratings_per_hour   ratings per hour bucket and per answering adapter, over the last N hours
    liked_shares       each adapter's thumbs-up share with its Wilson 95 % interval
    adapter_page       the adapter timeline, newest first, a page at a time
    rating_page        the latest ratings with the answer they rated (texts cut short), a page at a time
    report_file        a file of an adapter's evaluation report or training run, by a fixed name only

A rating counts as liked when it is a thumbs up or a score of 4-5, disliked for a thumbs down or 1-2
(deploy/canary.py's LIKED and JUDGED, the canary's own rule); a score of 3 is neither.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, cast, func, select

from deploy.canary import JUDGED, LIKED
from eval.stats import wilson
from feedback.errors import NotFound
from feedback.models import Adapter, Completion, Rating
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore

REPORT_FILES = ("report.md", "win_rate.png", "loss.png")
TEXT_CHARS = 400  # a rating page shows this much of a prompt or an answer


def _hour(store: FeedbackStore, column):
    """The hour bucket of an epoch-seconds column: CAST truncates on SQLite but rounds on Postgres."""
    if store.engine.dialect.name == "sqlite":
        return cast(column / 3600, Integer)
    return cast(func.floor(column / 3600), Integer)


def ratings_per_hour(store: FeedbackStore, *, hours: int = 48, now: float | None = None) -> dict[str, Any]:
    """{"hours": [epoch seconds of each bucket, oldest first], "series": {adapter: [count per bucket]}}."""
    last = int((now or time.time()) // 3600)
    first = last - hours + 1
    bucket = _hour(store, Rating.created)
    query = (
        select(bucket, Completion.adapter, func.count())
        .join(Completion, Completion.id == Rating.completion_id)
        .where(Rating.created >= first * 3600)
        .group_by(bucket, Completion.adapter)
    )
    series: dict[str, list[int]] = {}
    with store.session() as session:
        for hour, adapter, count in session.execute(query):
            if first <= hour <= last:
                series.setdefault(adapter, [0] * hours)[hour - first] = int(count)
    return {"hours": [(first + i) * 3600 for i in range(hours)], "series": series}


def liked_shares(store: FeedbackStore) -> list[dict[str, Any]]:
    """[{"adapter", "up", "n", "estimate", "low", "high"}] for every adapter that has judged ratings."""
    query = (
        select(Completion.adapter, func.sum(LIKED), func.sum(JUDGED))
        .join(Completion, Completion.id == Rating.completion_id)
        .group_by(Completion.adapter)
        .having(func.sum(JUDGED) > 0)
        .order_by(func.min(Rating.created))  # the adapter rated first comes first
    )
    with store.session() as session:
        rows = session.execute(query).all()
    return [{"adapter": adapter, "up": int(up), **wilson(int(up), int(n)).as_dict()} for adapter, up, n in rows]


def adapter_page(
    registry: AdapterRegistry, runs_dir: Path, *, limit: int = 20, before: int | None = None
) -> dict[str, Any]:
    """Adapters newest first, `limit` a page; `before` is the `number` of the last one already shown."""
    query = select(Adapter).order_by(Adapter.number.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(Adapter.number < before)
    with registry.store.session() as session:
        rows = list(session.scalars(query))
    items = []
    for adapter in rows[:limit]:
        item = AdapterRegistry.as_public(adapter)
        item["number"] = adapter.number
        snapshot = dict(item["data_snapshot"] or {})
        item["data_snapshot"] = {**snapshot, "ids": len(snapshot.get("ids", []))}  # a count, not every id
        item["report_files"] = [name for name in REPORT_FILES if _report_path(adapter, name, runs_dir) is not None]
        items.append(item)
    return {"data": items, "has_more": len(rows) > limit}


def rating_page(store: FeedbackStore, *, limit: int = 20, before: float | None = None) -> dict[str, Any]:
    """The newest ratings first, each with its prompt and the answer it rated; `before` is a `created`."""
    query = (
        select(Rating, Completion)
        .join(Completion, Completion.id == Rating.completion_id)
        .order_by(Rating.created.desc(), Rating.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(Rating.created < before)
    with store.session() as session:
        rows = session.execute(query).all()
    items = []
    for rating, completion in rows[:limit]:
        choice = next((c for c in completion.choices if c.get("index") == rating.choice_index), {})
        prompt = next((m for m in reversed(completion.messages) if m.get("role") == "user"), {})
        items.append({
            "id": rating.id,
            "created": rating.created,
            "completion_id": completion.id,
            "adapter": completion.adapter,
            "user": rating.user,
            "rating": rating.rating,
            "score": rating.score,
            "comment": rating.comment,
            "correction": _cut(rating.correction),
            "prompt": _cut(_text(prompt.get("content"))),
            "answer": _cut(choice.get("text")),
        })  # fmt: skip
    return {"data": items, "has_more": len(rows) > limit}


def report_file(registry: AdapterRegistry, runs_dir: Path, name: str, file: str) -> Path:
    """The path of one of REPORT_FILES for adapter `name`; NotFound when it has none."""
    if file not in REPORT_FILES:
        raise NotFound(f"no report file {file!r}: one of {', '.join(REPORT_FILES)}", code="file_not_found")
    path = _report_path(registry.get(name), file, runs_dir)
    if path is None:
        raise NotFound(f"adapter {name} has no {file}", code="file_not_found")
    return path


def _report_path(adapter: Adapter, file: str, runs_dir: Path) -> Path | None:
    """The report's copy first; a loss plot is also in the training run's folder (written as it trains)."""
    folders = [Path(adapter.report).parent] if adapter.report else []
    if file == "loss.png":
        run_dir = (adapter.metrics or {}).get("run_dir")
        runs = [Path(run_dir)] if run_dir else [runs_dir / run for run in (adapter.job_id, adapter.name) if run]
        folders += runs
    for folder in folders:
        path = folder / file
        if path.is_file():
            return path
    return None


def thin(rows: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """A long training curve cut to about `points` train rows (evenly, the last kept); eval rows all kept."""
    train = [row for row in rows if row.get("split") == "train"]
    step = max(1, -(-len(train) // points))
    keep = {id(row) for row in train[::step]} | ({id(train[-1])} if train else set())
    return [row for row in rows if row.get("split") != "train" or id(row) in keep]


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_CHARS:
        return text
    return text[: TEXT_CHARS - 1] + "…"
