"""Feedback writes per second over HTTP, beside the store's own single-commit rate, in one run.

    python benchmarks/bench_feedback.py                  # 400 ratings at concurrency 1 and 8

A real ratchet server (hf engine, demo model, Ray Serve). Completions are made through the API first;
then `POST /v1/feedback` rates them, each acknowledged only after its own commit (docs/api.md: a 2xx means
durably stored). Beside it, the same number of `FeedbackStore.rate()` calls in this process on a fresh
SQLite store of the same kind: the cost of HTTP + Ray Serve over the commit itself. Writes
benchmarks/out/feedback.json; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serving import OUT, demo_model, free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=400)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    from openai import OpenAI

    from deploy.server import start, stop
    from deploy.workspace import init_workspace
    from feedback.db import migrate
    from feedback.models import Completion
    from feedback.store import FeedbackStore
    from ratchet.settings import Settings

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = demo_model(OUT / "models")
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict = {"http": {}, "store": {}}
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-feedback-") as home:
        settings = Settings(
            home=Path(home) / "ws",
            base_model=str(model_dir),
            port=free_port(),
            access_log=False,
            feedback_rate_per_minute=0,
            feedback_key_rate_per_minute=0,
        )  # no limits: the rate is the point
        init_workspace(settings, progress=False)
        url = start(settings)
        try:
            client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            ids = [
                client.chat.completions.create(
                    model="base", messages=[{"role": "user", "content": "Tell me about tea."}], max_tokens=4
                ).id
                for _ in range(max(8, args.ratings // 20))
            ]
            with httpx.Client(base_url=url, timeout=60) as http:
                for concurrency in levels:

                    def rate(i: int, c: int = concurrency) -> int:
                        body = {"completion_id": ids[i % len(ids)], "rating": 1 if i % 2 else -1, "user": f"c{c}-u{i}"}
                        return http.post("/v1/feedback", json=body).status_code

                    started = time.perf_counter()
                    with ThreadPoolExecutor(concurrency) as pool:
                        codes = list(pool.map(rate, range(args.ratings)))
                    seconds = time.perf_counter() - started
                    results["http"][concurrency] = {
                        "per_s": round(args.ratings / seconds, 1),
                        "ok": sum(code == 201 for code in codes),
                    }
        finally:
            stop(settings)
        # the store alone, one commit per rating, same kind of database
        url = f"sqlite:///{Path(home) / 'plain.db'}"
        migrate(url)
        with FeedbackStore(url) as store:
            store.record_completions(
                [
                    Completion(
                        id=f"chatcmpl-{i}",
                        model="base",
                        adapter="base",
                        base_model="demo",
                        messages=[{"role": "user", "content": "x"}],
                        choices=[{"index": 0, "text": "y"}],
                    )
                    for i in range(len(ids))
                ]
            )
            started = time.perf_counter()
            for i in range(args.ratings):
                store.rate(f"chatcmpl-{i % len(ids)}", 0, rating=1, user=f"u{i}")
            results["store"] = {"per_s": round(args.ratings / (time.perf_counter() - started), 1)}
    for concurrency, row in results["http"].items():
        row["vs_store"] = round(row["per_s"] / results["store"]["per_s"], 2)
        print(
            f"HTTP c={concurrency}: {row['per_s']} ratings/s ({row['ok']} acknowledged), "
            f"{row['vs_store']}x the store's own {results['store']['per_s']}/s"
        )
    (OUT / "feedback.json").write_text(json.dumps({"benchmark": "bench_feedback", "results": results}, indent=2))


if __name__ == "__main__":
    main()
