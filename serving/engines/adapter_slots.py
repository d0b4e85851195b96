"""AdapterSlots: which LoRA adapters an engine holds, the same rules for every engine.

- At most `capacity` adapters are loaded; loading one more evicts the least recently used idle one.
- An adapter is in use while requests wait or run with it; an adapter in use is never evicted or replaced.
- An adapter being unloaded takes no new requests and cannot be loaded again until it is gone.

The engine does the loading and deleting (PEFT in the hf decode thread, vLLM's `add_lora` / `remove_lora`);
this class only decides, and keeps the books. It has one owner (the hf decode thread, or the vLLM engine's
event loop) and takes no lock.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from serving.engine import AdapterBusyError, AdapterNotLoadedError

logger = logging.getLogger(__name__)
T = TypeVar("T")  # what the engine keeps per adapter: its path (hf) or its LoRARequest (vLLM)


class AdapterSlots(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._loaded: OrderedDict[str, T] = OrderedDict()  # least recently used first
        self._in_use: Counter[str] = Counter()
        self._unloading: set[str] = set()

    def __contains__(self, name: object) -> bool:
        return name in self._loaded

    def __len__(self) -> int:
        return len(self._loaded)

    def listed(self) -> tuple[str, ...]:
        """The adapters a request may ask for: loaded, less those being unloaded."""
        return tuple(name for name in self._loaded if name not in self._unloading)

    def busy(self, name: str) -> bool:
        return self._in_use[name] > 0

    # ---- requests --------------------------------------------------------------------------------------

    def acquire(self, name: str) -> T:
        """A request starts with `name`: it is used now, and stays until `release`."""
        if name not in self._loaded or name in self._unloading:
            raise AdapterNotLoadedError(f"adapter {name!r} is not loaded; load it first")
        self._loaded.move_to_end(name)
        self._in_use[name] += 1
        return self._loaded[name]

    def touch(self, name: str) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)

    def release(self, name: str) -> bool:
        """A request with `name` has ended; True when no request uses it any more."""
        self._in_use[name] -= 1
        if self._in_use[name] > 0:
            return False
        del self._in_use[name]
        return True

    # ---- loading and unloading -------------------------------------------------------------------------

    def make_room(self, name: str, same: Callable[[T], bool]) -> list[str] | None:
        """What loading `name` takes: None when it is already loaded as asked (`same` of what is kept), or
        the adapters to delete first, in order (an older `name`, then least recently used idle ones).
        Raises AdapterBusyError, with nothing changed, when the load cannot happen now."""
        if name in self._unloading:
            raise AdapterBusyError(f"adapter {name!r} is being unloaded; wait for that, or use a new name")
        victims: list[str] = []
        if name in self._loaded:
            if same(self._loaded[name]):
                self._loaded.move_to_end(name)
                return None
            if self.busy(name):
                raise AdapterBusyError(f"adapter {name!r} is in use by running requests; load it under a new name")
            victims.append(name)
        idle = (n for n in self._loaded if n not in victims and not self.busy(n))
        while len(self._loaded) - len(victims) >= self.capacity:
            victim = next(idle, None)
            if victim is None:
                raise AdapterBusyError(f"all {self.capacity} adapter slots are in use; raise max_adapters")
            logger.info("evicting adapter %s (least recently used)", victim)
            victims.append(victim)
        return victims

    def add(self, name: str, value: T) -> None:
        self._loaded[name] = value

    def remove(self, name: str) -> T:
        """Forget a deleted adapter (evicted, replaced or unloaded)."""
        self._in_use.pop(name, None)
        self._unloading.discard(name)
        return self._loaded.pop(name)

    def begin_unload(self, name: str) -> bool:
        """Take no new requests for `name`; True when none uses it now (it can be deleted at once)."""
        if name not in self.listed():
            raise AdapterNotLoadedError(f"adapter {name!r} is not loaded")
        self._unloading.add(name)
        return not self.busy(name)
