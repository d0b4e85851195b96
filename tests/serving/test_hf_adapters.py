"""HFEngine's adapters: unknown ones refused at once, loading and unloading with least-recently-used eviction
(never of one in use), and the checks that refuse unsafe or unfit adapter files."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from serving.engine import AdapterBusyError, AdapterLoadError, GenerationRequest, SamplingParams
from serving.engines.hf import HFEngine

from helpers import collect, request, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(hf_engine):
    return hf_engine


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
