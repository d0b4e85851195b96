"""Helpers the tests import by name (`from helpers import ...`): plain functions, not fixtures.

pytest puts tests/ on sys.path (tests/conftest.py is a rootdir-level conftest without a package), which
is what makes `helpers` importable from every test module.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from serving.deployment import free_port
from serving.engine import GenerationOutput, GenerationRequest, SamplingParams

__all__ = [
    "GREEDY",
    "QUESTIONS",
    "collect",
    "free_port",
    "make_lora_adapter",
    "register_test_adapter",
    "request",
    "stored_completion",
    "wait_until",
]

# Chat questions of many lengths, for the engine tests (tests/serving/conftest.py turns them into prompts).
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


def stored_completion(
    *,
    choices: int = 1,
    user: str | None = None,
    cid: str | None = None,
    model: str | None = "current",
    adapter: str = "base",
):
    """A Completion row as the serving log writes one (for store-level tests: record it, then rate it)."""
    import uuid

    from feedback.models import Completion

    return Completion(
        id=cid or f"chatcmpl-{uuid.uuid4().hex[:24]}",
        user=user,
        model=model,
        adapter=adapter,
        base_model="demo-tiny-v1",
        messages=[{"role": "user", "content": "hi"}],
        choices=[{"index": i, "text": f"answer {i}", "finish_reason": "stop"} for i in range(choices)],
    )


def request(prompt: list[int], params: SamplingParams = GREEDY, adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest(request_id=f"req-{next(_ids)}", prompt_ids=prompt, params=params, adapter=adapter)


async def collect(engine, req: GenerationRequest) -> tuple[list[int], str, list[GenerationOutput]]:
    """Run one request on an engine: its token ids, its text and its outputs."""
    outputs = [out async for out in engine.generate(req)]
    return [t for out in outputs for t in out.token_ids], "".join(out.text for out in outputs), outputs


async def wait_until(condition, what: str) -> None:
    for _ in range(2000):  # a hang guard only: the engine acts on a command within a step or two
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def make_lora_adapter(base_dir: Path, out_dir: Path, *, seed: int = 1, r: int = 8, **lora_kwargs) -> Path:
    """A LoRA adapter with random (non-zero) A and B: it answers differently from the base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora_kwargs = {"target_modules": "all-linear", **lora_kwargs}
    config = LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=False, **lora_kwargs)
    get_peft_model(base, config).save_pretrained(out_dir)
    return out_dir


def register_test_adapter(settings, *, seed: int = 1) -> str:
    from feedback.registry import AdapterRegistry
    from feedback.store import FeedbackStore

    with FeedbackStore(settings.store_url) as store:
        registry = AdapterRegistry(store, settings.adapters_dir)
        _, name = registry.next_name("test")
        make_lora_adapter(Path(settings.base_model_path), settings.adapters_dir / name, seed=seed)
        registry.register(
            name, method="sft", base_model=settings.base_model_id, parent=None, path=settings.adapters_dir / name
        )
    return name


JOB_TIMEOUT_SECONDS = 180


def wait_until_finished(client, job_id: str, timeout: float = JOB_TIMEOUT_SECONDS):
    """Poll a fine-tuning job through the openai SDK until it finishes; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish within {timeout:g} s (last status {job.status})")
