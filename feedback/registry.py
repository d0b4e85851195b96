"""The adapter registry: every trained LoRA adapter, by name, with the proof of what its files were.

Records live in the store's `adapters` table; files live under one adapters root (`<home>/adapters`),
one folder per adapter, and the record keeps the folder's path RELATIVE to that root. The rules:

- names are `ft-NNNN` or `ft-NNNN-<suffix>` (suffix `[a-z0-9-]{1,40}`); the number is a counter over
  every name ever given, suffixed or not, so names never repeat. `next_name()` reserves its name by
  creating the empty folder `<root>/<name>` (the filesystem is the lock, across processes): write the
  adapter there, then `register()` it;
- only safetensors weights: a folder holding pickle files (`*.bin`, `*.pt`, `*.pth`, `*.pkl`) is refused,
  since loading one runs arbitrary code. `adapter_model.safetensors` and `adapter_config.json` are
  required;
- `register()` records the SHA-256 of every file; `verify()` recomputes them before an adapter is served
  and names the file that changed;
- `resolve_path()` never leaves the root: `..` and symlinks pointing outside are refused, so a record
  (or a request naming an adapter) cannot make the server load files from elsewhere.

Statuses: candidate (trained, not yet judged), canary (taking a share of traffic), current (serving),
previous (the one rollback returns to), rejected (failed the gate, or rolled back), superseded (served
once, replaced since), retired (its files pruned; the record stays). Which adapter holds which
status is decided in deploy/; this module only records it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from feedback.errors import Conflict, DomainError, Invalid, NotFound
from feedback.models import Adapter, AdapterStatus
from feedback.store import FeedbackStore

WEIGHTS_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
SUFFIX_RE = re.compile(r"[a-z0-9-]{1,40}")
NAME_RE = re.compile(r"ft-(\d{4,})(?:-([a-z0-9-]{1,40}))?")


class AdapterError(DomainError):
    """Base of the registry's errors; the message says what to do next."""

    param = "model"


class UnknownAdapter(AdapterError, NotFound):
    """No adapter is registered under that name."""

    code = "model_not_found"


class InvalidAdapterName(AdapterError, Invalid):
    """A name or suffix that breaks the naming rules."""

    code = "invalid_value"


class UnsafeAdapter(AdapterError, Conflict):
    """A folder the server must not load: pickle weights, missing files, or a path outside the root."""

    code = "adapter_unsafe"


class AdapterTampered(AdapterError, Conflict):
    """A file's SHA-256 no longer matches what was registered."""

    code = "adapter_unsafe"


class AdapterNotUsable(AdapterError, Conflict):
    """A registered adapter that cannot serve or be trained on here: retired, or built on another base."""


