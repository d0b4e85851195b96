"""HFEngineProcess: the hf engine in a child process of its own, so HTTP work never shares its GIL.

Inside one process, the decode loop and the replica's HTTP event loop (uvicorn, FastAPI, the chat
template, SSE frames, logging) take turns on one GIL: on the demo model, whose decode steps are mostly
Python, the served path fell well short of the engine's own tokens/s (docs/benchmarks.md). vLLM splits its
API server from its engine core for the same reason. Here the child runs an `HFEngine` unchanged; this class is the
`Engine` the replica talks to.

- The child is `python -m serving.engines.hf.process FD`, with one end of a socket pair as FD (a
  `multiprocessing.connection.Connection`, pickled messages). Not `multiprocessing`'s spawn: that re-imports
  the parent's `__main__`, which in a Ray worker is Ray's own worker script.
- The messages are the typed ones of `serving.engines.hf.messages`. Parent to child: the engine's options
  once, then `Submit`, `Abort`, `Call` (a `Load` or `Unload` with an id) and `Stop`. Child to parent:
  `Ready` (or `Failed`) once, then `Outputs` once per decode-loop iteration (every request's delta of that
  step in one message) and `Done` for each `Call`.
- Detokenizing and stop strings stay in the child with the rest of the per-token work; the parent only
  routes each delta to its caller's queue, with one event-loop wake-up per message.
- Life: the child exits when the parent sends "stop" or when its end of the socket closes, which is also
  what happens when the parent dies, even by SIGKILL: no orphaned model process. If the child dies, every
  stream fails with RuntimeError, `alive` turns False (the replica's health check then fails and Serve
  replaces the replica), and new requests are refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from multiprocessing.connection import Connection, Pipe
from typing import Any

from ratchet.settings import Settings
from serving.engine import AdapterNotLoadedError, GenerationOutput, GenerationRequest
from serving.engines.hf.batch import hand_over, read_outputs
from serving.engines.hf.messages import (
    Abort,
    AdapterOp,
    Call,
    Done,
    Failed,
    Load,
    Outputs,
    Ready,
    Stop,
    Submit,
    Unload,
)

logger = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 900.0  # loading, packing and timing the thread count of a large model on CPU
STOP_TIMEOUT_SECONDS = 30.0


class HFEngineProcess:
    def __init__(self, options: dict[str, Any]) -> None:
        """`options` are HFEngine's keyword arguments (`hf.engine_options`); `start()` waits for the model."""
        self._conn, child_end = Pipe(duplex=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        fd = child_end.fileno()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "serving.engines.hf.process", str(fd)], pass_fds=[fd], env=env
        )
        child_end.close()
        self._send_lock = threading.Lock()
        self._send(options)
        self.context_length = 0
        self.num_requests = 0  # requests waiting or running in the child, as of its last message
        self._listed: tuple[str, ...] = ()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._calls: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._call_ids = itertools.count()
        self._gone: str | None = None  # why the child is gone, once it is
        self._reader: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> HFEngineProcess:
        from serving.engines.hf import engine_options

        return cls(engine_options(settings))

    async def start(self) -> None:
        try:
            first = await asyncio.wait_for(asyncio.to_thread(self._first_message), START_TIMEOUT_SECONDS)
        except TimeoutError:
            first = Failed(f"it was not ready after {START_TIMEOUT_SECONDS:.0f} s")
        if not isinstance(first, Ready):
            await self.shutdown()
            raise RuntimeError(f"the hf engine process could not start: {first.reason}")
        self.context_length = first.context_length
        self._reader = threading.Thread(target=self._read, name="hf-engine-outputs", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._gone is None

    # ---- the Engine interface (the replica's event loop) ---------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        if request.adapter is not None and request.adapter not in self._listed:
            raise AdapterNotLoadedError(f"adapter {request.adapter!r} is not loaded; load it first")
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = (asyncio.get_running_loop(), outputs)
        try:
            self._send_or_fail(Submit(request))
            async with aclosing(read_outputs(outputs, lambda: self._abort_quietly(request.request_id))) as items:
                async for item in items:
                    yield item
        finally:
            self._streams.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        self._abort_quietly(request_id)

    async def load_adapter(self, name: str, path: str) -> None:
        await self._call(Load(name, str(path)))

    async def unload_adapter(self, name: str) -> None:
        """Returns once the adapter is deleted; requests already running with it finish first."""
        await self._call(Unload(name))

    def adapters(self) -> list[str]:
        return list(self._listed)

    async def shutdown(self) -> None:
        if self._process.poll() is None:
            try:
                self._send(Stop())
                await asyncio.to_thread(self._process.wait, STOP_TIMEOUT_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join)
        self._conn.close()

    # ---- plumbing ------------------------------------------------------------------------------------

    def _abort_quietly(self, request_id: str) -> None:
        if self._gone is None:
            with contextlib.suppress(OSError):  # the child has just gone: nothing left to abort
                self._send(Abort(request_id))

    def _send(self, message: Any) -> None:
        with self._send_lock:  # event-loop threads of several callers may send at once
            self._conn.send(message)

    async def _call(self, op: AdapterOp) -> None:
        call_id, loop = next(self._call_ids), asyncio.get_running_loop()
        future = loop.create_future()
        self._calls[call_id] = (loop, future)
        try:
            self._send_or_fail(Call(call_id, op))
        except RuntimeError:
            self._calls.pop(call_id, None)
            raise
        await future

    def _send_or_fail(self, message: Any) -> None:
        """Send, for a caller that has just registered its stream or call: if the child is gone, the reader
        may have failed every caller before this one was registered, so raise instead of waiting forever.
        (The reader sets `_gone` before it looks at who is registered.)"""
        if self._gone is None:
            with contextlib.suppress(OSError):  # a broken pipe: the child is going; _gone follows
                self._send(message)
                return
        raise RuntimeError(self._gone or "the hf engine process exited")

    def _first_message(self) -> Ready | Failed:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return Failed(f"it exited with code {self._process.wait()} (its log is the replica's stderr)")

    def _read(self) -> None:
        """The reader thread: route each message from the child to the callers' event loops."""
        try:
            while True:
                match self._conn.recv():
                    case Outputs(items, requests_in_flight):
                        self.num_requests = requests_in_flight
                        streams = [(self._streams.get(request_id), item) for request_id, item in items]
                        # A stream no longer there has stopped listening (its abort is on the way).
                        hand_over([(*stream, item) for stream, item in streams if stream is not None])
                    case Done(call_id, error, adapters):
                        self._listed = adapters
                        loop, future = self._calls.pop(call_id)
                        _settle_soon(loop, future, error)
        except (EOFError, OSError):
            pass
        self._gone = f"the hf engine process exited (code {self._process.wait()})"
        if self._streams or self._calls:
            logger.error("%s with %d requests in flight", self._gone, len(self._streams))
        hand_over([(loop, q, RuntimeError(self._gone)) for loop, q in list(self._streams.values())])
        for loop, future in list(self._calls.values()):
            _settle_soon(loop, future, RuntimeError(self._gone))
        self._calls.clear()


def _settle_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future, error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # the caller was cancelled
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits for the answer
        loop.call_soon_threadsafe(settle)


# ---- the child -------------------------------------------------------------------------------------------


def _portable(item: Any) -> Any:
    """An exception that survives pickling as itself, or else as a RuntimeError with its text."""
    if not isinstance(item, BaseException):
        return item
    try:
        pickle.loads(pickle.dumps(item))
        return item
    except Exception:
        return RuntimeError(f"{type(item).__name__}: {item}")


def serve_engine(conn: Connection) -> None:
    """Run an HFEngine for the parent at the other end of `conn` until it says stop or goes away."""
    from serving.engines.hf import HFEngine

    lock = threading.Lock()

    def send(message: Any) -> None:
        try:
            with lock:  # the decode thread sends outputs, this thread answers calls
                conn.send(message)
        except OSError:  # the parent is gone; the recv below sees it and stops the engine
            pass

    def deliver(items: list) -> list:
        if items:
            send(Outputs([(seq.request.request_id, _portable(item)) for seq, item in items], engine.num_requests))
        return []

    def answer(call_id: int, future: Any) -> None:
        send(Done(call_id, _portable(future.exception()), tuple(engine.adapters())))

    options = conn.recv()
    try:
        engine = HFEngine(**options, deliver=deliver)
    except Exception as error:
        logger.exception("the hf engine could not start")
        send(Failed(f"{type(error).__name__}: {error}"))
        return
    send(Ready(engine.context_length))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = Stop()
        match message:
            case Stop():
                break
            case Submit(request):
                try:
                    engine.submit(request)
                except Exception as error:  # the request cannot run (e.g. its prompt is too long)
                    send(Outputs([(request.request_id, _portable(error))], engine.num_requests))
            case Abort(request_id):
                engine.cancel(request_id)
            case Call(call_id, op):
                engine.call(op).add_done_callback(lambda future, call_id=call_id: answer(call_id, future))
    asyncio.run(engine.shutdown())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    serve_engine(Connection(int(sys.argv[1])))
