"""OpenAI's grader endpoints, to try a grader before a reinforcement job: `graders/validate` and `graders/run`.

    POST /v1/fine_tuning/alpha/graders/validate  {"grader": {...}}                          -> {"grader": {...}}
    POST /v1/fine_tuning/alpha/graders/run       {"grader", "model_sample", "item"}         -> {"reward", ...}

An invalid grader is a 400 naming the field (`grader.operation`). `run` scores `model_sample` with the
very code a training run calls (retrain/grading.py), so its `reward` is the reward training would use;
a grader that fails (a python grader refused by its sandbox or out of time, a judge without a number)
is a 200 with reward 0 and OpenAI's flag in `metadata.errors`, as OpenAI answers. Grading runs in a
worker thread: a python grader is a subprocess, a score_model grader an HTTP call, never the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from deploy.routes.protocol import (
    GraderRunMetadata,
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
)
from retrain.graders import ScoreModelGrader, parse_grader
from retrain.grading import GradingContext, grade_batch
from serving.deps import NEEDS_API_KEY, Runtime

router = APIRouter(tags=["fine-tuning"], dependencies=[NEEDS_API_KEY])


@router.post("/v1/fine_tuning/alpha/graders/validate", response_model=GraderValidateResponse)
async def validate_grader(body: GraderValidateRequest) -> GraderValidateResponse:
    grader = parse_grader(body.grader)
    return GraderValidateResponse(grader=grader.model_dump(mode="json", exclude_none=True))


@router.post("/v1/fine_tuning/alpha/graders/run", response_model=GraderRunResponse)
async def run_grader(body: GraderRunRequest, runtime: Runtime) -> GraderRunResponse:
    grader = parse_grader(body.grader)
    context = GradingContext.from_settings(runtime.settings)
    (grade,) = await asyncio.to_thread(grade_batch, grader, [body.model_sample], [body.item or {}], context)
    judged = isinstance(grader, ScoreModelGrader)
    return GraderRunResponse(
        reward=grade.reward,
        sub_rewards=grade.sub_rewards,
        model_grader_token_usage_per_model={grader.model: grade.token_usage} if judged else {},
        metadata=GraderRunMetadata(
            errors=grade.openai_errors(),
            execution_time=round(grade.seconds, 6),
            name=grader.name,
            sampled_model_name=grader.model if judged else None,
            scores={name: reward for name, reward in grade.sub_rewards.items()} or {grader.name: grade.reward},
            token_usage=grade.token_usage if judged else None,
            type=grader.type,
        ),
    )
