"""Fixtures the engine tests share: the demo model's tokenizer, chat prompts of `helpers.QUESTIONS`, plain
transformers `generate` as the reference, and one HFEngine with the three test adapters loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers import QUESTIONS


@pytest.fixture(scope="session")
def tokenizer(demo_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="session")
def prompts(tokenizer) -> list[list[int]]:
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


@pytest.fixture(scope="session")
def plain_generate(demo_model_dir: Path, lora_adapters: dict[str, Path]):
    """`plain_generate(prompt, adapter, max_tokens)`: the new tokens of float32 `model.generate(do_sample=False)`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

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


@pytest.fixture(scope="session")
def hf_engine(demo_model_dir: Path, lora_adapters: dict[str, Path]):
    """An HFEngine (one torch thread) with adapters ada, bob and cat loaded; tests leave it as they found it."""
    from serving.engines.hf import HFEngine

    engine = HFEngine(demo_model_dir, max_lora_rank=16, torch_threads=1)

    async def load_all():
        for name, path in lora_adapters.items():
            await engine.load_adapter(name, str(path))

    asyncio.run(load_all())
    yield engine
    asyncio.run(engine.shutdown())
