"""Every benchmark, one after another, and one table of the ratios they measured side by side.

    python benchmarks/run_all.py                 # quick sizes
    python benchmarks/run_all.py --full          # each benchmark's own defaults (longer)
    python benchmarks/run_all.py --only serving,swap

Each benchmark runs as its own process (they start servers and Ray clusters of their own), prints its own
table, and writes JSON to benchmarks/out/; this script then reads those files and prints the summary:
each line is a ratio of two systems measured in the SAME run, so it means something on a noisy machine.
Writes benchmarks/out/summary.json and summary.md (the README's performance table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"

# name -> (script, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "ratings": ("bench_ratings.py", ["--n", "500"]),
    "feedback": ("bench_feedback.py", ["--ratings", "1000"]),
    "decode": ("bench_decode_step.py", ["--repeats", "2"]),
    "serving": ("bench_serving.py", ["--models", "demo", "--requests", "32"]),
    "pairs": ("bench_serving_pairs.py", ["--rounds", "4"]),
    "swap": ("bench_swap.py", ["--rounds", "2", "--steady-seconds", "8"]),
    "training": ("bench_training.py", ["--repeats", "1"]),
    "load": ("bench_load.py", ["--users", "8,64", "--seconds", "15"]),
    "loop": ("bench_loop.py", ["--noise", "0,0.1", "--ratings", "240"]),
}


def _read(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _serving_rows(data: dict) -> list[tuple[str, str]]:
    rows = []
    for model, systems in data["results"].items():
        naive = systems.get("naive", {}).get("tokens_per_s")
        for level in ("1", "8", "32"):
            served = systems.get("hf-served", {}).get(level, {})
            if naive and served.get("tokens_per_s"):
                rows.append(
                    (
                        f"serving {model}, c={level}: ratchet (hf, Ray Serve + logging) vs naive generate loop",
                        f"{served['tokens_per_s'] / naive:.1f}x",
                    )
                )
        for served, raw, what in (("hf-served", "hf-engine", "hf"), ("vllm-served", "vllm-engine", "vllm")):
            a, b = systems.get(served, {}).get("32", {}), systems.get(raw, {}).get("32", {})
            if a.get("tokens_per_s") and b.get("tokens_per_s"):
                rows.append(
                    (
                        f"serving {model}, c=32: Ray Serve + HTTP + logging overhead ({what}: served / in-process)",
                        f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x",
                    )
                )
        for peer, what in (("vllm-server", "vLLM's own OpenAI server"), ("vllm-server-lora", "it with LoRA on")):
            a, b = systems.get("vllm-served", {}).get("32", {}), systems.get(peer, {}).get("32", {})
            if a.get("tokens_per_s") and b.get("tokens_per_s"):
                rows.append(
                    (
                        f"serving {model}, c=32: ratchet's vLLM path vs {what}",
                        f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x",
                    )
                )
    return rows


def _swap_rows(data: dict) -> list[tuple[str, str]]:
    ratio = data["during_swaps"]["p99_s"] / max(1e-9, data["steady"]["p99_s"])
    where = f"{data['clients']} streaming clients, {data['replicas']} replica(s)"
    rows = [(f"hot-swap under {where}: p99 during changes vs steady", f"{ratio:.2f}x")]
    for kind in ("warm", "cold"):
        changes = [c for c in data["changes"] if c["kind"] == kind]
        if changes:
            worst = max(c["call_s"] for c in changes)
            rows.append((f"hot-swap: {kind} promote call, worst of {len(changes)}", f"{worst:.2f} s"))
    promotes = [c for c in data["changes"] if c["kind"] != "canary"]
    stale = sum(c["stale"] for c in promotes)
    rows.append(
        (
            f"hot-swap: requests started after a promote returned but answered by another adapter; "
            f"failed requests {data['failed']}/{data['requests']}",
            f"{stale}",
        )
    )
    return rows


def _pairs_rows(data: dict) -> list[tuple[str, str]]:
    rows = []
    for model, systems in data["results"].items():
        for name, row in systems.items():
            for other, pair in row["versus"].items():
                if other in ("vllm-server", "naive") and not name.startswith("vllm-server"):
                    what = f"serving {model}, c={data['args']['concurrency']}, interleaved: {name} vs {other}"
                    won = f"{pair['rounds_won']} of {len(pair['ratios'])} rounds"
                    rows.append((f"{what} ({won})", f"{pair['median_ratio']:.2f}x"))
    return rows


def summary_rows() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if data := _read("ratings"):
        for backend, result in data["results"].items():
            if result:
                rows.append((f"ratings stored/s, {backend}: batched vs one commit each", f"{result['ratio']:.0f}x"))
    if data := _read("feedback"):
        for backend, result in data["results"].items():
            for level, row in result["levels"].items():
                group, single = (statistics.median(row[f"{mode}_per_s"]) for mode in ("group", "single"))
                what = f"ratings acknowledged/s over HTTP, {backend}, c={level}: group commit {group:.0f}/s"
                rows.append((f"{what} vs one commit each {single:.0f}/s", f"{row['group_vs_single']:.2f}x"))
    if data := _read("decode_step"):
        for model, variants in data["results"].items():
            for count in ("1", "32"):
                if cell := variants["slab+packed"].get(count):
                    what = f"decode step {model}, {count} row(s): in-place KV cache + packed GEMM vs transformers"
                    rows.append((what, f"{cell['vs_transformers']:.2f}x"))
    if data := _read("serving"):
        rows += _serving_rows(data)
    if data := _read("serving_pairs"):
        rows += _pairs_rows(data)
    if data := _read("swap"):
        rows += _swap_rows(data)
    if data := _read("training"):
        for method, result in data["results"].items():
            ratio = result["ratchet_over"]["plain"]["loop_tokens_per_cpu_s"]["median"]
            tokens = result["median"]["ratchet"]["loop_tokens_per_cpu_s"]
            rows.append(
                (f"training {method}: ratchet (TRL) vs a plain PEFT loop, tokens/CPU-s ({tokens:.0f})", f"{ratio:.2f}x")
            )
    if data := _read("load"):
        for level in data["levels"]:
            rows.append(
                (
                    f"load, {level['users']} locust users: requests shed with 429/503 (failures {level['failures']})",
                    f"{level['shed_rate']:.0%}",
                )
            )
    if data := _read("loop"):
        for run in data["runs"]:
            rows.append(
                (
                    f"loop, noise {run['noise']:.0%}: ratings until 80 % of a batch liked ({run['summary']})",
                    str(run["ratings_to_80"]),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--full", action="store_true", help="each benchmark's own default sizes")
    parser.add_argument("--summary-only", action="store_true", help="print the table from existing JSON")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    timings = {}
    if not args.summary_only:
        for name in args.only.split(","):
            script, quick = BENCHMARKS[name]
            command = [sys.executable, str(HERE / script), *([] if args.full else quick)]
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            started = time.monotonic()
            code = subprocess.call(command, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
            timings[name] = {"seconds": round(time.monotonic() - started, 1), "exit": code}
            if code != 0:
                print(f"== {name} failed with exit code {code}; the summary uses its older JSON, if any", flush=True)
    rows = summary_rows()
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}, Python {platform.python_version()}"
    lines = ["| measured side by side in one run | ratio |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]
    (OUT / "summary.md").write_text(f"Machine: {machine}\n\n" + "\n".join(lines) + "\n")
    (OUT / "summary.json").write_text(json.dumps({"machine": machine, "timings": timings, "rows": rows}, indent=2))
    print(f"\nMachine: {machine}\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
