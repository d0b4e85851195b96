"""Hot-swap under load: how long a promotion takes to reach users, and what it does to latency.

    python benchmarks/bench_swap.py                    # 8 streaming clients, 3 rounds
    python benchmarks/bench_swap.py --clients 16 --rounds 5

A real ratchet server (hf engine, demo model, Ray Serve, `--replicas` of it) with freshly registered LoRA
adapters; `--clients` threads stream chat completions of `current` without pause through the official
`openai` SDK. An adapter is current from the start, so the steady window and the changes both run LoRA
adapters. After the steady window, each round makes three changes through the admin API, seconds apart:
- cold: `POST /admin/promote` of an adapter this replica never loaded (load, sha256, smoke generation);
- canary: `POST /admin/canary` of a second new adapter at half the traffic (it is loaded and checked here);
- warm: `POST /admin/promote` of that canary's adapter, already loaded and checked.
Measured, side by side in this one run:
- the promote call's own time, warm and cold, and within it how long the replicas took to follow;
- follow: from the call's return to the first token of the new adapter in a request that started after it;
- stale: requests that started after a promote call returned but were answered by another adapter (the
  goal is none: a request resolves its adapter when it starts);
- request latency p50/p99 in steady state vs in the window after each change, and failed requests.
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

SWAP_WINDOW_S = 4.0


def stream_clients(url: str, prompt: str, clients: int, stop: threading.Event, log: list, failures: list) -> list:
    """Each client streams without pause; `log` gets (started, first token, finished, model) per request."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def run() -> None:
        while not stop.is_set():
            started, first, model = time.monotonic(), None, None
            try:
                stream = client.chat.completions.create(
                    model="current",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=32,
                    temperature=0,
                    stream=True,
                )
                for chunk in stream:
                    model = model or chunk.model
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.monotonic()
                log.append((started, first, time.monotonic(), model))
            except Exception as error:  # counted: a swap must fail nothing
                failures.append(repr(error))

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def latencies(log: list, start: float, end: float) -> list[float]:
    return [finish - begin for begin, _, finish, _ in log if start <= begin < end]


def judge(change: dict, log: list) -> dict:
    """Follow time and stale answers of one change, from the requests that started after its call returned."""
    returned, target = change.pop("returned"), change["to"]
    after = [(begin, first, model) for begin, first, _, model in log if begin >= returned]
    if change["kind"] != "canary":
        firsts = [first for begin, first, model in after if model == target and first is not None]
        change["follow_s"] = round(min(firsts) - returned, 3) if firsts else None
        change["stale"] = sum(1 for begin, _, model in after if begin < returned + SWAP_WINDOW_S and model != target)
    return change


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=1)
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
            keep_adapters=100,
            replicas=args.replicas,
            replica_cpus=1.0 / args.replicas,
            torch_threads=max(1, 2 // args.replicas),
        )
        init_workspace(settings, progress=False)
        first, *names = [register_random_adapter(settings, seed) for seed in range(2 * args.rounds + 1)]
        url = start(settings)
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {read_admin_key(settings)}"}, timeout=120)
        log: list = []
        failures: list = []
        halt = threading.Event()
        threads = stream_clients(url, corpus.prompts(corpus.TOPICS[0])[0], args.clients, halt, log, failures)
        changes: list[dict] = []

        def change(kind: str, path: str, body: dict) -> None:
            began = time.monotonic()
            reply = admin.post(path, json={**body, "force": True})
            returned = time.monotonic()
            reply.raise_for_status()
            follow = reply.json()["replicas"]
            changes.append(
                {
                    "kind": kind,
                    "to": body["adapter"],
                    "call_s": round(returned - began, 3),
                    "replicas_follow_s": follow["seconds"],
                    "lagging": follow["lagging"],
                    "returned": returned,
                    "window": (began, began + SWAP_WINDOW_S),
                }
            )
            time.sleep(SWAP_WINDOW_S)

        try:
            admin.post("/admin/promote", json={"adapter": first, "force": True}).raise_for_status()
            time.sleep(2)  # warm up
            steady_from = time.monotonic()
            time.sleep(args.steady_seconds)
            steady_window = (steady_from, time.monotonic())
            for i in range(args.rounds):
                cold, warm = names[2 * i], names[2 * i + 1]
                change("cold", "/admin/promote", {"adapter": cold})
                change("canary", "/admin/canary", {"adapter": warm, "fraction": 0.5})
                change("warm", "/admin/promote", {"adapter": warm})
        finally:
            halt.set()
            for thread in threads:
                thread.join(timeout=120)
            admin.close()
            stop(settings)
    if failures or not log:
        print(f"{len(failures)} failed requests, e.g. {failures[:3]}", file=sys.stderr)
    # requests are judged by when they STARTED, once all have finished
    steady = latencies(log, *steady_window)
    during = [x for c in changes for x in latencies(log, *c.pop("window"))]
    changes = [judge(c, log) for c in changes]
    result = {
        "clients": args.clients,
        "replicas": args.replicas,
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
        "changes": changes,
    }
    (OUT / "swap.json").write_text(json.dumps(result, indent=2))
    print(f"{len(log)} streamed requests from {args.clients} clients, {args.replicas} replicas, {len(failures)} failed")
    print(
        f"latency p50/p99 steady {result['steady']['p50_s']}/{result['steady']['p99_s']} s, "
        f"during changes {result['during_swaps']['p50_s']}/{result['during_swaps']['p99_s']} s "
        f"(p99 ratio {result['during_swaps']['p99_s'] / max(1e-9, result['steady']['p99_s']):.2f}x)"
    )
    for c in changes:
        tail = "" if c["kind"] == "canary" else f", first token by it {c['follow_s']} s later, {c['stale']} stale"
        followed = f"replicas followed in {c['replicas_follow_s']} s"
        print(f"  {c['kind']:>6} -> {c['to']}: call {c['call_s']} s ({followed}){tail}")


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
