"""Ratings stored per second: one commit per rating (what POST /v1/feedback acks) vs many per commit.

    python benchmarks/bench_ratings.py [--n 2000] [--batch 500]

For each backend (a temp SQLite file in WAL mode with synchronous=FULL, and a Postgres database this
script creates and drops) it stores `--n` ratings twice, side by side in alternating rounds:
- single:  `FeedbackStore.rate()`, the HTTP route's path: validate, upsert, COMMIT (an fsync) per rating;
- batched: `INSERT` of `--batch` rating rows per transaction, what a background writer could do if an
  ack did not have to mean "committed".
Prints a table with rows/s and the batched/single ratio per backend and writes benchmarks/out/ratings.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from feedback.models import Completion, Rating, new_id, now  # noqa: E402
from feedback.store import FeedbackStore  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("RATCHET_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
OUT = Path(__file__).parent / "out" / "ratings.json"
ROUNDS = 4  # alternate single and batched so that drift in the machine's load hits both alike


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.db"


@contextmanager
def postgres_url() -> Iterator[str]:
    name = f"ratchet_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_completions(store: FeedbackStore, n: int) -> list[str]:
    rows = [
        Completion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model="current",
            adapter="base",
            base_model="bench",
            messages=[{"role": "user", "content": "hi"}],
            choices=[{"index": 0, "text": "hello", "finish_reason": "stop"}],
        )
        for _ in range(n)
    ]
    store.record_completions(rows)
    return [row.id for row in rows]


def time_single(store: FeedbackStore, ids: list[str]) -> float:
    start = time.perf_counter()
    for i, cid in enumerate(ids):
        store.rate(cid, 0, rating=1 if i % 2 else -1, user="single")
    return time.perf_counter() - start


def time_batched(store: FeedbackStore, ids: list[str], batch: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(ids), batch):
        stamp = now()
        rows = [
            {"id": new_id("fb"), "completion_id": cid, "choice_index": 0, "user": "batched", "rating": 1}
            | {"created": stamp, "updated": stamp}
            for cid in ids[first : first + batch]
        ]
        with store.engine.begin() as connection:
            connection.execute(sa.insert(Rating), rows)
    return time.perf_counter() - start


def measure(url: str, n: int, batch: int) -> dict:
    store = FeedbackStore(url, migrate=True)
    try:
        ids = seed_completions(store, n)
        single = batched = 0.0
        per_round = -(-n // ROUNDS)
        for first in range(0, n, per_round):
            chunk = ids[first : first + per_round]
            single += time_single(store, chunk)
            batched += time_batched(store, chunk, batch)
        counts = store.stats()["ratings"]
        assert counts["total"] == 2 * n, counts  # every rating of both modes is there
    finally:
        store.close()
    return {
        "single": {"rows": n, "seconds": round(single, 4), "rows_per_s": round(n / single, 1)},
        "batched": {"rows": n, "seconds": round(batched, 4), "rows_per_s": round(n / batched, 1), "batch": batch},
        "ratio": round(single / batched, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="ratings per mode and backend")
    parser.add_argument("--batch", type=int, default=500, help="rows per commit in the batched mode")
    args = parser.parse_args()
    console = Console()

    results: dict[str, dict | None] = {}
    for backend, make_url in (("sqlite", sqlite_url), ("postgres", postgres_url)):
        console.print(f"[dim]{backend}: {args.n} ratings, single vs batched ({args.batch} per commit)…[/dim]")
        try:
            with make_url() as url:
                results[backend] = measure(url, args.n, args.batch)
        except sa.exc.OperationalError as error:
            console.print(f"[yellow]{backend} skipped: {error.orig}[/yellow]")
            results[backend] = None

    table = Table(title=f"ratings stored per second (n={args.n}, {os.cpu_count()} cores)")
    for column in ("backend", "single commit / rating", "batched", "batched / single"):
        table.add_column(column, justify="right")
    for backend, result in results.items():
        if result is not None:
            table.add_row(
                backend,
                f"{result['single']['rows_per_s']:,.0f} rows/s",
                f"{result['batched']['rows_per_s']:,.0f} rows/s ({args.batch}/commit)",
                f"{result['ratio']:.1f}x",
            )
    console.print(table)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bench_ratings",
        "n": args.n,
        "batch": args.batch,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "sqlite": "WAL, synchronous=FULL",
        "results": results,
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written {OUT}")


if __name__ == "__main__":
    main()
