"""Helpers the tests import by name (`from helpers import ...`): plain functions, not fixtures.

pytest puts tests/ on sys.path (tests/conftest.py is a rootdir-level conftest without a package), which
is what makes `helpers` importable from every test module.
"""

from __future__ import annotations

from pathlib import Path

from serving.deployment import free_port

__all__ = ["free_port", "make_lora_adapter", "register_test_adapter"]


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
