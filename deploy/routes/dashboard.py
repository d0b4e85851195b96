"""The web dashboard's admin routes (admin key): aggregates and pages, never every row.

GET /admin/stats?hours=48                     ratings per hour by adapter, liked share per adapter, decisions
GET /admin/adapters?limit=20&before=NUMBER    the adapter timeline, newest first
GET /admin/adapters/{name}/files/{file}       report.md, win_rate.png or loss.png of an adapter
GET /admin/ratings?limit=20&before=CREATED    the latest ratings with the answers they rated
GET /admin/jobs/{id}/metrics                  a fine-tuning job's training curve (at most MAX_POINTS rows)
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from deploy import dashboard
from deploy.promotion import decisions
from deploy.routes.admin import ADAPTER_NAME
from retrain.jobs import get_job
from retrain.runs import read_metrics
from serving.deps import NEEDS_ADMIN_KEY, Runtime

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[NEEDS_ADMIN_KEY])
MAX_POINTS = 500
JOB_ID = r"^ftjob-[A-Za-z0-9_-]{1,60}$"


@router.get("/stats")
async def admin_stats(runtime: Runtime, hours: int = Query(48, ge=1, le=24 * 14)) -> dict:
    def collect() -> dict:
        return {
            "ratings_per_hour": dashboard.ratings_per_hour(runtime.store, hours=hours),
            "liked": dashboard.liked_shares(runtime.store),
            "decisions": decisions(runtime.store),
        }

    return await asyncio.to_thread(collect)


@router.get("/adapters")
async def admin_adapters(
    runtime: Runtime, limit: int = Query(20, ge=1, le=100), before: int | None = Query(None, ge=0)
) -> dict:
    runs = runtime.settings.runs_dir
    return await asyncio.to_thread(dashboard.adapter_page, runtime.registry, runs, limit=limit, before=before)


@router.get("/adapters/{name}/files/{file}")
async def admin_adapter_file(
    runtime: Runtime, name: Annotated[str, Path(pattern=ADAPTER_NAME)], file: str
) -> FileResponse:
    path = await asyncio.to_thread(dashboard.report_file, runtime.registry, runtime.settings.runs_dir, name, file)
    media = "text/markdown; charset=utf-8" if path.suffix == ".md" else "image/png"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-store"})


@router.get("/ratings")
async def admin_ratings(
    runtime: Runtime, limit: int = Query(20, ge=1, le=100), before: float | None = Query(None, ge=0)
) -> dict:
    return await asyncio.to_thread(dashboard.rating_page, runtime.store, limit=limit, before=before)


@router.get("/jobs/{job_id}/metrics")
async def admin_job_metrics(runtime: Runtime, job_id: Annotated[str, Path(pattern=JOB_ID)]) -> dict:
    def read() -> list[dict]:
        get_job(runtime.store, job_id)  # 404 for an unknown job
        try:
            rows = read_metrics(runtime.settings.runs_dir / job_id)
        except FileNotFoundError:
            return []  # queued, or not at its first step yet
        return dashboard.thin(rows, MAX_POINTS)

    return {"object": "list", "job_id": job_id, "data": await asyncio.to_thread(read)}
