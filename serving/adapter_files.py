"""The checks every engine runs on an adapter folder before loading it: what must not be loaded, said plainly.

Safetensors only (a .bin pickle can run code), LoRA only, rank within the limit, and every target module
and LoRA weight shape must fit the base model: vLLM loads an adapter of another base model without a word
and answers garbage with it, and PEFT's own error is a shape mismatch deep in a stack trace.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from serving.engine import AdapterLoadError

Shapes = dict[str, tuple[int, int] | None]  # module name -> (in, out) features for Linear modules, else None


def module_shapes(model: torch.nn.Module) -> Shapes:
    return {
        name: (m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else None
        for name, m in model.named_modules()
    }


def check_adapter_files(name: str, path: Path, max_rank: int) -> dict[str, Any]:
    """Refuse what we cannot or must not load, with a message that says what to do; returns the config."""
    if not name or "." in name or name == "__base__":
        raise AdapterLoadError(f"adapter name {name!r} is not allowed (no dots, not empty, not __base__)")
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file():
        raise AdapterLoadError(f"adapter {name!r}: no adapter_config.json in {path}")
    if not weights.is_file():
        hint = " (.bin pickles are refused: re-save with safetensors)" if any(path.glob("*.bin")) else ""
        raise AdapterLoadError(f"adapter {name!r}: no adapter_model.safetensors in {path}{hint}")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise AdapterLoadError(f"adapter {name!r}: {config_file} is not valid JSON ({error})") from error
    if config.get("peft_type") != "LORA":
        raise AdapterLoadError(f"adapter {name!r} is {config.get('peft_type')}; only LoRA adapters are served")
    rank = max([config.get("r", 0), *(config.get("rank_pattern") or {}).values()])
    if rank > max_rank:
        raise AdapterLoadError(
            f"adapter {name!r} has LoRA rank {rank}, over max_lora_rank={max_rank}: "
            "retrain with a smaller r or raise RATCHET_MAX_LORA_RANK"
        )
    return config


def check_fits(name: str, path: Path, config: dict[str, Any], shapes: Shapes, model_path: str) -> None:
    """Refuse an adapter whose target modules or LoRA weight shapes do not fit this base model."""
    problem = _misfit(config.get("target_modules") or [], path / "adapter_model.safetensors", shapes)
    if problem:
        raise AdapterLoadError(
            f"adapter {name!r} (trained on {config.get('base_model_name_or_path')}) does not fit "
            f"{model_path}: {problem}; retrain it on this base model"
        )


def _misfit(targets: str | list[str], weights: Path, shapes: Shapes) -> str | None:
    """A target module missing from the base model, or a LoRA weight whose shape does not match its module."""
    from safetensors import safe_open

    names = list(shapes)
    if isinstance(targets, str) and targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
        return f"no module matches target_modules {targets!r}"
    for target in targets if isinstance(targets, list) else []:
        if not any(n == target or n.endswith("." + target) for n in names):
            return f"the base model has no module named {target!r}"
    with safe_open(str(weights), "pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118 (safe_open is not a dict)
            found = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
            if not found:
                continue
            if found[1] not in shapes:
                return f"the base model has no module {found[1]!r}"
            if shapes[found[1]]:  # shapes are checked for Linear modules
                (d_in, d_out), shape = shapes[found[1]], tensors.get_slice(key).get_shape()
                if shape[1 if found[2] == "A" else 0] != (d_in if found[2] == "A" else d_out):
                    return f"{found[1]} is {d_in}->{d_out} here, but lora_{found[2]} is {shape}"
    return None
