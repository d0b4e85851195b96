"""OpenAI's files API, for fine-tuning data: upload, list, retrieve, delete, download.

An upload (`POST /v1/files`, multipart, purpose `fine-tune`) is validated line by line exactly as
`ratchet data import` validates a file (feedback/ingest.py: OpenAI chat SFT and DPO rows, KTO rows, no row
longer than the base model's context). A bad file is refused whole with a 400 whose message lists every
bad line as `FILENAME:LINE: reason`; a good one is stored as `<home>/files/<id>.jsonl` plus a `File` row
(`path` relative to the workspace), so a training job can name it by id. Every stored file has been
validated, so its status is always `processed`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response
from sqlalchemy import select

from feedback.ingest import ImportReport, _FileProblem, _read_rows
from feedback.models import File as FileRow
from feedback.models import new_id
from retrain.api_protocol import FileDeleted, FileList, FileObject
from serving.auth import require_api_key
from serving.errors import APIError
from serving.runtime import ServingRuntime, get_runtime

router = APIRouter()
PURPOSES = ("fine-tune",)
MAX_LISTED_ERRORS = 50  # a message lists this many bad lines, then counts the rest


def file_object(row: FileRow) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=int(row.created), filename=row.filename, purpose=row.purpose
    )


def file_not_found(file_id: str, param: str = "file_id") -> APIError:
    return APIError(404, f"no such file: {file_id} (upload it with POST /v1/files)", param=param, code="file_not_found")


def get_file_row(runtime: ServingRuntime, file_id: str) -> FileRow | None:
    with runtime.store.session() as session:
        return session.get(FileRow, file_id)


# -- upload ----------------------------------------------------------------------------------------


def _validation_errors(runtime: ServingRuntime, path: Path, shown_as: str) -> list[str]:
    """Every problem of the file at `path`, as `shown_as:LINE: reason` (empty: the file is good)."""
    report = ImportReport(path=shown_as)
    count_tokens, max_tokens = None, None
    if runtime.tokenizer is not None:
        tokenizer = runtime.tokenizer
        max_tokens = runtime.context_length or None

        def count_tokens(messages: list[dict]) -> int:
            return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    try:
        _read_rows(path, report, count_tokens=count_tokens, max_tokens=max_tokens)
    except _FileProblem as problem:
        return [f"{shown_as}: {problem}"]
    # the reader names the stored path; the user knows the file by the name they uploaded
    return [shown_as + error.removeprefix(str(path)) for error in report.errors]


def _store_upload(runtime: ServingRuntime, data: bytes, filename: str, purpose: str) -> FileRow:
    files_dir = runtime.settings.home / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    file_id = new_id("file")
    final = files_dir / f"{file_id}.jsonl"
    partial = files_dir / f"{file_id}.jsonl.partial"  # never visible under its final name until valid
    partial.write_bytes(data)
    try:
        errors = _validation_errors(runtime, partial, filename)
        if errors:
            shown = errors[:MAX_LISTED_ERRORS]
            if len(errors) > len(shown):
                shown.append(f"... and {len(errors) - len(shown)} more bad line(s)")
            raise APIError(
                400,
                f"{filename}: {len(errors)} problem(s), nothing stored; fix these lines and upload again:\n"
                + "\n".join(shown),
                param="file",
                code="invalid_file",
            )
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    row = FileRow(
        id=file_id,
        filename=filename,
        purpose=purpose,
        bytes=len(data),
        path=str(final.relative_to(runtime.settings.home)),
    )
    try:
        with runtime.store.session() as session:
            session.add(row)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return row


@router.post("/v1/files", response_model=FileObject)
async def create_file(
    file: UploadFile = File(..., description="The JSONL file of training rows."),
    purpose: str = Form(..., description="Only 'fine-tune' is supported."),
    _key: str | None = Depends(require_api_key),
    runtime: ServingRuntime = Depends(get_runtime),
) -> FileObject:
    if purpose not in PURPOSES:
        raise APIError(
            400,
            f"purpose {purpose!r} is not supported here: upload fine-tuning data with purpose 'fine-tune'",
            param="purpose",
            code="invalid_value",
        )
    filename = Path(file.filename or "upload.jsonl").name or "upload.jsonl"
    data = await file.read()
    row = await asyncio.to_thread(_store_upload, runtime, data, filename, purpose)
    return file_object(row)


# -- reading and deleting --------------------------------------------------------------------------


def _list_rows(
    runtime: ServingRuntime, after: str | None, limit: int, order: str, purpose: str | None
) -> tuple[list[FileRow], bool]:
    newest_first = order == "desc"
    with runtime.store.session() as session:
        query = select(FileRow)
        if purpose is not None:
            query = query.where(FileRow.purpose == purpose)
        if newest_first:
            query = query.order_by(FileRow.created.desc(), FileRow.id.desc())
        else:
            query = query.order_by(FileRow.created, FileRow.id)
        if after is not None:
            anchor = session.get(FileRow, after)
            if anchor is None:
                raise file_not_found(after, param="after")
            if newest_first:
                before = (FileRow.created < anchor.created) | (
                    (FileRow.created == anchor.created) & (FileRow.id < anchor.id)
                )
            else:
                before = (FileRow.created > anchor.created) | (
                    (FileRow.created == anchor.created) & (FileRow.id > anchor.id)
                )
            query = query.where(before)
        rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


@router.get("/v1/files", response_model=FileList)
async def list_files(
    after: str | None = Query(None, description="List the files after this file id."),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = Query("desc", description="By creation time."),
    purpose: str | None = Query(None),
    _key: str | None = Depends(require_api_key),
    runtime: ServingRuntime = Depends(get_runtime),
) -> FileList:
    rows, has_more = await asyncio.to_thread(_list_rows, runtime, after, limit, order, purpose)
    data = [file_object(row) for row in rows]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


async def _existing(runtime: ServingRuntime, file_id: str) -> FileRow:
    row = await asyncio.to_thread(get_file_row, runtime, file_id)
    if row is None:
        raise file_not_found(file_id)
    return row


@router.get("/v1/files/{file_id}", response_model=FileObject)
async def retrieve_file(
    file_id: str, _key: str | None = Depends(require_api_key), runtime: ServingRuntime = Depends(get_runtime)
) -> FileObject:
    return file_object(await _existing(runtime, file_id))


def _delete(runtime: ServingRuntime, file_id: str) -> bool:
    with runtime.store.session() as session:
        row = session.get(FileRow, file_id)
        if row is None:
            return False
        path = runtime.settings.home / row.path
        session.delete(row)
    path.unlink(missing_ok=True)
    return True


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
async def delete_file(
    file_id: str, _key: str | None = Depends(require_api_key), runtime: ServingRuntime = Depends(get_runtime)
) -> FileDeleted:
    # A queued job that names a deleted file fails when it starts, with that reason (as with OpenAI).
    if not await asyncio.to_thread(_delete, runtime, file_id):
        raise file_not_found(file_id)
    return FileDeleted(id=file_id)


@router.get("/v1/files/{file_id}/content", response_class=Response)
async def file_content(
    file_id: str, _key: str | None = Depends(require_api_key), runtime: ServingRuntime = Depends(get_runtime)
) -> Response:
    row = await _existing(runtime, file_id)
    try:
        data = await asyncio.to_thread((runtime.settings.home / row.path).read_bytes)
    except FileNotFoundError:
        raise APIError(
            404, f"file {file_id}: its bytes are gone from the workspace; upload it again", code="file_not_found"
        ) from None
    return Response(content=data, media_type="application/octet-stream")
