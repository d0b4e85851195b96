"""The models the benchmarks run: the demo model (built once under the benchmark's folder) and a ~30M-parameter
Llama of random weights with the demo model's tokenizer, big enough that compute dominates a decode step."""

from __future__ import annotations

import shutil
from pathlib import Path


def demo_model(root: Path) -> Path:
    from retrain.demo.build import build_demo_model, read_build_info

    path = root / "demo"
    if read_build_info(path) is None:
        build_demo_model(path, steps=100, progress=True)
    return path


def random_30m_model(root: Path, tokenizer_from: Path) -> Path:
    """A ~30M-parameter Llama of random weights (hidden 512, 8 layers, 8 heads of 64): compute dominates."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = root / "random-30m"
    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tokenizer_from / name).exists():  # the demo model's tokenizer files, byte for byte
            shutil.copy(tokenizer_from / name, path / name)
    return path
