"""Hot-swap under load: how long a promotion takes to reach users, and what it does to latency.

    python benchmarks/bench_swap.py                    # 8 streaming clients, 3 swaps
    python benchmarks/bench_swap.py --clients 16 --swaps 5

A real ratchet server (hf engine, demo model, Ray Serve) with two registered LoRA adapters; `--clients`
threads stream chat completions without pause through the official `openai` SDK. After a steady-state
window, the adapters are promoted in turn through `POST /admin/promote`. Measured, side by side in this one
run:
- promote call: the admin request's own time (load + check + smoke generation + state switch);
- swap latency: from the promote call's start to the first response that NAMES the new adapter
  (started after the call returned, since a request keeps the adapter it started with);
- request latency p50/p99 in steady state vs in the 5 s after each promote call, and failed requests.
Prints a table and writes benchmarks/out/swap.json. The script times itself; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serving import OUT, demo_model, free_port, percentile  # noqa: E402

SWAP_WINDOW_S = 5.0


def stream_clients(url: str, prompt: str, clients: int, stop: threading.Event, log: list, failures: list) -> list:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def run() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                chunks = list(
                    client.chat.completions.create(
                        model="current",
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=32,
                        temperature=0,
                        stream=True,
                    )
                )
                log.append((started, time.monotonic(), chunks[0].model))
            except Exception as error:  # counted: a swap must fail nothing
                failures.append(repr(error))

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def latencies(log: list, start: float, end: float) -> list[float]:
    return [finish - begin for begin, finish, _ in log if start <= begin < end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx

    from deploy.server import start, stop
    from deploy.workspace import init_workspace, read_admin_key
    from ratchet.settings import Settings
    from retrain.demo import corpus

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = demo_model(OUT / "models")
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-swap-") as home:
        settings = Settings(
            home=Path(home),
            base_model=str(model_dir),
            port=free_port(),
            access_log=False,
            torch_threads=2,
            keep_adapters=100,
        )
        init_workspace(settings, progress=False)
        names = [register_random_adapter(settings, seed) for seed in (1, 2)]
        url = start(settings)
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {read_admin_key(settings)}"}, timeout=120)
        log: list = []
        failures: list = []
        halt = threading.Event()
        threads = stream_clients(url, corpus.prompts(corpus.TOPICS[0])[0], args.clients, halt, log, failures)
        try:
            time.sleep(2)  # warm up
            steady_from = time.monotonic()
            time.sleep(args.steady_seconds)
            steady_window = (steady_from, time.monotonic())
            swaps = []
            for i in range(args.swaps):
                target = names[i % 2] if i < args.swaps - 1 else "base"
                began = time.monotonic()
                reply = admin.post("/admin/promote", json={"adapter": target, "force": True})
                returned = time.monotonic()
                reply.raise_for_status()
                time.sleep(SWAP_WINDOW_S)
                swaps.append(
                    {
                        "to": target,
                        "began": began,
                        "promote_call_s": round(returned - began, 3),
                        "returned": returned,
                        "window": (began, began + SWAP_WINDOW_S),
                    }
                )
        finally:
            halt.set()
            for thread in threads:
                thread.join(timeout=120)
            admin.close()
            stop(settings)
    if failures or not log:
        print(f"{len(failures)} failed requests, e.g. {failures[:3]}", file=sys.stderr)
    for swap in swaps:
        target, returned = swap["to"], swap.pop("returned")
        first = min((end for start_, end, model in log if start_ >= returned and model == target), default=None)
        swap["swap_latency_s"] = None if first is None else round(first - swap["began"], 3)
        swap.pop("began")
    # requests are judged by when they STARTED, once all have finished
    steady = latencies(log, *steady_window)
    during = [x for s in swaps for x in latencies(log, *s.pop("window"))]
    result = {
        "clients": args.clients,
        "requests": len(log),
        "failed": len(failures),
        "steady": {
            "p50_s": round(percentile(steady, 0.5), 3),
            "p99_s": round(percentile(steady, 0.99), 3),
            "n": len(steady),
        },
        "during_swaps": {
            "p50_s": round(percentile(during, 0.5), 3),
            "p99_s": round(percentile(during, 0.99), 3),
            "n": len(during),
        },
        "swaps": swaps,
    }
    (OUT / "swap.json").write_text(json.dumps(result, indent=2))
    print(f"{len(log)} streamed requests from {args.clients} clients, {len(failures)} failed")
    print(
        f"latency p50/p99 steady {result['steady']['p50_s']}/{result['steady']['p99_s']} s, "
        f"during swaps {result['during_swaps']['p50_s']}/{result['during_swaps']['p99_s']} s "
        f"(p99 ratio {result['during_swaps']['p99_s'] / max(1e-9, result['steady']['p99_s']):.2f}x)"
    )
    for swap in swaps:
        print(
            f"  -> {swap['to']}: promote call {swap['promote_call_s']} s, first answer by it after "
            f"{swap['swap_latency_s']} s"
        )


def register_random_adapter(settings, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from feedback.registry import AdapterRegistry
    from feedback.store import FeedbackStore

    with FeedbackStore(settings.store_url) as store:
        registry = AdapterRegistry(store, settings.adapters_dir)
        _, name = registry.next_name("bench")
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(settings.base_model_path, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(settings.adapters_dir / name)
        registry.register(
            name, method="sft", base_model=settings.base_model_id, parent=None, path=settings.adapters_dir / name
        )
    return name


if __name__ == "__main__":
    main()
