"""How the replicas of one app hear that the routing state changed, and say that they follow it.

The store holds the routing state; this only rings. The replica that changed the state rings a bell; the
follower task of every replica wakes, re-reads the store, serves what it finds and acknowledges the bell's
generation it woke for. The admin call that rang waits, bounded, until every live replica acknowledged, so
once it returns a new request is answered by the new adapter whichever replica takes it.

    fleet = RayFleet(app="ratchet", replica="abc123")    # in a Ray Serve replica; LocalFleet() otherwise
    seen = await fleet.wait(seen, timeout)               # a follower: returns on a ring, or at the timeout
    await fleet.applied(seen)                            # ... after serving the stored state
    report = await fleet.broadcast(timeout)              # the ringer: {"replicas", "following", "lagging"}

A replica counts as live while it keeps calling `wait` (a follower calls it at least every `timeout`
seconds); one that stopped, a dead one, is not waited for once its lease ran out. Without a ring the
followers still re-read the store at every timeout, which is what catches a change written by a process
that cannot ring (the CLI with no server).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

LEASE_GRACE_SECONDS = 2.0  # a live follower is back in `wait` within its timeout plus the time to apply
LEASE_TICK_SECONDS = 0.5
NAMESPACE = "ratchet"


class Bell:
    """The shared part: a generation counter, who follows, and what each one acknowledged."""

    def __init__(self) -> None:
        self.generation = 0
        self._changed = asyncio.Condition()
        self._seen: dict[str, float] = {}  # replica -> its lease's end
        self._applied: dict[str, int] = {}  # replica -> the newest generation it serves

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        """Wait (holding the condition) until `done()` or the timeout; `done` is asked again on every
        change and every tick, since a lease running out notifies nobody."""
        deadline = time.monotonic() + timeout
        while not done() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, LEASE_TICK_SECONDS))

    async def ring(self) -> int:
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()
            return self.generation

    async def wait(self, replica: str, seen: int, timeout: float) -> int:
        """The generation, as soon as it differs from `seen` (a restarted bell counts again from 0)."""
        self._seen[replica] = time.monotonic() + timeout + LEASE_GRACE_SECONDS
        async with self._changed:
            await self._until(lambda: self.generation != seen, timeout)
            return self.generation

    async def applied(self, replica: str, generation: int) -> None:
        async with self._changed:
            self._applied[replica] = generation
            self._changed.notify_all()

    async def leave(self, replica: str) -> None:
        async with self._changed:
            self._seen.pop(replica, None)
            self._applied.pop(replica, None)
            self._changed.notify_all()

    async def wait_applied(self, generation: int, timeout: float) -> dict[str, Any]:
        """Wait until every live replica serves `generation` or newer; report who does and who lags."""

        def lagging() -> list[str]:
            now = time.monotonic()
            live = [r for r, lease in self._seen.items() if lease > now]
            return sorted(r for r in live if self._applied.get(r, -1) < generation)

        async with self._changed:
            await self._until(lambda: not lagging(), timeout)
            now = time.monotonic()
            live = sum(1 for lease in self._seen.values() if lease > now)
            late = lagging()
            return {"replicas": live, "following": live - len(late), "lagging": late}


class LocalFleet:
    """One process, one replica: the bell lives here. `RayFleet` is the same over a shared actor."""

    def __init__(self, replica: str = "local") -> None:
        self.replica = replica
        self._bell = Bell()

    async def _call(self, method: str, *args: Any) -> Any:
        return await getattr(self._bell, method)(*args)

    async def wait(self, seen: int, timeout: float) -> int:
        return await self._call("wait", self.replica, seen, timeout)

    async def applied(self, generation: int) -> None:
        await self._call("applied", self.replica, generation)

    async def broadcast(self, timeout: float) -> dict[str, Any]:
        generation = await self._call("ring")
        await self._call("applied", self.replica, generation)  # the ringer serves the new state already
        return await self._call("wait_applied", generation, timeout)

    async def leave(self) -> None:
        await self._call("leave", self.replica)


class RayFleet(LocalFleet):
    """The replicas of one Serve app share a Bell actor, named after the app. The first replica to ask
    creates it, and owns it: when that replica goes, the actor goes with it and the next call of any
    replica creates a new one (followers re-read the store then anyway)."""

    def __init__(self, app: str, replica: str) -> None:
        self.replica = replica
        self._name = f"routing-bell-{app}"
        self._handle: Any = None

    async def _call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError

        for attempt in (1, 2):
            if self._handle is None:
                actor = ray.remote(Bell).options(
                    name=self._name,
                    namespace=NAMESPACE,  # a replica's own namespace is its job's
                    get_if_exists=True,
                    num_cpus=0,
                    max_concurrency=1000,
                    max_restarts=0,
                )
                self._handle = actor.remote()
            try:
                return await getattr(self._handle, method).remote(*args)
            except RayActorError:  # the owning replica went: make (or find) the next bell
                self._handle = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
