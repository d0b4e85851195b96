"""Serving throughput and latency, every system side by side in one run, on the same workload.

    python benchmarks/bench_serving.py                       # demo model and a 30M random Llama
    python benchmarks/bench_serving.py --models demo --requests 32

Workload: `--requests` chat requests of `--tokens` greedy tokens each (end-of-sequence ignored, so every
system generates exactly the same number of tokens), at concurrency 1, 8 and 32. Systems:

- `naive`         a loop of single-request `model.generate` (the baseline every ratio is against)
- `hf-engine`     ratchet's HFEngine called in-process (continuous batching, no HTTP)
- `hf-served`     the same engine through ratchet's Ray Serve app, HTTP and completion logging included
                  (Ray Serve's HAProxy ingress and the engine in a child process of the replica: the defaults)
- `hf-served-thread` the same, with the engine in the replica's own process (RATCHET_ENGINE_PROCESS=false)
- `hf-served-proxy` the same, through Ray Serve's Python proxy actor instead (RATCHET_INGRESS=proxy)
- `vllm-engine`   ratchet's VLLMEngine in-process            (only where vLLM is installed)
- `vllm-served`   ratchet on Ray Serve with the vLLM engine    (only where vLLM is installed)
- `vllm-server`   vLLM's own OpenAI server, the peer users would pick instead (only where vLLM is installed)
- `vllm-server-lora` the same with LoRA enabled as ratchet's vLLM engine has it (8 adapters, rank <= 64)

Prints one table (output tokens/s, × naive, p50/p99 request latency) and writes benchmarks/out/serving.json.
The script times itself; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_models import demo_model, random_30m_model  # noqa: F401 (other benchmarks import them from here)

OUT = Path(__file__).resolve().parent / "out"
PROMPT = "Tell me about tea."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(latencies: list[float], seconds: float, tokens: int) -> dict:
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "seconds": round(seconds, 2),
    }


# -- systems ---------------------------------------------------------------------------------------


def run_naive(model_dir: Path, requests: int, tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    latencies = []
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(requests):
            t0 = time.perf_counter()
            model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            latencies.append(time.perf_counter() - t0)
    return summarize(latencies, time.perf_counter() - start, requests * tokens)


async def _drive(one, requests: int, concurrency: int, tokens: int) -> dict:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def timed() -> None:
        async with semaphore:
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(timed() for _ in range(requests)))
    return summarize(latencies, time.perf_counter() - start, requests * tokens)


async def run_engine(engine_name: str, model_dir: Path, requests: int, tokens: int, levels: list[int]) -> dict:
    from transformers import AutoTokenizer

    from serving.engine import GenerationRequest, SamplingParams

    if engine_name == "hf":
        from serving.engines.hf import HFEngine

        engine = HFEngine(str(model_dir), max_batch_size=32)
    else:
        from serving.engines.vllm import VLLMEngine

        engine = VLLMEngine(str(model_dir), dtype="bfloat16", max_model_len=512)
        await engine.start()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    counter = iter(range(10**9))

    async def one() -> None:
        async for _ in engine.generate(GenerationRequest(f"b{next(counter)}", list(prompt), params)):
            pass

    try:
        await _drive(one, min(requests, 8), 8, tokens)  # warm-up
        return {c: await _drive(one, requests, c, tokens) for c in levels}
    finally:
        await engine.shutdown()


async def run_http(
    base_url: str,
    model: str,
    requests: int,
    tokens: int,
    levels: list[int],
    stream: bool = False,
    logprobs: int | None = None,
) -> dict:
    """Chat requests over HTTP; with `stream`, as SSE streams read to their `data: [DONE]`; with `logprobs`,
    each token's logprob and that many top tokens (`logprobs=true, top_logprobs=k`)."""
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    if logprobs is not None:
        body |= {"logprobs": True, "top_logprobs": logprobs}
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=httpx.Limits(max_connections=64)) as client:

        async def one() -> None:
            if not stream:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                return
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        return
            raise RuntimeError("a stream ended without data: [DONE]")

        await _drive(one, min(requests, 8), 8, tokens)  # warm-up
        return {c: await _drive(one, requests, c, tokens) for c in levels}


def served(engine_name: str, model_dir: Path, requests: int, tokens: int, levels: list[int], **overrides) -> dict:
    """ratchet's app on Ray Serve; `overrides` are settings (e.g. ingress="proxy")."""
    from deploy.server import start, stop
    from deploy.workspace import init_workspace
    from ratchet.settings import Settings

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            base_model=str(model_dir),
            engine=engine_name,
            port=free_port(),
            max_model_len=512,
            max_concurrent_requests=64,
            **overrides,
        )
        init_workspace(settings, progress=False)
        url = start(settings)
        try:
            return asyncio.run(run_http(url, "base", requests, tokens, levels))
        finally:
            stop(settings)


