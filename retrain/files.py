"""Fine-tuning files in the workspace: validate, store, list, read and delete (the domain of OpenAI's files API).

An upload is validated line by line exactly as `ratchet data import` validates a file (feedback/ingest.py:
OpenAI chat SFT and DPO rows, KTO rows, no row longer than the base model's context), or as a file of
reinforcement fine-tuning rows (retrain/rft_rows.py). A bad file is refused
whole (`InvalidFile`, listing every bad line as `FILENAME:LINE: reason`); a good one is stored as
`<home>/files/<id>.jsonl` plus a `File` row (`path` relative to the workspace), so a training job can name it
by id. Every stored file has been validated, so its status is always `processed`. The HTTP routes over these
functions live in deploy/routes/files.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from feedback.errors import Invalid, NotFound
from feedback.ingest import FileProblem, ImportReport, read_rows
from feedback.models import File, new_id
from feedback.store import FeedbackStore
from retrain.rft_rows import rft_errors

PURPOSES = ("fine-tune",)
MAX_LISTED_ERRORS = 50  # a message lists this many bad lines, then counts the rest

CountTokens = Callable[[list[dict]], int]


class InvalidFile(Invalid):
    code, param = "invalid_file", "file"


def file_not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"no such file: {file_id} (upload it with POST /v1/files)", param=param, code="file_not_found")


def validation_errors(
    path: Path, shown_as: str, *, count_tokens: CountTokens | None = None, max_tokens: int | None = None
) -> list[str]:
    """Every problem of the file at `path`, as `shown_as:LINE: reason` (empty: the file is good)."""
    report = ImportReport(path=shown_as)
    try:
        read_rows(path, report, count_tokens=count_tokens, max_tokens=max_tokens)
    except FileProblem as problem:
        return [f"{shown_as}: {problem}"]
    # the reader names the stored path; the user knows the file by the name they uploaded
    errors = [shown_as + error.removeprefix(str(path)) for error in report.errors]
    if errors:
        # not chat / preference rows: perhaps reinforcement rows; report the format with fewer bad lines,
        # the one the user most likely meant
        _, rft = rft_errors(path, shown_as)
        errors = min(errors, rft, key=len)
    return errors


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise Invalid(
            f"purpose {purpose!r} is not supported here: upload fine-tuning data with purpose 'fine-tune'",
            param="purpose",
            code="invalid_value",
        )


def store_upload(
    store: FeedbackStore,
    home: Path,
    data: bytes,
    filename: str,
    purpose: str,
    *,
    count_tokens: CountTokens | None = None,
    max_tokens: int | None = None,
) -> File:
    """Validate and keep an uploaded file; nothing is kept (file or row) when any line is bad."""
    check_purpose(purpose)
    files_dir = home / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    file_id = new_id("file")
    final = files_dir / f"{file_id}.jsonl"
    partial = files_dir / f"{file_id}.jsonl.partial"  # never visible under its final name until valid
    partial.write_bytes(data)
    try:
        errors = validation_errors(partial, filename, count_tokens=count_tokens, max_tokens=max_tokens)
        if errors:
            shown = errors[:MAX_LISTED_ERRORS]
            if len(errors) > len(shown):
                shown.append(f"... and {len(errors) - len(shown)} more bad line(s)")
            raise InvalidFile(
                f"{filename}: {len(errors)} problem(s), nothing stored; fix these lines and upload again:\n"
                + "\n".join(shown)
            )
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    row = File(id=file_id, filename=filename, purpose=purpose, bytes=len(data), path=str(final.relative_to(home)))
    try:
        with store.session() as session:
            session.add(row)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return row


def find_file(store: FeedbackStore, file_id: str) -> File | None:
    with store.session() as session:
        return session.get(File, file_id)


def get_file(store: FeedbackStore, file_id: str) -> File:
    row = find_file(store, file_id)
    if row is None:
        raise file_not_found(file_id)
    return row


def list_files(
    store: FeedbackStore, *, after: str | None, limit: int, newest_first: bool, purpose: str | None
) -> tuple[list[File], bool]:
    """One page of files in creation order, after the file `after`; (rows, has_more)."""
    with store.session() as session:
        query = select(File)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        if newest_first:
            query = query.order_by(File.created.desc(), File.id.desc())
        else:
            query = query.order_by(File.created, File.id)
        if after is not None:
            anchor = session.get(File, after)
            if anchor is None:
                raise file_not_found(after, param="after")
            if newest_first:
                before = (File.created < anchor.created) | ((File.created == anchor.created) & (File.id < anchor.id))
            else:
                before = (File.created > anchor.created) | ((File.created == anchor.created) & (File.id > anchor.id))
            query = query.where(before)
        rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def read_content(store: FeedbackStore, home: Path, file_id: str) -> bytes:
    row = get_file(store, file_id)
    try:
        return (home / row.path).read_bytes()
    except FileNotFoundError:
        raise NotFound(
            f"file {file_id}: its bytes are gone from the workspace; upload it again", code="file_not_found"
        ) from None


def delete_file(store: FeedbackStore, home: Path, file_id: str) -> None:
    """Remove a file and its row. A queued job that names it fails when it starts, with that reason."""
    with store.session() as session:
        row = session.get(File, file_id)
        if row is None:
            raise file_not_found(file_id)
        path = home / row.path
        session.delete(row)
    path.unlink(missing_ok=True)