class AdapterRegistry:
    """Adapter records in the store, adapter files under `root`."""

    def __init__(self, store: FeedbackStore, root: Path | str) -> None:
        self.store = store
        self.root = Path(root)

    # -- naming --------------------------------------------------------------------------------
    def next_name(self, suffix: str | None = None, *, reserve: bool = True) -> tuple[int, str]:
        """The next free (number, name): `ft-0007` or `ft-0007-<suffix>`.

        With `reserve` (the default) the folder `<root>/<name>` is created empty, so a concurrent caller
        gets the next number; without it the name is only a preview.
        """
        if suffix is not None and not SUFFIX_RE.fullmatch(suffix):
            raise InvalidAdapterName(
                f"suffix {suffix!r} is invalid: use 1 to 40 characters of lowercase letters, digits and '-'"
            )
        with self.store.session() as session:
            number = (session.scalar(select(func.max(Adapter.number))) or 0) + 1
        self.root.mkdir(parents=True, exist_ok=True)
        taken = {int(m.group(1)) for p in self.root.iterdir() if (m := NAME_RE.fullmatch(p.name))}
        while True:
            while number in taken:
                number += 1
            name = f"ft-{number:04d}" + (f"-{suffix}" if suffix else "")
            if not reserve:
                return number, name
            try:
                (self.root / name).mkdir()
                return number, name
            except FileExistsError:  # another process reserved this number between our scan and mkdir
                taken.add(number)

    # -- registering ---------------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        method: str,
        base_model: str,
        parent: str | None = None,
        path: Path | str | None = None,
        hyperparameters: dict | None = None,
        data_snapshot: dict | None = None,
        metrics: dict | None = None,
        job_id: str | None = None,
        status: str = AdapterStatus.CANDIDATE,
    ) -> Adapter:
        """Record the adapter in `path` (default `<root>/<name>`) under `name`, with every file's SHA-256."""
        match = NAME_RE.fullmatch(name)
        if not match:
            raise InvalidAdapterName(f"adapter name {name!r} is invalid: get one from next_name()")
        _check_status(status)
        folder = self._inside_root(Path(path) if path is not None else self.root / name)
        if folder == self.root.resolve():
            raise UnsafeAdapter(f"adapter {name}: give the adapter its own folder under {self.root}, not the root")
        files = self._hash_folder(folder)
        if parent is not None and self._find(parent) is None:
            raise UnknownAdapter(f"parent adapter {parent!r} is not registered: register it first or pass no parent")
        row = Adapter(
            name=name,
            number=int(match.group(1)),
            base_model=base_model,
            method=method,
            parent=parent,
            status=status,
            path=folder.relative_to(self.root.resolve()).as_posix(),
            sha256=files[WEIGHTS_FILE],
            files=files,
            hyperparameters=hyperparameters or {},
            data_snapshot=data_snapshot or {},
            metrics=metrics or {},
            job_id=job_id,
        )
        try:
            with self.store.session() as session:
                session.add(row)
        except IntegrityError as error:
            message = f"adapter {name} (number {row.number}) is registered already: use next_name()"
            raise AdapterError(message) from error
        return row

    def _hash_folder(self, folder: Path) -> dict[str, str]:
        """SHA-256 of every file in `folder` (relative posix path -> hex), after the safety checks."""
        if not folder.is_dir():
            raise UnsafeAdapter(f"adapter folder {folder} does not exist")
        files: dict[str, str] = {}
        for file in sorted(folder.rglob("*")):
            relative = file.relative_to(folder).as_posix()
            if file.suffix.lower() in PICKLE_SUFFIXES:
                raise UnsafeAdapter(
                    f"{folder} holds pickle weights ({relative}), which can run code when loaded: "
                    "save the adapter with safetensors (save_pretrained's default) and remove the file"
                )
            self._inside_root(file)  # a symlinked file may point anywhere
            if file.is_file():
                files[relative] = _sha256_file(file)
        for required in (WEIGHTS_FILE, CONFIG_FILE):
            if required not in files:
                raise UnsafeAdapter(f"{folder} has no {required}: save the adapter with save_pretrained()")
        return files

    # -- reading -------------------------------------------------------------------------------
    def usable(self, name: str, base_model_id: str) -> Adapter:
        """The record of an adapter this server can serve or continue from: UnknownAdapter when none is
        registered, AdapterNotUsable when its files were pruned or it was trained on another base model."""
        record = self.get(name)
        if record.status == AdapterStatus.RETIRED:
            raise AdapterNotUsable(
                f"adapter {name} is retired: its files were pruned; retrain it", code="adapter_retired"
            )
        if record.base_model != base_model_id:
            raise AdapterNotUsable(
                f"adapter {name} was trained on base {record.base_model} but the server runs {base_model_id}: "
                "retrain it or serve the matching base",
                code="base_model_mismatch",
            )
        return record

    def get(self, name: str) -> Adapter:
        """The record of `name`; raises UnknownAdapter."""
        row = self._find(name)
        if row is None:
            raise UnknownAdapter(f"adapter {name!r} is not registered: see `ratchet adapters`")
        return row

    def list(self) -> list[Adapter]:
        """Every adapter, newest first."""
        with self.store.session() as session:
            return list(session.scalars(select(Adapter).order_by(Adapter.created.desc(), Adapter.number.desc())))

    def resolve_path(self, name: str) -> Path:
        """The absolute folder of `name`, guaranteed inside the adapters root (and not the root itself)."""
        folder = self._inside_root(self.root / self.get(name).path)
        if folder == self.root.resolve():
            raise UnsafeAdapter(f"adapter {name}: its recorded path is the adapters folder itself: refused")
        return folder

    def verify(self, name: str) -> None:
        """Recompute every registered file's SHA-256; raise AdapterTampered naming the first that differs."""
        adapter = self.get(name)
        folder = self.resolve_path(name)
        for relative, expected in sorted(adapter.files.items()):
            file = self._inside_root(folder / relative)
            if not file.is_file():
                raise AdapterTampered(f"adapter {name}: {relative} is missing from {folder}")
            if _sha256_file(file) != expected:
                raise AdapterTampered(
                    f"adapter {name}: {relative} does not match its registered SHA-256: the file changed after "
                    "training; restore it or retrain"
                )
        if adapter.files.get(WEIGHTS_FILE) != adapter.sha256:
            raise AdapterTampered(f"adapter {name}: the record's sha256 disagrees with its file list")
        pickles = [p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            raise UnsafeAdapter(f"adapter {name}: pickle files appeared in {folder}: {', '.join(pickles)}")

    # -- changing ------------------------------------------------------------------------------
    def set_status(self, name: str, status: str, decision: dict | None = None) -> Adapter:
        """Record a new status (and the gate's decision, when given); returns the updated record."""
        _check_status(status)
        with self.store.session() as session:
            row = session.get(Adapter, name)
            if row is None:
                raise UnknownAdapter(f"adapter {name!r} is not registered: see `ratchet adapters`")
            row.status = status
            if decision is not None:
                row.decision = decision
            return row

    @staticmethod
    def as_public(adapter: Adapter) -> dict[str, Any]:
        """One item of `ratchet adapters --json` (docs/cli.md); keys may be added, never renamed."""
        return {
            "name": adapter.name,
            "status": adapter.status,
            "method": adapter.method,
            "base_model": adapter.base_model,
            "parent": adapter.parent,
            "created": _iso_utc(adapter.created),
            "sha256": adapter.sha256,
            "metrics": adapter.metrics,
            "hyperparameters": adapter.hyperparameters,
            "data_snapshot": adapter.data_snapshot,
            "decision": adapter.decision,
            "job_id": adapter.job_id,
        }

    # -- helpers -------------------------------------------------------------------------------
    def _find(self, name: str) -> Adapter | None:
        with self.store.session() as session:
            return session.get(Adapter, name)

    def _inside_root(self, path: Path) -> Path:
        """`path` with symlinks and `..` resolved, or UnsafeAdapter when that lands outside the root."""
        root = self.root.resolve()
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise UnsafeAdapter(f"{path} resolves to {resolved}, outside the adapters folder {root}: refused")
        return resolved


def _check_status(status: str) -> None:
    if status not in set(AdapterStatus):  # a set: `str in EnumType` raises TypeError before Python 3.12
        raise ValueError(f"status {status!r} is not one of {', '.join(AdapterStatus)}")


def _iso_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
