"""HFEngine: transformers + PEFT with continuous batching, the reference engine.

Contract (see `serving.engine`):
- One thread, the decode loop, owns the model. Everything that touches it (prefill, decode, loading and
  deleting adapters) runs there, because PEFT is not thread-safe. Callers talk to it through a command
  queue; outputs come back to each caller's event loop with `call_soon_threadsafe`.
- Continuous batching: every iteration 1) admits waiting requests (one batched prefill, which gives their
  first token), 2) runs one decode step for all running sequences together over a shared, left-padded KV
  cache, 3) emits each request's delta, 4) retires finished rows. A request that arrives while a long batch
  is decoding joins at the next step.
- Mixed adapters in one batch: each row names its adapter (`adapter_names=[...]`, "__base__" for none).
- Greedy output equals plain `model.generate(do_sample=False)` for the same prompt and adapter, alone or
  in any batch (tests/serving/test_hf_engine.py checks it). A seeded request samples the same text
  whatever else runs: each row has its own `torch.Generator`.
- Adapters: safetensors only, LoRA only, rank <= max_lora_rank, every target module and weight shape must
  fit the base model; at most `max_adapters` are loaded, the least recently used idle one is evicted first.
  A request for an adapter that is not loaded raises `AdapterNotLoadedError` (a KeyError) at once.
- `params.json_format`: JSON mode through xgrammar (`grammar.py`), when it is installed: each step masks
  the tokens that cannot continue the JSON; the end of sequence comes only once it is complete.
- `params.logprobs` (None or k >= 0): each output carries its tokens' log-softmax of the raw logits and the
  k most likely tokens (`hf_batch.token_logprobs`), computed only for the rows that asked.
- A request with `stream=False` (a JSON answer) gets its first token as usual, then everything else in its
  last output: fewer outputs to route and wake up for, in the replica and across the engine process.
- `abort(id)`, or closing / cancelling the `generate` iterator, takes the sequence out at the next step.
- Failures: an exception in one request's own bookkeeping (its grammar, detokenizer, stop matcher) ends that
  request alone, with the error; a failed forward pass or sampling step fails every request in the batch
  (the engine itself runs on).
- `torch_threads` is set in the decode thread; with OpenMP that is per thread, so the rest of the process
  keeps its own. 0 picks it by timing a decode step of `max_batch_size` rows at 1..`max_threads` threads
  (`threads.pick_threads`): one thread for the demo model, whose steps are too small to split, two for the
  30M benchmark model. `max_threads` defaults to this machine's CPUs; from settings, to them shared among
  the replicas (Ray alone would give a 1-CPU replica one thread whatever the model).
- On CPU with float32 weights, each Linear whose shape the packed GEMM runs faster (timed at start) gets an
  MKL-packed copy of its weight for decode steps of `max_batch_size // 2` to `max_batch_size` rows
  (`packed_linear.py`); the KV cache grows in place (`hf_batch.SlabLayer`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ratchet.settings import Settings
from serving.adapter_files import check_adapter_files, check_fits, module_shapes
from serving.engine import AdapterLoadError, AdapterNotLoadedError, GenerationOutput, GenerationRequest
from serving.engines.adapter_slots import AdapterSlots
from serving.engines.grammar import Grammars
from serving.engines.hf_batch import (
    KVBatch,
    Sequence,
    deliver,
    left_pad,
    new_cache,
    read_outputs,
    sample,
    token_logprobs,
)
from serving.engines.messages import Abort, AdapterOp, Load, Stop, Unload
from serving.engines.packed_linear import pack_linears
from serving.engines.threads import pick_threads

logger = logging.getLogger(__name__)
DTYPES = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_PREFILL_TOKENS = 8192  # padded prompt tokens per batched prefill, so a burst of long prompts is split


# The decode loop's queue carries these, and Abort and Stop (messages.py).
@dataclass(frozen=True)
class Add:
    seq: Sequence


@dataclass(frozen=True)
class Pending:
    op: AdapterOp
    future: Future  # resolved by the decode loop once the operation is done


Command = Add | Abort | Pending | Stop


class HFEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_batch_size: int = 32,
        max_adapters: int = 8,
        max_lora_rank: int = 64,
        max_model_len: int = 0,
        torch_threads: int = 0,
        max_threads: int = 0,
        packed_gemm: bool = True,
        trust_remote_code: bool = False,
        deliver: Callable[[list], list[Sequence]] = deliver,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.model_path, self.max_batch_size = str(model_path), max_batch_size
        self.max_lora_rank = max_lora_rank
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self._load_base = lambda: AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        ).eval()
        self._base = self._load_base()
        self._threads = torch_threads or pick_threads(self._base, max_batch_size, max_threads or _usable_cpus())
        logger.info("decode loop runs %d torch thread(s)%s", self._threads, "" if torch_threads else " (timed)")
        # Module shapes for the adapter checks are taken before packing and before PEFT wraps anything.
        self._module_shapes = module_shapes(self._base)
        self._pack_rows = max_batch_size if packed_gemm else 0
        self._pack()
        self._peft: Any = None  # the PeftModel around _base once an adapter is loaded
        own_length = getattr(self._base.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.context_length = min(max_model_len, own_length) if max_model_len else own_length
        self.eos_ids = _eos_ids(self.tokenizer, self._base.generation_config)
        self._grammars = Grammars(self.tokenizer, self._base.config.vocab_size)
        # State below belongs to the decode loop thread; `_listed` is its read-only snapshot for other threads.
        self._slots: AdapterSlots[str] = AdapterSlots(max_adapters)  # name -> path; in use while waiting or running
        self._unloading: dict[str, list[Future]] = {}  # adapter -> callers waiting for its unload
        self._listed: tuple[str, ...] = ()
        self._live: dict[str, Sequence] = {}  # request id -> every request not finished yet
        self._waiting: list[Sequence] = []
        self._batch: KVBatch | None = None
        self._outbox: list[tuple[Sequence, GenerationOutput | BaseException]] = []  # sent once per iteration
        self._deliver = deliver  # hands the outbox to the consumers; returns the sequences nobody listens to
        self._commands: queue.Queue[Command] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="hf-engine-decode", daemon=True)
        self._thread.start()

    def _pack(self) -> None:
        """Pack the base model's weights where that is faster, timed with the decode loop's thread count."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            count = pack_linears(self._base, self._pack_rows)
        finally:
            torch.set_num_threads(threads)
        logger.info("packed %d linear layers for decode steps of up to %d rows", count, self._pack_rows)

    @classmethod
    def from_settings(cls, settings: Settings) -> HFEngine:
        return cls(**engine_options(settings))

    # ---- the Engine interface (any thread / event loop) ----------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        if not self._thread.is_alive():
            raise RuntimeError("the engine is shut down")
        if request.adapter is not None and request.adapter not in self._listed:
            raise AdapterNotLoadedError(f"adapter {request.adapter!r} is not loaded; load it first")
        outputs: asyncio.Queue = asyncio.Queue()
        self.submit(request, asyncio.get_running_loop(), outputs)
        async with aclosing(read_outputs(outputs, lambda: self.cancel(request.request_id))) as items:
            async for item in items:
                yield item

    async def abort(self, request_id: str) -> None:
        self.cancel(request_id)

    async def load_adapter(self, name: str, path: str) -> None:
        await asyncio.wrap_future(self.call(Load(name, str(path))))

    async def unload_adapter(self, name: str) -> None:
        """Returns once the adapter is deleted; requests already running with it finish first."""
        await asyncio.wrap_future(self.call(Unload(name)))

    def adapters(self) -> list[str]:
        return list(self._listed)

    @property
    def num_requests(self) -> int:
        """Requests waiting or running: a snapshot, for metrics and tests."""
        return len(self._live)

    async def shutdown(self) -> None:
        self._commands.put(Stop())
        await asyncio.to_thread(self._thread.join)

    # ---- the same without an event loop (any thread): what `hf_process` drives the engine with ----------

    def submit(self, request: GenerationRequest, loop=None, outputs=None) -> None:
        """Start a request (ValueError at once if it cannot run); its outputs go to `outputs`, an
        asyncio.Queue of `loop`, or to whatever this engine's `deliver` does with them."""
        fmt = request.params.json_format
        constraint = None if fmt is None else self._grammars.constraint(fmt)
        seq = Sequence.start(request, self.tokenizer, self.context_length, loop, outputs, constraint)
        self._commands.put(Add(seq))

    def cancel(self, request_id: str) -> None:
        self._commands.put(Abort(request_id))

    def call(self, op: AdapterOp) -> Future:
        """Load (its files checked here first) or unload an adapter; the future resolves once the decode loop
        did it."""
        future: Future = Future()
        if isinstance(op, Load):
            try:
                config = check_adapter_files(op.name, Path(op.path), self.max_lora_rank)
                check_fits(op.name, Path(op.path), config, self._module_shapes, self.model_path)
            except Exception as error:
                future.set_exception(error)
                return future
        self._commands.put(Pending(op, future))
        return future

    # ---- the decode loop (its own thread: the only code that touches the model) -----------------------

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)  # with OpenMP this is per thread: the engine's, not the process's
        with torch.inference_mode():
            while self._handle_commands(block=not self._waiting and self._batch is None):
                try:
                    self._step()
                except Exception as error:  # a failed step fails its requests, not the engine
                    logger.exception("hf engine step failed")
                    for seq in list(self._live.values()):
                        self._fail(seq, error)
                    self._waiting, self._batch = [], None
                self._finish_unloads()
                self._flush_outbox()
        self._close()

    def _close(self) -> None:
        """After Stop: end every stream and answer every caller still waiting."""
        gone = RuntimeError("the engine shut down")
        for seq in list(self._live.values()):
            self._finish(seq, "abort")
        for future in [f for futures in self._unloading.values() for f in futures]:
            future.set_exception(gone)
        while not self._commands.empty():
            match self._commands.get():
                case Add(seq):
                    self._fail(seq, gone)
                case Pending(future=future) if future.set_running_or_notify_cancel():
                    future.set_exception(gone)
        self._flush_outbox()

    def _step(self) -> None:
        # 1) admit waiting requests: one batched prefill gives each its first token
        admitted = self._admit()
        if admitted:
            new, logits = self._prefill(admitted)
            self._advance(new.seqs, logits)
            self._flush_outbox()  # first tokens go out now, not after the decode step
            new.keep([i for i, s in enumerate(new.seqs) if s.finish_reason is None])
            if len(new) and self._batch is None:
                self._batch = new
            elif len(new):
                self._batch.extend(new)
        # 2) one decode step for every running sequence; 3) emit deltas (in _advance)
        if self._batch is not None and len(self._batch):
            logits = self._forward(*self._batch.decode_inputs(), self._batch.cache, self._batch.seqs)
            self._advance(self._batch.seqs, logits)
        # 4) retire finished (and aborted) rows
        if self._batch is not None:
            self._batch.keep([i for i, s in enumerate(self._batch.seqs) if s.finish_reason is None])
            if not len(self._batch):
                self._batch = None

    def _admit(self) -> list[Sequence]:
        room = self.max_batch_size - (len(self._batch) if self._batch else 0)
        admitted: list[Sequence] = []
        for seq in self._waiting[:room]:
            longest = max(len(s.request.prompt_ids) for s in [*admitted, seq])
            if admitted and longest * (len(admitted) + 1) > MAX_PREFILL_TOKENS:
                break
            admitted.append(seq)
            if seq.request.adapter:
                self._slots.touch(seq.request.adapter)
        self._waiting = self._waiting[len(admitted) :]
        return admitted

    def _prefill(self, seqs: list[Sequence]) -> tuple[KVBatch, torch.Tensor]:
        input_ids, mask, positions = left_pad([s.request.prompt_ids for s in seqs], pad_id=0)
        batch = KVBatch(seqs, new_cache(), mask)
        return batch, self._forward(input_ids, mask, positions, batch.cache, seqs)

    def _forward(self, input_ids, mask, positions, cache, seqs: list[Sequence]) -> torch.Tensor:
        """One forward pass; returns the float32 logits of each row's last position."""
        model, extra = self._base, {}
        if self._peft is not None:
            model, extra = self._peft, {"adapter_names": [s.adapter_name for s in seqs]}
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

    def _advance(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Sample each row's new token from its logits, append it, check stop conditions, and hand the delta
        (with the token's logprobs, where asked) to the consumer."""
        allowed = logits  # JSON-mode rows sample from a copy with their grammar's mask; logprobs stay raw
        constrained = [i for i, seq in enumerate(seqs) if seq.constraint is not None and seq.finish_reason is None]
        if constrained:
            allowed = logits.clone()
            for i in constrained:
                self._guarded(seqs[i], seqs[i].constraint.mask_, allowed[i])
        tokens = sample(allowed, seqs)
        for seq, token, logprob in zip(seqs, tokens, token_logprobs(logits, seqs, tokens), strict=True):
            if seq.finish_reason is None:  # not aborted while the step ran, nor failed above
                self._guarded(seq, self._append, seq, token, logprob)

    def _guarded(self, seq: Sequence, work: Callable, *args) -> None:
        """Run one request's own work; if it fails (its grammar, its detokenizer), that request ends alone."""
        try:
            work(*args)
        except Exception as error:
            if not isinstance(error, ValueError):  # a ValueError is the request's own fault: no stack needed
                logger.exception("request %s failed", seq.request.request_id)
            self._fail(seq, error)

    def _append(self, seq: Sequence, token: int, logprob: Any) -> None:
        seq.output_ids.append(token)
        if seq.constraint is not None:
            seq.constraint.accept(token)
        params = seq.request.params
        is_eos = (token in self.eos_ids and not params.ignore_eos) or bool(seq.constraint and seq.constraint.done)
        text, stopped = seq.stops.push("" if is_eos else seq.detokenizer.push(token))
        reason = "stop" if stopped or is_eos else "length" if len(seq.output_ids) >= seq.max_tokens else None
        if reason and not stopped:  # the end: flush what the detokenizer and the stop matcher held back
            tail, stopped = seq.stops.push(seq.detokenizer.flush())
            text += tail + ("" if stopped else seq.stops.flush())
            reason = "stop" if stopped else reason
        self._emit(seq, [token], text, reason, [logprob] if logprob else [])

    def _emit(
        self, seq: Sequence, token_ids: list[int], text: str, reason: str | None, logprobs: list | None = None
    ) -> None:
        held_ids, held_text, held_logprobs = seq.held
        logprobs = logprobs or []
        if reason is None and not seq.request.stream and len(seq.output_ids) > 1:
            held_ids += token_ids  # a JSON answer: after the first token, only the last output goes out
            held_text.append(text)
            held_logprobs += logprobs
            return
        if held_ids or held_text:
            token_ids, text, logprobs = held_ids + token_ids, "".join(held_text) + text, held_logprobs + logprobs
            seq.held = ([], [], [])
        if reason is not None:
            self._end(seq, reason)
        out = GenerationOutput(
            token_ids=token_ids,
            text=text,
            finish_reason=reason,
            prompt_tokens=len(seq.request.prompt_ids),
            completion_tokens=len(seq.output_ids),
            logprobs=None if seq.request.params.logprobs is None else logprobs,
        )
        self._outbox.append((seq, out))

    def _flush_outbox(self) -> None:
        for seq in self._deliver(self._outbox):
            if seq.finish_reason is None:  # nobody is listening any more: end it here
                self._end(seq, "abort")
        self._outbox = []

    # A request ends in one of two ways, both through _end's bookkeeping: `_finish` (its last output, with
    # what it held back and its finish reason) or `_fail` (its stream raises the error).

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.finish_reason is None:
            self._emit(seq, [], "", reason)

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        if seq.finish_reason is None:
            self._end(seq, "abort")
        self._outbox.append((seq, error))

    def _end(self, seq: Sequence, reason: str) -> None:
        """Bookkeeping of a finished request; its row leaves the batch at the end of the step."""
        seq.finish_reason = reason
        if self._live.get(seq.request.request_id) is not seq:
            return  # refused before it started: it holds nothing
        del self._live[seq.request.request_id]
        if seq.request.adapter:
            self._slots.release(seq.request.adapter)
        if seq in self._waiting:
            self._waiting.remove(seq)

    # ---- commands --------------------------------------------------------------------------------------

    def _handle_commands(self, block: bool) -> bool:
        """Run queued commands (waiting for one when idle); False once asked to stop."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            match command:
                case Stop():
                    return False
                case Add(seq):
                    self._add(seq)
                case Abort(request_id) if request_id in self._live:
                    self._finish(self._live[request_id], "abort")
                case Pending(op, future) if future.set_running_or_notify_cancel():  # else its caller gave up
                    try:
                        if isinstance(op, Load):
                            future.set_result(self._load(op.name, op.path))
                        else:
                            self._unload(op.name, future)  # resolved by _finish_unloads once idle
                    except Exception as error:
                        future.set_exception(error)

    def _add(self, seq: Sequence) -> None:
        adapter, request_id = seq.request.adapter, seq.request.request_id
        if request_id in self._live:
            return self._fail(seq, ValueError(f"request id {request_id!r} is already running"))
        try:
            if adapter is not None:
                self._slots.acquire(adapter)
        except AdapterNotLoadedError as error:
            return self._fail(seq, error)
        self._live[request_id] = seq
        self._waiting.append(seq)

    # ---- adapters (decode loop thread) ------------------------------------------------------------------

    def _load(self, name: str, path: str) -> None:
        victims = self._slots.make_room(name, lambda loaded: loaded == path)
        if victims is None:
            return  # already loaded from that path
        for victim in victims:
            self._delete(victim)
        from peft import PeftModel

        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, path, adapter_name=name).eval()
            else:
                self._peft.load_adapter(path, adapter_name=name)
        except Exception as error:
            self._recover_from_failed_load(name)
            raise AdapterLoadError(f"could not load adapter {name!r} from {path}: {error}") from error
        self._slots.add(name, path)
        self._publish()

    def _recover_from_failed_load(self, name: str) -> None:
        if self._peft is None:  # PEFT may have half-wrapped the base model: start again from the files
            self._base = self._load_base()
            self._pack()
        elif name in self._peft.peft_config:
            self._peft.delete_adapter(name)

    def _unload(self, name: str, future: Future) -> None:
        if name in self._unloading:  # a second caller for the same unload waits with the first
            self._unloading[name].append(future)
            return
        self._slots.begin_unload(name)
        self._unloading[name] = [future]
        self._publish()

    def _finish_unloads(self) -> None:
        """Delete each adapter being unloaded once no request uses it (or once an eviction took it)."""
        for name in [n for n in self._unloading if n not in self._slots or not self._slots.busy(n)]:
            if name in self._slots:
                self._delete(name)
            for future in self._unloading.pop(name):
                future.set_result(None)

    def _delete(self, name: str) -> None:
        if len(self._slots) == 1:  # PEFT cannot run without an adapter: unwrap back to the plain model
            self._base, self._peft = self._peft.unload(), None
        else:
            with warnings.catch_warnings():  # "active adapter deleted": we never use the active adapter
                warnings.simplefilter("ignore")
                self._peft.delete_adapter(name)
        self._slots.remove(name)
        self._publish()

    def _publish(self) -> None:
        """Refresh the snapshot other threads read: loaded adapters, less those being unloaded."""
        self._listed = self._slots.listed()


def engine_options(settings: Settings) -> dict[str, Any]:
    """HFEngine's keyword arguments from settings (plain values: they also travel to an engine process)."""
    return dict(
        model_path=settings.base_model_path,
        dtype="float32" if settings.dtype == "auto" else settings.dtype,
        max_batch_size=settings.max_batch_size,
        max_adapters=settings.max_adapters,
        max_lora_rank=settings.max_lora_rank,
        max_model_len=settings.max_model_len,
        torch_threads=settings.torch_threads,
        max_threads=max(1, _usable_cpus() // settings.replicas),
        packed_gemm=settings.packed_gemm,
        trust_remote_code=settings.trust_remote_code,
    )


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _eos_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured} if configured is not None else set()
    return ids
