"""HFEngineProcess: the hf engine in a child process gives the in-process engine's outputs token for token,
carries errors across as their own classes, frees aborted slots, and never outlives either side.

The rest of the engine's behaviour (sampling, stops, batching rules) is HFEngine's, tested in
test_hf_engine.py; the served API tests run through this class, since it is what `ratchet serve` uses."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from serving.engine import AdapterLoadError, AdapterNotLoadedError, GenerationRequest, SamplingParams
from serving.engines.hf import HFEngine
from serving.engines.hf.process import HFEngineProcess

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_tokens=24, temperature=0)
LONG = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
QUESTIONS = ["Hi", "What is tea?", "Tell me about the ocean.", "Why is the sky blue?", "Trains?", "Music."]
_ids = itertools.count()


def request(prompt: list[int], params: SamplingParams = GREEDY, adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest(request_id=f"proc-{next(_ids)}", prompt_ids=prompt, params=params, adapter=adapter)


async def collect(engine, req: GenerationRequest) -> tuple[list[int], str]:
    outputs = [out async for out in engine.generate(req)]
    return [t for out in outputs for t in out.token_ids], "".join(out.text for out in outputs)


async def wait_until(condition, what: str) -> None:
    for _ in range(2000):  # a hang guard only: the child reports within a step or two
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def options(model_dir: Path, **extra) -> dict:
    return {"model_path": str(model_dir), "max_lora_rank": 16, "torch_threads": 1, **extra}


@pytest.fixture(scope="module")
def prompts(demo_model_dir: Path) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    texts = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    return [tok.encode(text, add_special_tokens=False) for text in texts]


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path, lora_adapters: dict[str, Path]):
    engine = HFEngineProcess(options(demo_model_dir))

    async def start():
        await engine.start()
        for name in ("ada", "bob"):
            await engine.load_adapter(name, str(lora_adapters[name]))

    asyncio.run(start())
    yield engine
    asyncio.run(engine.shutdown())


def test_concurrent_mixed_adapters_equal_the_in_process_engine(engine, demo_model_dir, lora_adapters, prompts):
    jobs = [(prompt, [None, "ada", "bob"][i % 3]) for i, prompt in enumerate(prompts)]

    async def all_at_once(eng):
        return await asyncio.gather(*(collect(eng, request(p, adapter=a)) for p, a in jobs))

    reference = HFEngine(demo_model_dir, max_lora_rank=16, torch_threads=1)

    async def in_process():
        for name in ("ada", "bob"):
            await reference.load_adapter(name, str(lora_adapters[name]))
        try:
            return await all_at_once(reference)
        finally:
            await reference.shutdown()

    expected = asyncio.run(in_process())
    assert asyncio.run(all_at_once(engine)) == expected
    assert len({tuple(ids) for ids, _ in expected}) == len(jobs), "the jobs should answer differently"
    assert engine.context_length == reference.context_length and engine.num_requests == 0


def test_errors_cross_the_process_as_their_own_classes(engine, prompts, make_adapter, tmp_path):
    async def first(req):
        return await anext(engine.generate(req))

    with pytest.raises(ValueError, match="this model takes 1 to"):
        asyncio.run(first(request(list(range(5, 5 + engine.context_length)))))
    with pytest.raises(AdapterNotLoadedError, match="not-loaded"):
        asyncio.run(first(request(prompts[0], adapter="not-loaded")))
    with pytest.raises(AdapterNotLoadedError, match="ghost"):
        asyncio.run(engine.unload_adapter("ghost"))
    wide = make_adapter(tmp_path / "wide", seed=9, r=32)  # over max_lora_rank=16: refused in the child
    with pytest.raises(AdapterLoadError, match="rank"):
        asyncio.run(engine.load_adapter("wide", str(wide)))
    assert engine.adapters() == ["ada", "bob"] and engine.alive
    ids, _ = asyncio.run(collect(engine, request(prompts[1])))  # and it still serves
    assert ids


def test_load_and_unload_update_the_adapter_list(engine, lora_adapters, prompts):
    async def scenario():
        await engine.load_adapter("cat", str(lora_adapters["cat"]))
        listed = engine.adapters()
        with_cat = await collect(engine, request(prompts[2], adapter="cat"))
        await engine.unload_adapter("cat")
        return listed, with_cat

    listed, (cat_ids, _) = asyncio.run(scenario())
    assert listed == ["ada", "bob", "cat"] and engine.adapters() == ["ada", "bob"]
    assert cat_ids != asyncio.run(collect(engine, request(prompts[2])))[0]


def test_closing_the_stream_or_abort_frees_the_slot(engine, prompts):
    async def close_it():
        stream = engine.generate(request(prompts[3], LONG))
        await anext(stream)
        await stream.aclose()  # what a client disconnect does
        await wait_until(lambda: engine.num_requests == 0, "the child holds no request")

    async def abort_it():
        req = request(prompts[4], LONG, "ada")
        outputs = []
        async for out in engine.generate(req):
            outputs.append(out)
            if len(outputs) == 2:
                await engine.abort(req.request_id)
        return outputs

    asyncio.run(close_it())
    outputs = asyncio.run(abort_it())
    assert outputs[-1].finish_reason == "abort" and outputs[-1].completion_tokens < LONG.max_tokens
    asyncio.run(wait_until(lambda: engine.num_requests == 0, "the child holds no request"))


def test_a_dead_engine_process_fails_its_streams_and_refuses_new_ones(demo_model_dir, prompts):
    engine = HFEngineProcess(options(demo_model_dir))

    async def scenario():
        await engine.start()
        stream = engine.generate(request(prompts[0], LONG))
        await anext(stream)
        os.kill(engine._process.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="engine process exited"):
            async for _ in stream:
                pass
        assert not engine.alive
        with pytest.raises(RuntimeError, match="engine process exited"):
            await anext(engine.generate(request(prompts[1])))
        await engine.shutdown()

    asyncio.run(scenario())


def test_the_engine_process_exits_when_its_parent_is_killed(demo_model_dir, tmp_path):
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from serving.engines.hf.process import HFEngineProcess
        engine = HFEngineProcess({options(demo_model_dir)!r})
        asyncio.run(engine.start())
        print(engine._process.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _running(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60  # a hang guard: it exits as soon as it reads the end of its socket
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), "the engine process outlived its parent"
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan is reaped by init, or waits as a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
