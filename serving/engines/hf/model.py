"""LoraModel: the base model and its PEFT wrapper, as the decode loop uses them.

Only the decode thread calls it (PEFT is not thread-safe). It owns what touches torch and PEFT directly:
loading the base model, timing its thread count, packing its weights, one forward pass over a batch whose
rows may each name an adapter, and adding and deleting adapters. Which adapters to hold is the engine's
business (`AdapterSlots`); this class does what it is told.

- `torch_threads` is set in the decode thread; with OpenMP that is per thread, so the rest of the process
  keeps its own. 0 picks it by timing a decode step of `max_batch_size` rows at 1..`max_threads` threads
  (`threads.pick_threads`): one thread for a model whose steps are too small to split (the demo model),
  more for one whose steps split well. `max_threads` defaults to this machine's CPUs; from settings, to
  them shared among the replicas (Ray alone would give a 1-CPU replica one thread whatever the model).
- On CPU with float32 weights, each Linear whose shape the packed GEMM runs faster (timed at start) gets an
  MKL-packed copy of its weight for decode steps of `max_batch_size // 2` to `max_batch_size` rows
  (`packed_linear.py`).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from serving.adapter_files import module_shapes
from serving.engine import AdapterLoadError
from serving.engines.hf.packed_linear import pack_linears
from serving.engines.hf.threads import pick_threads

logger = logging.getLogger(__name__)
DTYPES = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoraModel:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str,
        trust_remote_code: bool,
        max_batch_size: int,
        torch_threads: int,
        max_threads: int,
        packed_gemm: bool,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.path = model_path
        self._load_base = lambda: AutoModelForCausalLM.from_pretrained(
            model_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        ).eval()
        self.base = self._load_base()
        self.threads = torch_threads or pick_threads(self.base, max_batch_size, max_threads or usable_cpus())
        logger.info("decode loop runs %d torch thread(s)%s", self.threads, "" if torch_threads else " (timed)")
        # Module shapes for the adapter checks are taken before packing and before PEFT wraps anything.
        self.module_shapes = module_shapes(self.base)
        self._pack_rows = max_batch_size if packed_gemm else 0
        self._pack()
        self.peft: Any = None  # the PeftModel around `base` once an adapter is loaded

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def generation_config(self) -> Any:
        return self.base.generation_config

    def forward(self, input_ids, mask, positions, cache, adapter_names: list[str]) -> torch.Tensor:
        """One forward pass; returns the float32 logits of each row's last position. `adapter_names` names
        each row's adapter, PEFT's "__base__" for none (a mixed batch)."""
        model, extra = self.base, {}
        if self.peft is not None:
            model, extra = self.peft, {"adapter_names": adapter_names}
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[:, -1, :].float()

    def add_adapter(self, name: str, path: str) -> None:
        """Load a checked adapter; AdapterLoadError (with the model as it was) when PEFT cannot."""
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name).eval()
            else:
                self.peft.load_adapter(path, adapter_name=name)
        except Exception as error:
            self._recover_from_failed_load(name)
            raise AdapterLoadError(f"could not load adapter {name!r} from {path}: {error}") from error

    def delete_adapter(self, name: str) -> None:
        if len(self.peft.peft_config) == 1:  # PEFT cannot run without an adapter: unwrap back to the plain model
            self.base, self.peft = self.peft.unload(), None
        else:
            with warnings.catch_warnings():  # "active adapter deleted": we never use the active adapter
                warnings.simplefilter("ignore")
                self.peft.delete_adapter(name)

    def _recover_from_failed_load(self, name: str) -> None:
        if self.peft is None:  # PEFT may have half-wrapped the base model: start again from the files
            self.base = self._load_base()
            self._pack()
        elif name in self.peft.peft_config:
            self.peft.delete_adapter(name)

    def _pack(self) -> None:
        """Pack the base model's weights where that is faster, timed with the decode loop's thread count."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            count = pack_linears(self.base, self._pack_rows)
        finally:
            torch.set_num_threads(threads)
        logger.info("packed %d linear layers for decode steps of up to %d rows", count, self._pack_rows)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def eos_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    """The token ids that end a sequence: the tokenizer's end of sequence and the model's own."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured} if configured is not None else set()
    return ids
