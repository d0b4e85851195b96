"""Everything one serving replica holds: engine, tokenizer, store, log writer, routing state, admission.

A replica (a Ray Serve actor, or a plain process in tests) builds one `ServingRuntime`, starts it, and
installs it with `install()`; routes reach it through the `get_runtime` dependency. Routing state is
data (`{"current": "ft-0003", "previous": …, "canary": {"adapter": …, "fraction": 0.1}}`) read from the
store by `sync_state`, which loads and checks every adapter it names BEFORE switching, so a swap is
atomic: a request resolves its adapter once, at its start, and finishes on it. The replica that changes
the state rings the fleet (serving/fleet.py) and every replica's follower re-reads the store at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import Busy, Conflict, DomainError, Overloaded
from feedback.group_commit import GroupCommitter
from feedback.models import AdapterStatus
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore
from feedback.writer import CompletionLogWriter
from ratchet.settings import Settings
from serving import metrics
from serving.engine import AdapterBusyError, AdapterLoadError, Engine, GenerationRequest, SamplingParams
from serving.errors import model_not_found
from serving.fleet import LocalFleet
from serving.ratelimit import FeedbackRateLimiter

log = logging.getLogger("ratchet.serving")
FLEET_LEAVE_SECONDS = 2.0


@dataclass(frozen=True)
class Route:
    engine_adapter: str | None  # what the engine runs: an adapter name, or None for the base model
    answered: str  # the `model` the response names: base or ft-…
    arm: str  # current / canary / direct


class ServingRuntime:
    def __init__(self, settings: Settings, fleet: LocalFleet | None = None) -> None:
        self.settings = settings
        self.fleet = fleet or LocalFleet()
        self.base_model_id = settings.base_model_id  # recorded with every completion; it stats a path
        self.store = FeedbackStore(settings.store_url)
        self.writer = CompletionLogWriter(
            self.store, batch_size=settings.log_batch_size, flush_seconds=settings.log_flush_seconds
        )
        self.committer = GroupCommitter(self.store, max_batch=settings.feedback_group_commit)
        self.registry = AdapterRegistry(self.store, settings.adapters_dir)
        self.feedback_limits = FeedbackRateLimiter(
            settings.feedback_rate_per_minute, settings.feedback_key_rate_per_minute
        )
        self.engine: Engine | None = None
        self.tokenizer: Any = None
        self.token_pieces: Any = None  # serving.detokenize.TokenPieces of the tokenizer, for logprobs
        self.context_length = 0
        self.state: dict[str, Any] = {"current": None, "previous": None, "canary": None}
        self.started_at = time.time()
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        self._state_lock = asyncio.Lock()  # one switch at a time: an older read never undoes a newer switch
        self._checked: dict[str, str] = {}  # adapter -> its smoke text, while the checked load stays loaded
        self._in_flight = 0
        self._sync_task: asyncio.Task | None = None
        self.ready = False
        # The admin token; the file may carry whitespace (an editor's newline): it is stripped.
        key_path = settings.admin_key_path
        self.admin_key = key_path.read_text().strip() if key_path.is_file() else ""
        if len(self.admin_key) < 16:
            raise RuntimeError(f"no usable admin key at {key_path}: run `ratchet init --home {settings.home}`")

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load tokenizer and engine, then the persisted routing state (a restart serves what it served)."""
        from transformers import AutoTokenizer

        from serving.detokenize import TokenPieces
        from serving.engines import create_engine

        self.tokenizer = AutoTokenizer.from_pretrained(
            self.settings.base_model_path, trust_remote_code=self.settings.trust_remote_code
        )
        self.token_pieces = TokenPieces(self.tokenizer)
        self.engine = create_engine(self.settings)
        starter = getattr(self.engine, "start", None)
        if starter is not None:
            await starter()
        self.context_length = self.engine.context_length
        try:
            await self.sync_state()
        except Exception:  # a bad persisted adapter must not keep the server down: serve the base
            log.exception("could not restore the serving state; serving the base model")
        self._sync_task = asyncio.create_task(self._follow_store_state())
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.fleet.leave(), FLEET_LEAVE_SECONDS)
        if self.engine is not None:
            await self.engine.shutdown()
        self.writer.close()
        self.committer.close()
        self.store.close()

    # -- routing -------------------------------------------------------------------------------
    async def apply_state(self, state: dict[str, Any]) -> None:
        """Load and check every adapter `state` names, then switch to it in one assignment."""
        async with self._state_lock:
            await self._switch_to(state)

    async def sync_state(self) -> dict[str, Any]:
        """Serve the stored state. The store is read under the switch lock, so two syncs in a race apply
        the store's states in order and the last one wins."""
        async with self._state_lock:
            wanted = await asyncio.to_thread(self.store.routing_state)
            if wanted != self.state:
                await self._switch_to(wanted)
                log.info("serving state now %s", wanted)
            return wanted

    async def _switch_to(self, state: dict[str, Any]) -> None:
        # Checked, not only loaded: the replica that handles the promotion of a canary, whichever it is,
        # then finds the check done.
        names = [state.get("current"), state.get("previous"), (state.get("canary") or {}).get("adapter")]
        for name in names:
            if name and name != "base":
                await self.check_servable(name)
        self.state = {"current": state.get("current"), "previous": state.get("previous"), "canary": state.get("canary")}

    async def _follow_store_state(self) -> None:
        """Every replica converges on the stored state: woken by a ring of the replica that changed it, and
        at least every `state_sync_seconds` without one."""
        seen = 0
        while True:
            try:
                seen = await self.fleet.wait(seen, self.settings.state_sync_seconds)
                await self.sync_state()
                await self.fleet.applied(seen)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad adapter or a store hiccup: keep serving what we serve, try again
                log.exception("could not apply the stored serving state")
                await asyncio.sleep(self.settings.state_sync_seconds)

    async def check_servable(self, name: str) -> str:
        """Everything a promotion demands before `current` may point at `name`: loaded (sha256, safetensors,
        base model checked on load), a LoRA rank within limits, and a smoke generation. Returns its text.
        Done once per load: promoting the canary's adapter, checked when the canary started, costs nothing."""
        import json

        await self.ensure_adapter(name)
        if name in self._checked and name in self.engine.adapters():
            return self._checked[name]
        config_path = self.registry.resolve_path(name) / "adapter_config.json"
        rank = int(json.loads(config_path.read_text()).get("r", 0))
        if not 0 < rank <= self.settings.max_lora_rank:
            raise Conflict(
                f"adapter {name} has LoRA rank {rank}; this server serves ranks 1-{self.settings.max_lora_rank}",
                code="adapter_check_failed",
            )
        prompt = self.prompt_ids([{"role": "user", "content": "Hello!"}])
        request = GenerationRequest(
            f"smoke-{name}-{time.monotonic_ns()}", prompt, SamplingParams(max_tokens=8, temperature=0), name
        )
        text, tokens = "", 0
        try:
            async for output in self.engine.generate(request):
                text, tokens = text + output.text, output.completion_tokens
        except Exception as error:
            raise Conflict(
                f"adapter {name} failed its smoke generation: {error}", code="adapter_check_failed"
            ) from error
        if tokens == 0:
            raise Conflict(f"adapter {name} generated nothing in its smoke test", code="adapter_check_failed")
        self._checked[name] = text
        return text

    async def route(self, model: str, user: str | None) -> Route:
        """Map a request's `model` (current, base, ft-…) to what answers it; loads adapters on first use."""
        if model == "base":
            return Route(None, "base", "direct")
        if model == "current":
            state = self.state  # one read: a concurrent swap cannot split this request
            canary = state.get("canary")
            if canary and canary.get("adapter") and _bucket(user) < float(canary.get("fraction", 0.0)):
                return Route(canary["adapter"], canary["adapter"], "canary")
            current = state.get("current")
            if not current or current == "base":
                return Route(None, "base", "current")
            return Route(current, current, "current")
        if not model.startswith("ft-"):
            raise model_not_found(model)
        await self.ensure_adapter(model)
        return Route(model, model, "direct")

    async def ensure_adapter(self, name: str) -> None:
        """Load a registered adapter into the engine (checked: sha256, safetensors, base model)."""
        assert self.engine is not None
        if name in self.engine.adapters():
            return
        lock = self._adapter_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self.engine.adapters():
                return
            self._checked.pop(name, None)  # a new load is checked anew
            path = await asyncio.to_thread(self._checked_adapter_path, name)
            try:
                await self.engine.load_adapter(name, str(path))
            except AdapterLoadError as error:
                raise _load_refused(name, error, self.settings.adapters_dir) from error

    async def checked_record(self, name: str) -> Any:
        """The registry record of `name`, or 404 model_not_found."""
        from feedback.registry import UnknownAdapter

        try:
            return await asyncio.to_thread(self.registry.get, name)
        except UnknownAdapter as error:
            raise model_not_found(name) from error

    def _checked_adapter_path(self, name: str) -> Path:
        from feedback.registry import AdapterTampered, UnknownAdapter, UnsafeAdapter

        try:
            self.registry.usable(name, self.settings.base_model_id)
        except UnknownAdapter as error:
            raise model_not_found(name) from error
        try:
            self.registry.verify(name)
            return self.registry.resolve_path(name)
        except (AdapterTampered, UnsafeAdapter) as error:
            log.warning("refused to load adapter %s: %s", name, error)
            reason = str(error).replace(str(Path(self.settings.home).resolve()), "<home>")
            reason = reason.removeprefix(f"adapter {name}: ")
            raise Conflict(f"adapter {name} is refused: {reason}", param="model", code="adapter_unsafe") from error

    def servable_adapters(self) -> list[Any]:
        return [
            a
            for a in self.registry.list()
            if a.status not in (AdapterStatus.RETIRED, AdapterStatus.REJECTED)
            and a.base_model == self.settings.base_model_id
        ]

    # -- admission -----------------------------------------------------------------------------
    def check_capacity(self) -> None:
        """Refuse with 429 (and Retry-After) when the replica already runs its maximum of requests."""
        if self._in_flight >= self.settings.max_concurrent_requests:
            metrics.ERRORS.labels(type="overloaded").inc()
            raise Overloaded("the server is at capacity; retry shortly", code="server_overloaded", retry_after=1)

    @asynccontextmanager
    async def admit(self):
        """Count a running request (the in-flight gauge and the capacity check read it)."""
        self._in_flight += 1
        metrics.IN_FLIGHT.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1
            metrics.IN_FLIGHT.set(self._in_flight)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- prompts -------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a chat prompt, as `apply_chat_template(tokenize=True)` gives them.

    Rendered, then encoded without special tokens: what that call does inside (a chat template writes its
    own BOS), without its per-call bookkeeping, which costs more than the encoding on every request."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _load_refused(name: str, error: AdapterLoadError, adapters_dir: Path) -> DomainError:
    """An engine's refusal to load, as the client sees it: 503 (retry) while slots are busy, else 409;
    never the workspace's paths."""
    message = (
        str(error).replace(str(Path(adapters_dir).resolve()), "<adapters>").replace(str(adapters_dir), "<adapters>")
    )
    if isinstance(error, AdapterBusyError):
        return Busy(f"{message}; retry shortly", code="adapter_unavailable", retry_after=2)
    return Conflict(f"adapter {name} cannot be served: {message}", param="model", code="adapter_load_failed")


def _bucket(user: str | None) -> float:
    """A stable number in [0, 1) per user, so a user stays on one arm of a canary."""
    digest = hashlib.sha256((user or "").encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_runtime: ServingRuntime | None = None


def install(runtime: ServingRuntime | None) -> None:
    global _runtime
    _runtime = runtime


async def get_runtime() -> ServingRuntime:
    """FastAPI dependency: the replica's runtime, or 503 while it is still starting.

    `async` so that FastAPI calls it on the event loop: a plain `def` dependency runs in a worker thread,
    and under many concurrent chats that hop took a noticeable share of the replica loop's time (py-spy)."""
    if _runtime is None or not _runtime.ready:
        raise Busy("the model is still loading; retry shortly", code="model_loading", retry_after=2)
    return _runtime