def vllm_server(model_dir: Path, requests: int, tokens: int, levels: list[int], lora: bool = False) -> dict:
    with vllm_server_running(model_dir, lora) as url:
        return asyncio.run(run_http(url, "base", requests, tokens, levels))


@contextmanager
def vllm_server_running(model_dir: Path, lora: bool = False) -> Iterator[str]:
    """vLLM's own OpenAI server on `model_dir` (bf16, eager, 512 context, 1 GiB KV cache); yields its URL.
    With `lora`, LoRA enabled as ratchet's vLLM engine runs it (8 adapters of rank <= 64)."""
    port = free_port()
    lora_args = ["--enable-lora", "--max-loras", "8", "--max-cpu-loras", "8", "--max-lora-rank", "64"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--dtype",
            "bfloat16",
            "--max-model-len",
            "512",
            "--enforce-eager",
            "--served-model-name",
            "base",
            *(lora_args if lora else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(OUT / "vllm-server.log").open("w"),
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},  # the same 1 GiB KV cache ratchet's engine gets
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, "vLLM's server")
        yield url
    finally:
        process.terminate()
        process.wait(60)


def wait_healthy(url: str, process: subprocess.Popen, what: str, seconds: float = 600) -> None:
    """Until GET {url}/health answers 200; fails if `process` exits first."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up")
        time.sleep(1)
    raise RuntimeError(f"{what} did not answer /health within {seconds:.0f} s")


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,random-30m")
    parser.add_argument(
        "--systems",
        default="naive,hf-engine,hf-served,hf-served-thread,hf-served-proxy,vllm-engine,vllm-served,vllm-server,"
        "vllm-server-lora",
    )
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    has_vllm = vllm_installed()
    systems = [s for s in args.systems.split(",") if has_vllm or not s.startswith("vllm")]
    models = benchmark_models(args.models.split(","))

    results: dict = {}
    for name, path in models.items():
        row: dict = {}
        for system in systems:
            print(f"[{name}] {system} ...", file=sys.stderr, flush=True)
            try:
                row[system] = run_system(system, path, args, levels)
            except Exception as error:  # one failing system must not lose the others' numbers
                print(f"[{name}] {system} failed: {error}", file=sys.stderr, flush=True)
                row[system] = {"error": str(error)}
        results[name] = row

    report(results, levels)
    OUT.mkdir(exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "vllm": has_vllm,
    }
    (OUT / "serving.json").write_text(
        json.dumps({"benchmark": "bench_serving", "args": vars(args), "machine": machine, "results": results}, indent=2)
    )


def vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # not installed, or broken: the vLLM systems are left out
        return False
    return True


def benchmark_models(names: list[str]) -> dict[str, Path]:
    """The named models ("demo", "random-30m"), built under benchmarks/out/models on first use."""
    root = OUT / "models"
    root.mkdir(parents=True, exist_ok=True)
    models = {"demo": demo_model(root)}
    if "random-30m" in names:
        models["random-30m"] = random_30m_model(root, models["demo"])
    return {name: path for name, path in models.items() if name in names}


def run_system(system: str, path: Path, args: argparse.Namespace, levels: list[int]) -> dict:
    if system == "naive":
        return run_naive(path, max(4, args.requests // 8), args.tokens)
    if system.endswith("-engine"):
        return asyncio.run(run_engine(system.split("-")[0], path, args.requests, args.tokens, levels))
    if system.endswith("-served-proxy"):
        return served(system.split("-")[0], path, args.requests, args.tokens, levels, ingress="proxy")
    if system == "hf-served-thread":
        return served("hf", path, args.requests, args.tokens, levels, engine_process=False)
    if system.endswith("-served"):
        return served(system.split("-")[0], path, args.requests, args.tokens, levels)
    if system in ("vllm-server", "vllm-server-lora"):
        return vllm_server(path, args.requests, args.tokens, levels, lora=system.endswith("-lora"))
    raise ValueError(f"unknown system {system}")


def report(results: dict, levels: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="serving: output tokens/s (× naive) and p50/p99 latency in s")
    table.add_column("model")
    table.add_column("system")
    for c in levels:
        table.add_column(f"c={c}", justify="right")
    for model, row in results.items():
        naive = row.get("naive", {}).get("tokens_per_s")
        for system, result in row.items():
            if "error" in result:
                cells = [f"failed: {result['error'][:40]}"] + [""] * (len(levels) - 1)
            elif system == "naive":
                cells = [f"{result['tokens_per_s']:.0f} (1.0×) {result['p50_s']}/{result['p99_s']}"] + [""] * (
                    len(levels) - 1
                )
            else:
                cells = []
                for c in levels:
                    r = result[c]
                    ratio = f" ({r['tokens_per_s'] / naive:.1f}×)" if naive else ""
                    cells.append(f"{r['tokens_per_s']:.0f}{ratio} {r['p50_s']}/{r['p99_s']}")
            table.add_row(model, system, *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
