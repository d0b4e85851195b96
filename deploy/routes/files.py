"""OpenAI's files API, for fine-tuning data: upload, list, retrieve, delete, download (domain: retrain/files.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from deploy.routes.protocol import FileDeleted, FileList, FileObject
from feedback.models import File as FileRow
from retrain import files
from serving.deps import NEEDS_API_KEY, Runtime
from serving.runtime import ServingRuntime

router = APIRouter(tags=["files"], dependencies=[NEEDS_API_KEY])


def file_object(row: FileRow) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=int(row.created), filename=row.filename, purpose=row.purpose
    )


def _store(runtime: ServingRuntime, data: bytes, filename: str, purpose: str) -> FileRow:
    count_tokens = None
    if runtime.tokenizer is not None:
        tokenizer = runtime.tokenizer

        def count_tokens(messages: list[dict]) -> int:
            return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    max_tokens = (runtime.context_length or None) if count_tokens else None
    return files.store_upload(
        runtime.store, runtime.settings.home, data, filename, purpose, count_tokens=count_tokens, max_tokens=max_tokens
    )


@router.post("/v1/files", response_model=FileObject)
async def create_file(
    runtime: Runtime,
    file: UploadFile = File(..., description="The JSONL file of training rows."),
    purpose: str = Form(..., description="Only 'fine-tune' is supported."),
) -> FileObject:
    filename = Path(file.filename or "upload.jsonl").name or "upload.jsonl"
    data = await file.read()
    return file_object(await asyncio.to_thread(_store, runtime, data, filename, purpose))


@router.get("/v1/files", response_model=FileList)
async def list_files(
    runtime: Runtime,
    after: str | None = Query(None, description="List the files after this file id."),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = Query("desc", description="By creation time."),
    purpose: str | None = Query(None),
) -> FileList:
    rows, has_more = await asyncio.to_thread(
        files.list_files, runtime.store, after=after, limit=limit, newest_first=order == "desc", purpose=purpose
    )
    data = [file_object(row) for row in rows]
    return FileList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.get("/v1/files/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, runtime: Runtime) -> FileObject:
    return file_object(await asyncio.to_thread(files.get_file, runtime.store, file_id))


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, runtime: Runtime) -> FileDeleted:
    await asyncio.to_thread(files.delete_file, runtime.store, runtime.settings.home, file_id)
    return FileDeleted(id=file_id)


@router.get("/v1/files/{file_id}/content", response_class=Response)
async def file_content(file_id: str, runtime: Runtime) -> Response:
    data = await asyncio.to_thread(files.read_content, runtime.store, runtime.settings.home, file_id)
    return Response(content=data, media_type="application/octet-stream")
