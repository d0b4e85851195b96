"""Serving systems with all of them up at once, measured in interleaved rounds: ratios that survive a noisy
machine.

    python benchmarks/bench_serving_pairs.py                     # demo model, ratchet's hf paths vs vLLM's server
    python benchmarks/bench_serving_pairs.py --models random-30m --systems naive,hf-served,vllm-served,vllm-server

`bench_serving.py` runs its systems one after another, minutes apart; on a shared machine, whose speed
drifts within minutes, that puts the drift into every ratio. Here every server is started first and
stays up, then each round sends the same burst (`--requests` chat requests of `--tokens` greedy tokens,
end-of-sequence ignored, at `--concurrency`; `--stream` for SSE; `--logprobs K` for each token's logprob and
its K likeliest alternatives) to each system in turn, rotating who goes
first. A ratio is taken within a round, so both sides of it ran within seconds of each other; the table
gives each system's median tokens/s and, against every other system, the median of the per-round ratios
and how many rounds it won.

Systems: `naive` (a loop of single-request `generate` in this process, 1/16 of the requests),
`hf-served` (ratchet, hf engine in its own process: the default), `hf-served-thread` (the engine in the
replica's process), `hf-served-one-loop` (the replica's handlers on Ray Serve's own event loop rather than
the second loop in a thread that is Serve's default), `vllm-served` (ratchet, vLLM engine), `vllm-server`
(vLLM's own OpenAI server),
`vllm-server-lora` (the same with LoRA enabled as ratchet's vLLM engine has it: 8 adapters of rank <= 64),
`hf-served-baseline` (`hf-served` from another checkout, `--baseline-tree`: e.g. `git worktree add
/tmp/base HEAD~1`, to measure a change against the code before it).
Each ratchet server is a `ratchet serve` process with its own local Ray; idle servers cost the others a little
CPU (Ray's own loops), the same in every round. Writes benchmarks/out/serving_pairs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import (
    OUT,
    benchmark_models,
    free_port,
    run_http,
    run_naive,
    vllm_installed,
    vllm_server_running,
    wait_healthy,
)

RATCHET = {
    "hf-served": {"RATCHET_ENGINE": "hf"},
    "hf-served-thread": {"RATCHET_ENGINE": "hf", "RATCHET_ENGINE_PROCESS": "false"},
    # the replica's handlers on Serve's own event loop instead of a second loop in a thread (Serve's default)
    "hf-served-one-loop": {"RATCHET_ENGINE": "hf", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
    "vllm-served": {"RATCHET_ENGINE": "vllm"},
}


@contextmanager
def ratchet_running(model_dir: Path, env: dict[str, str], tree: Path | None = None) -> Iterator[str]:
    """`ratchet serve` in a fresh workspace on `model_dir`, with the settings in `env`; yields its URL.
    With `tree` (another checkout of ratchet), that checkout's code serves instead of this one's."""
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        settings = {
            "RATCHET_HOME": home,
            "RATCHET_BASE_MODEL": str(model_dir),
            "RATCHET_PORT": str(port),
            "RATCHET_MAX_MODEL_LEN": "512",
            "RATCHET_MAX_CONCURRENT_REQUESTS": "64",
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        }
        log = (OUT / f"ratchet-{port}.log").open("w")
        code = {"PYTHONPATH": str(tree)} if tree else {}
        process = subprocess.Popen(
            [sys.executable, "-c", "from ratchet.cli import main; main()", "serve"],
            env={**os.environ, **settings, **env, **code},
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process, f"ratchet serve ({env})")
            yield url
        finally:
            process.terminate()  # SIGTERM: ratchet serve drains and shuts its Ray down
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()


def start(system: str, model_dir: Path, stack: ExitStack, args: argparse.Namespace) -> Callable[[], float]:
    """Start `system` (servers stay up until `stack` closes); returns what measures one round of it."""
    if system == "naive":  # in this process, a loop of single-request generate: fewer requests, same tokens each
        return lambda: run_naive(model_dir, max(4, args.requests // 16), args.tokens)["tokens_per_s"]
    if system in ("vllm-server", "vllm-server-lora"):
        url = stack.enter_context(vllm_server_running(model_dir, lora=system.endswith("-lora")))
    elif system == "hf-served-baseline":
        url = stack.enter_context(ratchet_running(model_dir, RATCHET["hf-served"], args.baseline_tree))
    else:
        url = stack.enter_context(ratchet_running(model_dir, RATCHET[system]))

    def burst(requests: int = args.requests, concurrency: int = args.concurrency) -> float:
        result = asyncio.run(run_http(url, "base", requests, args.tokens, [concurrency], args.stream, args.logprobs))
        return result[concurrency]["tokens_per_s"]

    burst(8, 8)  # warm-up: first requests pay for lazy set-up in every system
    return burst


def rounds(systems: dict[str, Callable[[], float]], count: int) -> list[dict[str, float]]:
    """`count` rounds; round r starts with system r (mod the number of systems). Tokens/s per system."""
    names = list(systems)
    measured = []
    for r in range(count):
        order = names[r % len(names) :] + names[: r % len(names)]
        result = {name: systems[name]() for name in order}
        print(f"  round {r + 1}: " + ", ".join(f"{n} {result[n]:.0f}" for n in names), file=sys.stderr, flush=True)
        measured.append({n: result[n] for n in names})
    return measured


def summary(measured: list[dict[str, float]]) -> dict:
    """Per system: median, min and max tokens/s, and against every other system the per-round ratios."""
    names = list(measured[0])
    out = {}
    for name in names:
        values = [m[name] for m in measured]
        versus = {}
        for other in names:
            if other != name:
                ratios = [m[name] / m[other] for m in measured]
                versus[other] = {
                    "median_ratio": round(statistics.median(ratios), 3),
                    "ratios": [round(x, 3) for x in ratios],
                    "rounds_won": sum(x > 1 for x in ratios),
                }
        out[name] = {
            "median_tokens_per_s": round(statistics.median(values), 1),
            "tokens_per_s": values,
            "versus": versus,
        }
    return out


def report(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    for model, systems in results.items():
        names = list(systems)
        table = Table(title=f"{model}: tokens/s over interleaved rounds; row ÷ column, median of the rounds (won)")
        for column in ("system", "median tokens/s (min-max)", *(f"÷ {n}" for n in names)):
            table.add_column(column)
        for name, row in systems.items():
            values = row["tokens_per_s"]
            cells = [f"{row['median_tokens_per_s']:.0f} ({min(values):.0f}-{max(values):.0f})"]
            for other in names:
                pair = row["versus"].get(other)
                won = f"{pair['rounds_won']}/{len(pair['ratios'])}" if pair else ""
                cells.append(f"{pair['median_ratio']:.2f}× ({won})" if pair else "")
            table.add_row(name, *cells)
        Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo")
    parser.add_argument("--systems", default="hf-served,hf-served-thread,vllm-server")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline-tree", type=Path, help="a checkout of ratchet for hf-served-baseline")
    parser.add_argument("--stream", action="store_true", help="SSE streams (each token its own event), not JSON")
    parser.add_argument("--logprobs", type=int, default=None, help="ask for logprobs with this many top tokens")
    args = parser.parse_args()
    systems = args.systems.split(",")
    known = ["naive", *RATCHET, "hf-served-baseline", "vllm-server", "vllm-server-lora"]
    unknown = [s for s in systems if s not in known]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {known}")
    if "hf-served-baseline" in systems and not (args.baseline_tree and (args.baseline_tree / "ratchet").is_dir()):
        parser.error("hf-served-baseline needs --baseline-tree, a checkout of ratchet")
    if not vllm_installed():
        systems = [s for s in systems if not s.startswith("vllm")]
    models = benchmark_models(args.models.split(","))
    results = {}
    for model in models:
        print(f"[{model}] starting {', '.join(systems)} ...", file=sys.stderr, flush=True)
        with ExitStack() as stack:
            measure = {name: start(name, models[model], stack, args) for name in systems}
            results[model] = summary(rounds(measure, args.rounds))
    report(results)
    (OUT / "serving_pairs.json").write_text(
        json.dumps({"benchmark": "bench_serving_pairs", "args": vars(args), "results": results}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
