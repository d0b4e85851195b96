"""HFEngine: transformers + PEFT with continuous batching, the reference engine.

Contract (see `serving.engine`):
- One thread, the decode loop, owns the model. Everything that touches it (prefill, decode, loading and
  deleting adapters) runs there, because PEFT is not thread-safe. Callers talk to it through a command
  queue; outputs come back to each caller's event loop with `call_soon_threadsafe`.
- Continuous batching: every iteration 1) admits waiting requests (one batched prefill, which gives their
  first token), 2) runs one decode step for all running sequences together over a shared, left-padded KV
  cache, 3) emits each request's delta, 4) retires finished rows. A request that arrives while a long batch
  is decoding joins at the next step.
- Greedy output equals plain `model.generate(do_sample=False)` for the same prompt and adapter, alone or
  in any batch (tests/serving/test_hf_engine.py checks it); a seeded request samples the same text
  whatever else runs (each row has its own `torch.Generator`).
- Adapters, mixed in one batch (each row names its own): safetensors LoRA only, rank <= max_lora_rank,
  fitting the base model; `AdapterSlots` keeps at most `max_adapters`. A request for an adapter that is
  not loaded raises `AdapterNotLoadedError` (a KeyError) at once.
- `params.json_format`: JSON mode through xgrammar (`grammar.py`), when it is installed: each step masks
  the tokens that cannot continue the JSON; the end of sequence comes only once it is complete.
- `params.logprobs` (None or k >= 0): each output carries its tokens' log-softmax of the raw logits and the
  k most likely tokens (`batch.token_logprobs`), computed only for the rows that asked.
- A request with `stream=False` (a JSON answer) gets its first token as usual, then everything else in its
  last output: fewer outputs to route and wake up for, in the replica and across the engine process.
- `abort(id)`, or closing / cancelling the `generate` iterator, takes the sequence out at the next step.
- Failures: an exception in one request's own bookkeeping (its grammar, detokenizer, stop matcher) ends that
  request alone, with the error; a failed forward pass or sampling step fails every request in the batch
  (the engine itself runs on).
- The model side (thread count, packed weights, PEFT) is `model.py`; the KV cache grows in place
  (`batch.SlabLayer`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import aclosing
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from ratchet.settings import Settings
from serving.adapter_files import check_adapter_files, check_fits
from serving.engine import AdapterNotLoadedError, GenerationOutput, GenerationRequest
from serving.engines.adapter_slots import AdapterSlots
from serving.engines.grammar import Grammars
from serving.engines.hf.batch import (
    KVBatch,
    deliver,
    left_pad,
    new_cache,
    read_outputs,
    sample,
    token_logprobs,
)
from serving.engines.hf.messages import Abort, AdapterOp, Add, Command, Load, Pending, Stop, Unload
from serving.engines.hf.model import LoraModel, eos_ids, usable_cpus
from serving.engines.hf.sequence import Delta, Sequence

logger = logging.getLogger(__name__)
MAX_PREFILL_TOKENS = 8192  # padded prompt tokens per batched prefill, so a burst of long prompts is split


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
        self.model_path, self.max_batch_size = str(model_path), max_batch_size
        self.max_lora_rank = max_lora_rank
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self._model = LoraModel(
            self.model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_batch_size=max_batch_size,
            torch_threads=torch_threads,
            max_threads=max_threads,
            packed_gemm=packed_gemm,
        )
        own_length = getattr(self._model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.context_length = min(max_model_len, own_length) if max_model_len else own_length
        self.eos_ids = eos_ids(self.tokenizer, self._model.generation_config)
        self._grammars = Grammars(self.tokenizer, self._model.config.vocab_size)
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
    def num_requests(self) -> int:  # requests waiting or running: a snapshot, for metrics and tests
        return len(self._live)

    async def shutdown(self) -> None:
        self._commands.put(Stop())
        await asyncio.to_thread(self._thread.join)

    # ---- the same without an event loop (any thread): what `process.py` drives the engine with ----------

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
                check_fits(op.name, Path(op.path), config, self._model.module_shapes, self.model_path)
            except Exception as error:
                future.set_exception(error)
                return future
        self._commands.put(Pending(op, future))
        return future

    # ---- the decode loop (its own thread: the only code that touches the model) -----------------------

    def _loop(self) -> None:
        torch.set_num_threads(self._model.threads)  # with OpenMP this is per thread: the engine's, not the process's
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
            adapter_names = [s.adapter_name for s in self._batch.seqs]
            logits = self._model.forward(*self._batch.decode_inputs(), self._batch.cache, adapter_names)
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
        return batch, self._model.forward(input_ids, mask, positions, batch.cache, [s.adapter_name for s in seqs])

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
        self._emit(seq, seq.append(token, logprob, self.eos_ids))

    def _emit(self, seq: Sequence, delta: Delta) -> None:
        out = seq.output(delta)
        if delta.finish_reason is not None:
            self._end(seq, delta.finish_reason)
        if out is not None:
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
            self._emit(seq, Delta([], "", reason))

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
        try:
            if request_id in self._live:
                raise ValueError(f"request id {request_id!r} is already running")
            if adapter is not None:
                self._slots.acquire(adapter)
        except (ValueError, AdapterNotLoadedError) as error:
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
        self._model.add_adapter(name, path)
        self._slots.add(name, path)
        self._publish()

    def _unload(self, name: str, future: Future) -> None:
        if name not in self._unloading:  # else a second caller for the same unload waits with the first
            self._slots.begin_unload(name)
            self._publish()
        self._unloading.setdefault(name, []).append(future)

    def _finish_unloads(self) -> None:
        """Delete each adapter being unloaded once no request uses it (or once an eviction took it)."""
        for name in [n for n in self._unloading if n not in self._slots or not self._slots.busy(n)]:
            if name in self._slots:
                self._delete(name)
            for future in self._unloading.pop(name):
                future.set_result(None)

    def _delete(self, name: str) -> None:
        self._model.delete_adapter(name)
        self._slots.remove(name)
        self._publish()

    def _publish(self) -> None:  # the snapshot other threads read: loaded adapters, less those being unloaded
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
        max_threads=max(1, usable_cpus() // settings.replicas),
        packed_gemm=settings.packed_gemm,
        trust_remote_code=settings.trust_remote_code,
    )
