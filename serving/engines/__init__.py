"""Engine implementations and the factory that picks one from settings (RATCHET_ENGINE)."""

from __future__ import annotations

from ratchet.settings import Settings
from serving.engine import Engine


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. a CUDA torchvision beside CPU torch) counts as absent
        return False
    return True


def resolve_engine_name(settings: Settings) -> str:
    """hf or vllm: `auto` means vLLM when CUDA and vLLM are both present, else hf."""
    if settings.engine != "auto":
        return settings.engine
    import torch

    return "vllm" if torch.cuda.is_available() and vllm_available() else "hf"


def create_engine(settings: Settings) -> Engine:
    name = resolve_engine_name(settings)
    if name == "vllm":
        from serving.engines.vllm import VLLMEngine

        return VLLMEngine.from_settings(settings)
    if settings.engine_process:
        from serving.engines.hf.process import HFEngineProcess

        return HFEngineProcess.from_settings(settings)
    from serving.engines.hf import HFEngine

    return HFEngine.from_settings(settings)
