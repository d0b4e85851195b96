"""A short locust run (headless, as a subprocess) against the session's real server.

The realistic mix of tests/load/locustfile.py for a few seconds: no failure of any kind, every kind of
request made, and every rating and comparison the server acknowledged with a 2xx is in the store, as
the CSV counted it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlmodel import select

from feedback.models import Comparison, Rating
from feedback.store import FeedbackStore

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
KINDS = ("chat", "chat stream", "feedback", "comparisons", "models")
USERS = 6


def run_locust(host: str, out: Path, *extra: str, env: dict | None = None, seconds: int = 10):
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    command += ["-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s", "--stop-timeout", "15"]
    command += ["--host", host, "--csv", str(out / "load"), *extra]
    environment = {**os.environ, "RATCHET_LOAD_MAX_SECONDS": str(seconds + 30), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, env=environment)


def read_stats(out: Path) -> dict[str, dict]:
    with (out / "load_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.e2e
def test_a_short_locust_run_has_no_failures_and_every_acknowledged_rating_is_stored(server, tmp_path):
    run = uuid.uuid4().hex[:8]
    record = tmp_path / "acknowledged.tsv"
    done = run_locust(server.url, tmp_path, env={"RATCHET_LOAD_RUN": run, "RATCHET_LOAD_RECORD": str(record)})
    assert done.returncode == 0, done.stderr[-3000:]

    stats = read_stats(tmp_path)
    print("\n" + (done.stdout + done.stderr)[-2500:])  # locust's summary table, for -s
    assert int(stats["Aggregated"]["Failure Count"]) == 0, (tmp_path / "load_failures.csv").read_text()
    for kind in KINDS:
        assert int(stats[kind]["Request Count"]) > 0, f"no {kind!r} requests in the run: {sorted(stats)}"
    assert len((tmp_path / "load_failures.csv").read_text().splitlines()) == 1  # the header only

    # every 2xx the run got is committed: the CSV's count, the run's own record and the store agree
    lines = [line.split("\t") for line in record.read_text().splitlines()]
    rated = [(ids, user) for kind, _status, ids, user in lines if kind == "feedback"]
    compared = [(tuple(sorted(ids.split(","))), user) for kind, _status, ids, user in lines if kind == "comparison"]
    # one line per 2xx; the same user may compare the same pair again (an upsert, 200), rating happens once
    assert int(stats["feedback"]["Request Count"]) == len(rated)  # sheds would be under "feedback [shed]"
    assert int(stats["comparisons"]["Request Count"]) == len(compared)
    ratings, comparisons = set(rated), set(compared)
    assert len(ratings) == len(rated)
    with FeedbackStore(server.settings.store_url) as store, store.session() as session:
        users = Rating.user.like(f"load-{run}-%")
        stored = {(r.completion_id, r.user) for r in session.exec(select(Rating).where(users))}
        pairs = session.exec(select(Comparison).where(Comparison.user.like(f"load-{run}-%"))).all()
        stored_pairs = {(tuple(sorted((c.completion_a, c.completion_b))), c.user) for c in pairs}
    assert ratings <= stored, f"{len(ratings - stored)} acknowledged ratings are not in the store"
    assert comparisons <= stored_pairs, f"{len(comparisons - stored_pairs)} acknowledged comparisons are not stored"
    # nothing more either (each user rates each answer once; --stop-timeout lets every task finish)
    assert stored == ratings and stored_pairs == comparisons


def test_the_locustfile_refuses_any_host_but_127_0_0_1(tmp_path):
    for host in ("http://example.com:8000", "http://localhost:8000", "http://10.0.0.1:8000", "https://127.0.0.1"):
        done = run_locust(host, tmp_path, seconds=2)
        assert done.returncode == 2, (host, done.stderr[-500:])
        assert "refusing to load-test" in done.stderr
        assert len((tmp_path / "load_stats.csv").read_text().splitlines()) <= 1  # no request was made
