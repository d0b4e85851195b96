"""The plain reference generator: one conversation at a time through transformers' `generate`.

`ratchet chat` answers in-process with it, and the batched engines are checked against it token for token
(greedy). It knows nothing of the store or the server. It imports torch and transformers, so nothing on
the path of `ratchet --help` may import this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_model(
    path: str | Path, adapter_dir: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model at `path` (a Hugging Face model dir or hub id), with the LoRA adapter at `adapter_dir`
    applied when given, in eval mode, and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval(), tokenizer


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> str:
    """The assistant's answer to `messages` (OpenAI-style role/content dicts), as text.

    Greedy when `temperature` is 0; otherwise sampled from the whole distribution (no top-k), with
    `seed` making the draw repeatable without touching the global random state.
    """
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    if temperature == 0:
        sampling = {"do_sample": False}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    accelerator = [] if model.device.type == "cpu" else [model.device]
    with torch.random.fork_rng(devices=accelerator, device_type=model.device.type), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        output = model.generate(**inputs, max_new_tokens=max_tokens, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
