"""Acknowledged ratings per second over HTTP: group commit beside one commit per rating, in one run.

    python benchmarks/bench_feedback.py                    # 3,000 ratings per cell, c=1,8,32, SQLite and Postgres
    python benchmarks/bench_feedback.py --ratings 500 --stores sqlite

A real ratchet server (hf engine, demo model, Ray Serve, HAProxy ingress) with the feedback rate limits off;
completions are made through the API first, then `POST /v1/feedback` rates them from an asyncio client
(aiohttp, one connection per concurrent caller). Every 2xx means committed (docs/api.md). Two servers per
store, started in alternating rounds so that drift in the machine's load hits both alike:
- single: `RATCHET_FEEDBACK_GROUP_COMMIT=1`, one transaction and one fsync per rating (the old route);
- group:  the default, concurrent ratings share a transaction (feedback/group_commit.py).
The spread between the rounds of one mode is the method's noise (an A/A comparison). Beside them, the
store's own `rate()` in this process, one commit each, on the same kind of database. Each cell also reads
every process's CPU time before and after (psutil) and prints the milliseconds of CPU per rating of the
replica, the client, HAProxy, Postgres and Ray's other processes: what the 2 cores spend, and where. Writes
benchmarks/out/feedback.json; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ratings import postgres_url  # noqa: E402
from bench_serving import OUT, demo_model, free_port  # noqa: E402

MODES = {"single": 1, "group": 256}  # RATCHET_FEEDBACK_GROUP_COMMIT of each mode


async def rate_all(url: str, ids: list[str], ratings: int, concurrency: int, tag: str) -> tuple[float, dict]:
    """Post `ratings` ratings from `concurrency` callers; (acknowledged per second, status counts)."""
    import aiohttp

    counter, codes = iter(range(ratings)), {}

    async def caller(http: aiohttp.ClientSession) -> None:
        for i in counter:
            body = {"completion_id": ids[i % len(ids)], "rating": 1 if i % 2 else -1, "user": f"{tag}-{i}"}
            async with http.post("/v1/feedback", json=body) as answer:
                await answer.read()
                codes[answer.status] = codes.get(answer.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(caller(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return codes.get(201, 0) / seconds, codes


def cpu_seconds() -> dict[tuple[str, int], float]:
    """CPU seconds so far of every process on the machine, keyed by (its part in the benchmark, pid)."""
    import psutil

    seconds = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            times = process.cpu_times()
            command, name = " ".join(process.info["cmdline"] or []), process.info["name"] or ""
        except psutil.Error:
            continue
        if process.pid == os.getpid():
            part = "client"
        elif "ServeReplica" in command:
            part = "replica"
        elif "postgres" in name or command.startswith("postgres"):
            part = "postgres"
        elif "haproxy" in name:
            part = "haproxy"
        elif "ray" in command:
            part = "ray, other"
        else:
            part = "other"
        seconds[(part, process.pid)] = times.user + times.system
    return seconds


def cpu_per_rating(before: dict, after: dict, ratings: int) -> dict[str, float]:
    """Milliseconds of CPU per acknowledged rating, per part, between two `cpu_seconds()` readings."""
    parts: dict[str, float] = {}
    for key, seconds in after.items():
        parts[key[0]] = parts.get(key[0], 0.0) + seconds - before.get(key, 0.0)
    return {part: round(1000 * seconds / max(ratings, 1), 3) for part, seconds in sorted(parts.items())}


def measure_server(settings, levels: list[int], ratings: int, tag: str) -> dict[int, dict]:
    from openai import OpenAI

    from deploy.server import start, stop

    url = start(settings)
    try:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        ids = [
            client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": "Tell me about tea."}], max_tokens=4
            ).id
            for _ in range(50)
        ]
        asyncio.run(rate_all(url, ids, 200, 8, f"{tag}-warm"))  # connections, caches, the first group
        cells = {}
        for concurrency in levels:
            before = cpu_seconds()
            per_s, codes = asyncio.run(rate_all(url, ids, ratings, concurrency, f"{tag}-c{concurrency}"))
            cpu = cpu_per_rating(before, cpu_seconds(), codes.get(201, 0))
            cells[concurrency] = {"per_s": round(per_s, 1), "codes": codes, "cpu_ms_per_rating": cpu}
            print(f"  {tag} c={concurrency}: {per_s:.0f} acknowledged ratings/s {codes}; CPU ms each {cpu}", flush=True)
        return cells
    finally:
        stop(settings)


def store_alone(url: str, ratings: int) -> float:
    """The store's own rate(), one commit per rating, no HTTP."""
    from feedback.db import migrate
    from feedback.models import Completion
    from feedback.store import FeedbackStore

    migrate(url)
    with FeedbackStore(url) as store:
        ids = [f"chatcmpl-alone-{i}" for i in range(50)]
        store.record_completions(
            [
                Completion(
                    id=cid,
                    model="base",
                    adapter="base",
                    base_model="demo",
                    messages=[{"role": "user", "content": "x"}],
                    choices=[{"index": 0, "text": "y"}],
                )
                for cid in ids
            ]
        )
        started = time.perf_counter()
        for i in range(ratings):
            store.rate(ids[i % len(ids)], 0, rating=1, user=f"alone-{i}")
        return ratings / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=3000, help="ratings per cell (mode, round, concurrency)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from deploy.workspace import init_workspace
    from ratchet.settings import Settings

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = demo_model(OUT / "models")
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict = {}
    for backend in args.stores.split(","):
        runs: dict[str, list] = {mode: [] for mode in MODES}
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-feedback-") as home:
            for round_number in range(args.rounds):
                for mode, group in MODES.items():
                    with _database(backend, Path(home) / f"{mode}-{round_number}.db") as database_url:
                        settings = Settings(
                            home=Path(home) / f"ws-{mode}-{round_number}",
                            database_url=database_url,
                            base_model=str(model_dir),
                            port=free_port(),
                            access_log=False,
                            feedback_group_commit=group,
                            feedback_rate_per_minute=0,  # no limits: the rate is the point
                            feedback_key_rate_per_minute=0,
                        )
                        init_workspace(settings, progress=False)
                        print(f"{backend}, round {round_number + 1}, {mode}:", flush=True)
                        runs[mode].append(measure_server(settings, levels, args.ratings, f"{mode}{round_number}"))
            with _database(backend, Path(home) / "alone.db") as database_url:
                alone = store_alone(database_url, args.ratings)
        results[backend] = {"store_alone_per_s": round(alone, 1), "levels": {}}
        for level in levels:
            cell = {mode: [run[level]["per_s"] for run in runs[mode]] for mode in MODES}
            median = {mode: statistics.median(values) for mode, values in cell.items()}
            results[backend]["levels"][level] = {
                **{f"{mode}_per_s": values for mode, values in cell.items()},
                "group_vs_single": round(median["group"] / median["single"], 2),
                "group_vs_store_alone": round(median["group"] / alone, 2),
                "aa_spread": {mode: round(max(v) / min(v), 2) for mode, v in cell.items()},
            }
    for backend, result in results.items():
        print(f"\n{backend}: the store alone commits {result['store_alone_per_s']} ratings/s (one commit each)")
        for level, row in result["levels"].items():
            print(
                f"  c={level}: group {row['group_per_s']} /s, single {row['single_per_s']} /s: "
                f"{row['group_vs_single']}x (A/A spread {row['aa_spread']})"
            )
    payload = {"benchmark": "bench_feedback", "ratings_per_cell": args.ratings, "results": results}
    (OUT / "feedback.json").write_text(json.dumps(payload, indent=2))


def _database(backend: str, sqlite_path: Path):
    return postgres_url() if backend == "postgres" else nullcontext(f"sqlite:///{sqlite_path}")


if __name__ == "__main__":
    main()
