"""The messages that drive an hf engine, typed: every kind in one place, matched by type, never unpacked
from tuples.

- `Load` / `Unload` are the adapter operations, the same in the decode thread's queue and over the engine
  process's socket.
- The decode thread's queue (`Command`): `Add` (a checked request), `Abort`, `Pending` (an adapter
  operation with the future its caller waits on), `Stop`.
- Parent to engine process: `Submit`, `Abort`, `Call` (an adapter operation with the id its answer
  carries), `Stop`.
- Engine process to parent: `Ready` once (or `Failed`), then `Outputs` once per decode-loop iteration
  (every request's delta of that step in one message) and `Done` for each `Call`.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from serving.engine import GenerationOutput, GenerationRequest
from serving.engines.hf.sequence import Sequence


@dataclass(frozen=True)
class Load:
    name: str
    path: str


@dataclass(frozen=True)
class Unload:
    name: str


AdapterOp = Load | Unload


@dataclass(frozen=True)
class Submit:
    request: GenerationRequest


@dataclass(frozen=True)
class Abort:
    request_id: str


@dataclass(frozen=True)
class Call:
    call_id: int
    op: AdapterOp


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    context_length: int


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Outputs:
    items: list[tuple[str, GenerationOutput | BaseException]]  # (request id, its delta or its error)
    requests_in_flight: int


@dataclass(frozen=True)
class Done:
    call_id: int
    error: BaseException | None
    adapters: tuple[str, ...]  # what the engine serves after the call


@dataclass(frozen=True)
class Add:
    seq: Sequence


@dataclass(frozen=True)
class Pending:
    op: AdapterOp
    future: Future  # resolved by the decode loop once the operation is done


Command = Add | Abort | Pending | Stop
