"""Import a JSONL file of training rows into the store's examples table — all of it, or nothing.

`import_jsonl` reads the file line by line (blank lines are ignored, a UTF-8 byte order mark is
tolerated), validates every line with `feedback.formats`, and then:

- when any line is bad and `skip_invalid` is false, writes NOTHING and reports every bad line;
- otherwise inserts the good rows in ONE transaction (a crash mid-import leaves nothing half-written),
  dropping duplicates, within the file and against the store, by content hash.

Errors are strings a person can act on, `FILE:LINE: reason` with 1-based line numbers, or `FILE: reason`
for the file as a whole (missing, unreadable, empty, not UTF-8). A concurrent import of the same rows
cannot fail this one: the insert skips hashes that appeared since they were checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from feedback.db import new_session
from feedback.formats import KINDS, InvalidLine, TokenCounter, ValidatedRow, validate_line
from feedback.models import Example, now

_CHUNK = 500  # hashes per IN (...) query, well under SQLite's and Postgres' parameter limits


@dataclass
class ImportReport:
    path: str
    imported: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    duplicates: int = 0  # good rows dropped: already in the file above, or already stored
    skipped: int = 0  # bad lines left out under skip_invalid
    errors: list[str] = field(default_factory=list)  # `FILE:LINE: reason` / `FILE: reason`
    committed: bool = False  # False: nothing was written

    @property
    def total(self) -> int:
        return sum(self.imported.values())


def import_jsonl(
    engine: Engine,
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    count_tokens: TokenCounter | None = None,
    max_tokens: int | None = None,
    source: str | None = None,
) -> ImportReport:
    """Import `path` into the examples table; see the module docstring for the all-or-nothing rule.

    `count_tokens`/`max_tokens` reject rows longer than the base model's context. `source` labels the
    stored rows (default: the file's name); each row's source is `<source>:<line>`.
    """
    report = ImportReport(path=str(path))
    # 1) read and validate every line
    try:
        rows = read_rows(Path(path), report, count_tokens=count_tokens, max_tokens=max_tokens)
    except FileProblem as problem:
        report.errors.append(f"{path}: {problem}")
        return report
    if report.errors and not skip_invalid:
        return report
    report.skipped = len(report.errors)
    # 2) drop duplicates within the file, then against the store, and insert in one transaction
    unique: dict[str, tuple[int, ValidatedRow]] = {}
    for line_number, row in rows:
        unique.setdefault(row.content_hash, (line_number, row))
    label = source if source is not None else Path(path).name
    with new_session(engine) as session, session.begin():
        stored = _stored_hashes(session, list(unique))
        fresh = [(n, row) for h, (n, row) in unique.items() if h not in stored]
        if fresh:
            created = now()
            values = [
                {
                    "kind": row.kind,
                    "data": row.data,
                    "content_hash": row.content_hash,
                    "source": f"{label}:{n}"[:512],
                    "created": created,
                }
                for n, row in fresh
            ]
            session.execute(_insert_ignoring_duplicates(engine), values)
    report.committed = True
    report.duplicates = len(rows) - len(fresh)
    for _, row in fresh:
        report.imported[row.kind] += 1
    return report


class FileProblem(Exception):
    """The file as a whole cannot be imported."""


def read_rows(
    path: Path, report: ImportReport, *, count_tokens: TokenCounter | None, max_tokens: int | None
) -> list[tuple[int, ValidatedRow]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileProblem("no such file") from None
    except IsADirectoryError:
        raise FileProblem("is a directory, not a JSONL file") from None
    except OSError as error:
        raise FileProblem(f"cannot read: {error.strerror}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileProblem("is UTF-16 (byte order mark): save it as UTF-8")
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    rows: list[tuple[int, ValidatedRow]] = []
    seen_content = False
    for line_number, line in enumerate(raw.split(b"\n"), start=1):
        line = line.removesuffix(b"\r")
        if not line.strip():
            continue
        seen_content = True
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = line[error.start]
            report.errors.append(
                f"{path}:{line_number}: not UTF-8 (byte 0x{bad:02x} at byte {error.start + 1}): save the file as UTF-8"
            )
            continue
        try:
            rows.append((line_number, validate_line(text, count_tokens=count_tokens, max_tokens=max_tokens)))
        except InvalidLine as invalid:
            report.errors.append(f"{path}:{line_number}: {invalid.reason}")
    if not seen_content:
        raise FileProblem("empty file: no rows to import")
    return rows


def _stored_hashes(session, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(hashes), _CHUNK):
        chunk = hashes[start : start + _CHUNK]
        found.update(session.scalars(select(Example.content_hash).where(Example.content_hash.in_(chunk))))
    return found


def _insert_ignoring_duplicates(engine: Engine):
    """INSERT … ON CONFLICT (content_hash) DO NOTHING where the dialect has it (SQLite, Postgres)."""
    table = Example.__table__
    dialects = {"sqlite": sqlite, "postgresql": postgresql}
    if engine.dialect.name in dialects:
        return dialects[engine.dialect.name].insert(table).on_conflict_do_nothing(index_elements=["content_hash"])
    return table.insert()
