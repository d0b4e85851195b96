"""POST /v1/feedback and POST /v1/comparisons: ratings, acknowledged only once committed.

201 when the judgement is new, 200 when the same user re-rates the same choice (or pair). An unknown
completion id is 404, but a completion still waiting in the batched log writer is never "unknown": the
route forces its flush first. Concurrent judgements share a commit (feedback/group_commit.py); each
answer waits for the commit that holds its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlmodel import Session

from feedback.store import InvalidFeedback, Judgement, UnknownCompletion
from serving import metrics
from serving.auth import require_api_key
from serving.errors import APIError
from serving.protocol import ComparisonRequest, ComparisonResponse, FeedbackRequest, FeedbackResponse
from serving.runtime import ServingRuntime, get_runtime

router = APIRouter()
FLUSH_WAIT_SECONDS = 10.0
T = TypeVar("T")


async def _committed(runtime: ServingRuntime, *completion_ids: str) -> None:
    for completion_id in completion_ids:
        if not runtime.writer.is_pending(completion_id):  # the usual case: no thread hop
            continue
        done = await asyncio.to_thread(runtime.writer.ensure_committed, completion_id, FLUSH_WAIT_SECONDS)
        if not done:
            raise APIError(
                503, "the completion log is behind; retry shortly", code="log_backlog", headers={"Retry-After": "1"}
            )


async def _in_group(runtime: ServingRuntime, work: Callable[[Session], T] | Judgement) -> T:
    """Run `work` in the next shared transaction; returns once that transaction has committed."""
    return await asyncio.wrap_future(runtime.committer.submit(work))


def _not_found(error: UnknownCompletion) -> APIError:
    return APIError(404, str(error), param="completion_id", code="completion_not_found")


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    status_code=201,
    responses={200: {"model": FeedbackResponse, "description": "the user's earlier rating, updated"}},
)
async def post_feedback(
    body: FeedbackRequest, key_id: str | None = Depends(require_api_key), runtime: ServingRuntime = Depends(get_runtime)
) -> JSONResponse:
    runtime.feedback_limits.check(key_id, body.user)
    await _committed(runtime, body.completion_id)
    judgement = Judgement(
        body.completion_id, body.choice_index, body.rating, body.score, body.comment, body.correction, body.user or ""
    )
    try:
        rating, created, adapter = await _in_group(runtime, judgement)
    except UnknownCompletion as error:
        raise _not_found(error) from error
    except InvalidFeedback as error:
        raise APIError(400, str(error), param=getattr(error, "param", None)) from error
    kind = "up" if body.rating == 1 else "down" if body.rating == -1 else f"score{body.score}"
    metrics.RATINGS.labels(model=adapter, kind=kind).inc()
    answer = FeedbackResponse(id=rating.id, created=int(rating.created))
    return JSONResponse(answer.model_dump(), status_code=201 if created else 200)


@router.post(
    "/v1/comparisons",
    response_model=ComparisonResponse,
    status_code=201,
    responses={200: {"model": ComparisonResponse, "description": "the user's earlier verdict, updated"}},
)
async def post_comparison(
    body: ComparisonRequest,
    key_id: str | None = Depends(require_api_key),
    runtime: ServingRuntime = Depends(get_runtime),
) -> JSONResponse:
    runtime.feedback_limits.check(key_id, body.user)
    await _committed(runtime, *body.completion_ids)
    a, b = body.completion_ids
    try:
        comparison, created = await _in_group(
            runtime, lambda session: runtime.store.compare_in(session, (a, b), body.winner, user=body.user or "")
        )
    except UnknownCompletion as error:
        raise _not_found(error) from error
    except InvalidFeedback as error:
        raise APIError(400, str(error)) from error
    answer = ComparisonResponse(id=comparison.id, created=int(comparison.created))
    return JSONResponse(answer.model_dump(), status_code=201 if created else 200)
