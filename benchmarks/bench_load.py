"""Load: throughput, latency and shedding of ratchet under locust's realistic mix, at a few user counts.

    python benchmarks/bench_load.py                        # 8, 32, 128 users, 30 s each
    python benchmarks/bench_load.py --users 4,16 --seconds 15 --max-concurrent 64

Starts ratchet (hf engine, the demo model, one replica on a local Ray Serve, a fresh workspace) with
`max_concurrent_requests` = `--max-concurrent` (32 by default, so that the top user count overloads it),
then runs tests/load/locustfile.py headless for `--seconds` at each user count, one after another, on
the same server. Every user thinks 0.2-1 s between tasks; chats ask for up to 48 sampled tokens.

Prints one table, a row per user count: successful requests/s, chat completions/s, p50/p99 of each
kind (a stream is timed to `data: [DONE]`), the shed rate (429/503 with Retry-After, as a share of all
requests), how fast a refused chat got its 429, failures, and the replica's RSS after the level. Writes
benchmarks/out/load.json and locust's CSVs as benchmarks/out/load-u<N>_*.csv. locust shares the
machine's cores with the server; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

OUT = ROOT / "benchmarks" / "out"
LOCUSTFILE = ROOT / "tests" / "load" / "locustfile.py"
KINDS = ("chat", "chat stream", "feedback", "comparisons", "models")


def run_level(url: str, users: int, seconds: int, prefix: Path) -> dict:
    """One locust run at `users` users; returns its numbers from locust's CSV."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    command += ["-u", str(users), "-r", str(max(1, users // 2)), "-t", f"{seconds}s", "--stop-timeout", "20"]
    command += ["--host", url, "--csv", str(prefix)]
    env = {**os.environ, "RATCHET_LOAD_RUN": f"bench-u{users}", "RATCHET_LOAD_MAX_SECONDS": str(seconds + 60)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=env)
    if done.returncode not in (0, 1):  # 1: some request failed, which the table shows
        raise RuntimeError(f"locust exited {done.returncode}: {done.stderr[-1000:]}")
    return parse_stats(prefix, users)


def parse_stats(prefix: Path, users: int) -> dict:
    """The numbers of one run, from locust's `<prefix>_stats.csv`."""
    with Path(f"{prefix}_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = int(rows["Aggregated"]["Request Count"])
    shed = sum(int(r["Request Count"]) for name, r in rows.items() if name.endswith("[shed]"))
    failures = int(rows["Aggregated"]["Failure Count"])
    per_second = float(rows["Aggregated"]["Requests/s"])  # locust's own clock for the run
    result: dict = {
        "users": users,
        "requests": total,
        "ok_per_s": round(per_second * (total - shed - failures) / total, 1) if total else 0.0,
        "chats_per_s": round(sum(float(rows[k]["Requests/s"]) for k in ("chat", "chat stream") if k in rows), 1),
        "shed": shed,
        "shed_rate": round(shed / total, 3) if total else 0.0,
        "failures": failures,
        "kinds": {},
    }
    for kind in (*KINDS, "chat [shed]"):
        row = rows.get(kind)
        if row and int(row["Request Count"]):
            result["kinds"][kind] = {
                "requests": int(row["Request Count"]),
                "p50_ms": float(row["50%"]),
                "p99_ms": float(row["99%"]),
            }
    return result


def replica_rss(url: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def report(levels: list[dict], max_concurrent: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"load: locust mix on one hf replica (max_concurrent_requests={max_concurrent})")
    for column in ("users", "ok req/s", "chats/s", "chat p50/p99 ms", "stream p50/p99 ms", "feedback p50/p99 ms"):
        table.add_column(column, justify="right")
    for column in ("shed", "429 p50/p99 ms", "failures", "replica RSS"):
        table.add_column(column, justify="right")

    def cell(level: dict, kind: str) -> str:
        k = level["kinds"].get(kind)
        return f"{k['p50_ms']:.0f} / {k['p99_ms']:.0f}" if k else "-"

    for level in levels:
        table.add_row(
            str(level["users"]),
            f"{level['ok_per_s']:.1f}",
            f"{level['chats_per_s']:.1f}",
            cell(level, "chat"),
            cell(level, "chat stream"),
            cell(level, "feedback"),
            f"{100 * level['shed_rate']:.1f} %",
            cell(level, "chat [shed]"),
            str(level["failures"]),
            f"{level['rss_mib']:.0f} MiB",
        )
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="8,32,128", help="locust user counts, one run each")
    parser.add_argument("--seconds", type=int, default=30, help="run time per user count")
    parser.add_argument("--max-concurrent", type=int, default=32, help="the server's max_concurrent_requests")
    args = parser.parse_args()
    user_counts = [int(u) for u in args.users.split(",")]

    from bench_serving import demo_model, free_port

    from deploy.server import start, stop
    from deploy.workspace import init_workspace
    from ratchet.settings import Settings

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    model_dir = demo_model(OUT / "models")
    levels: list[dict] = []
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            base_model=str(model_dir),
            port=free_port(),
            max_concurrent_requests=args.max_concurrent,
            access_log=False,
        )
        init_workspace(settings, progress=False)
        print("starting ratchet ...", file=sys.stderr, flush=True)
        url = start(settings)
        try:
            for users in user_counts:
                print(f"{users} users for {args.seconds} s ...", file=sys.stderr, flush=True)
                started = time.monotonic()
                level = run_level(url, users, args.seconds, OUT / f"load-u{users}")
                level["rss_mib"] = replica_rss(url) / 2**20
                level["wall_s"] = round(time.monotonic() - started, 1)
                levels.append(level)
        finally:
            stop(settings)

    report(levels, args.max_concurrent)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    (OUT / "load.json").write_text(
        json.dumps({"benchmark": "bench_load", "args": vars(args), "machine": machine, "levels": levels}, indent=2)
    )


if __name__ == "__main__":
    main()
