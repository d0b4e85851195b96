"""OpenAI's fine-tuning jobs API over retrain/jobs.py: create, list, retrieve, events, checkpoints, cancel.

The replica only records jobs: `POST /v1/fine_tuning/jobs` checks the request (model, files, method,
hyperparameters, suffix) and calls `create_job`, which validates the data at once and answers `queued`,
or `failed` with the reason. The job runner in the service's driver process (deploy/server.py) trains
queued jobs one at a time as Ray tasks and sets `fine_tuned_model` to the registered adapter, which
`model=` in a chat completion then reaches at once (the replica loads adapters on first use).

OpenAI's names map onto retrain/hyperparams.py: `n_epochs` -> `epochs`, `batch_size`, `beta`, and
`learning_rate_multiplier` -> `learning_rate` = multiplier x the "auto" rate for the base model's size
(so a multiplier of 1 is what "auto" picks). Any other key is one of ratchet's own hyperparameter names
(`max_length`, `lora_r`, ...), checked like the rest. `method.type` is `supervised`, `dpo` or
`reinforcement` (with `method.reinforcement.grader`, validated at once; `compute_multiplier` scales the
answers sampled per prompt, `eval_interval` the steps between evaluations); the legacy
top-level `hyperparameters` mean supervised, and `method`'s own ones win where both are given. `model`
is `base` (or the base model's id), `current` (whatever is promoted now), or a registered adapter to
continue from. Without `training_file` a job trains on the store's feedback (a ratchet extension).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from fastapi import APIRouter, Query

from deploy.routes.protocol import (
    MAX_SEED,
    Checkpoint,
    CheckpointList,
    CheckpointMetrics,
    EventList,
    FineTuningJob,
    JobCreateRequest,
    JobError,
    JobEventObject,
    JobHyperparameters,
    JobList,
    JobMethod,
    MethodHyperparameters,
    ReinforcementHyperparameters,
    ReinforcementMethod,
)
from feedback.errors import Invalid
from feedback.models import Job, JobEvent, JobStatus
from feedback.registry import SUFFIX_RE, UnknownAdapter
from retrain import files, jobs
from retrain.graders import parse_grader
from retrain.hyperparams import ConfigError, RFTHyperparameters, base_learning_rate
from serving.deps import NEEDS_API_KEY, Runtime
from serving.errors import model_not_found
from serving.runtime import ServingRuntime

router = APIRouter(tags=["fine-tuning"], dependencies=[NEEDS_API_KEY])
METHOD_TYPES = {"supervised": "sft", "dpo": "dpo", "reinforcement": "rft"}  # OpenAI's method.type -> ratchet's
OPENAI_TYPES = {"sft": "supervised", "dpo": "dpo", "kto": "kto", "rft": "reinforcement"}
OPENAI_NAMES = {"n_epochs": "epochs", "batch_size": "batch_size", "beta": "beta", "eval_interval": "eval_interval"}
# reinforcement: OpenAI's knobs that have no meaning here are accepted and not used (docs/fine-tuning.md)
IGNORED = ("eval_samples", "reasoning_effort")
GROUP = RFTHyperparameters.model_fields["num_generations"].default  # compute_multiplier 1 = this many answers


# -- OpenAI's hyperparameters as ratchet's ----------------------------------------------------------


def _overrides(runtime: ServingRuntime, method: str, given: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's hyperparameters as retrain/hyperparams.py overrides ("auto" stays auto)."""
    overrides: dict[str, Any] = {}
    for key, value in given.items():
        if value is None or key in IGNORED or (value == "auto" and key in ("learning_rate_multiplier", "beta")):
            continue
        if value == "auto" and key == "compute_multiplier":
            continue
        if key == "compute_multiplier":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise Invalid(
                    f"compute_multiplier must be a positive number or 'auto', got {value!r}",
                    param="hyperparameters.compute_multiplier",
                    code="invalid_value",
                )
            overrides["num_generations"] = max(2, round(GROUP * value))
            continue
        if key == "learning_rate_multiplier":
            base = base_learning_rate(runtime.settings.base_model_path, method)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise Invalid(
                    f"learning_rate_multiplier must be a positive number or 'auto', got {value!r}",
                    param="hyperparameters.learning_rate_multiplier",
                    code="invalid_value",
                )
            if base is None:
                raise Invalid(
                    "learning_rate_multiplier needs a local base model with safetensors weights to scale from: "
                    "give hyperparameters.learning_rate instead",
                    param="hyperparameters.learning_rate_multiplier",
                    code="invalid_value",
                )
            overrides["learning_rate"] = float(value) * base
        else:
            overrides[OPENAI_NAMES.get(key, key)] = value
    return overrides


# -- mapping records to OpenAI objects -------------------------------------------------------------


def job_object(runtime: ServingRuntime, job: Job) -> FineTuningJob:
    hp = job.hyperparameters or {}
    rate, base = hp.get("learning_rate", "auto"), None
    if rate != "auto":
        base = base_learning_rate(runtime.settings.base_model_path, job.method)
    hyperparameters = JobHyperparameters(
        n_epochs=hp.get("epochs", "auto"),
        batch_size=hp.get("batch_size", "auto"),
        learning_rate_multiplier="auto" if rate == "auto" else (round(rate / base, 6) if base else None),
        beta=hp.get("beta", "auto") if job.method != "sft" else None,
    )
    kind = OPENAI_TYPES.get(job.method, job.method)
    if job.method == "rft":
        method = JobMethod(type=kind, reinforcement=_reinforcement(job, hyperparameters))
    else:
        method = JobMethod(type=kind, **{kind: MethodHyperparameters(hyperparameters=hyperparameters)})
    return FineTuningJob(
        id=job.id,
        created_at=int(job.created),
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=int(job.finished) if job.finished else None,
        hyperparameters=hyperparameters.model_copy(update={"beta": None}),
        method=method,
        model=job.model,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
    )


def _reinforcement(job: Job, common: JobHyperparameters) -> ReinforcementMethod:
    hp = job.hyperparameters or {}
    generations = hp.get("num_generations")
    return ReinforcementMethod(
        grader=job.grader or {},
        hyperparameters=ReinforcementHyperparameters(
            n_epochs=common.n_epochs,
            batch_size=common.batch_size,
            learning_rate_multiplier=common.learning_rate_multiplier,
            compute_multiplier=round(generations / GROUP, 6) if generations else "auto",
            eval_interval=hp.get("eval_interval", "auto"),
        ),
    )


def event_object(event: JobEvent) -> JobEventObject:
    return JobEventObject(
        id=f"ftevent-{event.id}",
        created_at=int(event.created),
        level=event.level,
        message=event.message,
        type="metrics" if event.type == "metrics" else "message",
        data=event.data,
    )


def checkpoint_object(job: Job, adapter: Any) -> Checkpoint:
    metrics = adapter.metrics or {}
    steps = int(metrics.get("steps") or 0)
    return Checkpoint(
        id=f"ftckpt-{job.id.removeprefix('ftjob-')}",
        created_at=int(job.finished or adapter.created),
        fine_tuned_model_checkpoint=adapter.name,
        fine_tuning_job_id=job.id,
        step_number=steps,
        metrics=CheckpointMetrics(
            step=steps,
            train_loss=metrics.get("train_loss"),
            train_mean_token_accuracy=metrics.get("train_mean_token_accuracy"),
            valid_loss=metrics.get("eval_loss"),
            valid_mean_token_accuracy=metrics.get("eval_mean_token_accuracy"),
            full_valid_loss=metrics.get("eval_loss"),
            full_valid_mean_token_accuracy=metrics.get("eval_mean_token_accuracy"),
        ),
    )


# -- creating --------------------------------------------------------------------------------------


def _method_and_hyperparameters(body: JobCreateRequest) -> tuple[str, dict[str, Any]]:
    given = dict(body.hyperparameters or {})
    if body.method is None:
        return "sft", given
    for other in METHOD_TYPES:
        if other != body.method.type and getattr(body.method, other) is not None:
            raise Invalid(
                f"method.{other} was given but method.type is {body.method.type!r}: send the hyperparameters "
                f"under method.{body.method.type}",
                param=f"method.{other}",
                code="invalid_value",
            )
    block = getattr(body.method, body.method.type)
    return METHOD_TYPES[body.method.type], {**given, **((block.hyperparameters if block else None) or {})}


def _grader(body: JobCreateRequest) -> dict[str, Any] | None:
    """The reinforcement job's grader, validated (a 400 naming the field), as it will be stored."""
    if body.method is None or body.method.type != "reinforcement":
        return None
    if body.method.reinforcement is None:
        raise Invalid(
            "method.type is 'reinforcement': send the grader under method.reinforcement.grader",
            param="method.reinforcement", code="invalid_value",
        )  # fmt: skip
    grader = parse_grader(body.method.reinforcement.grader, param="method.reinforcement.grader")
    return grader.model_dump(mode="json", exclude_none=True)


def _resolve_model(runtime: ServingRuntime, model: str) -> str:
    """`base`, or the registered adapter of this base model that the job continues from."""
    if model == "current":
        model = runtime.state.get("current") or "base"
    if model in ("base", runtime.settings.base_model_id):
        return "base"
    try:
        runtime.registry.usable(model, runtime.settings.base_model_id)  # retired or of another base: Conflict
    except UnknownAdapter:
        raise model_not_found(model) from None
    return model


def _check_file(runtime: ServingRuntime, file_id: str | None, param: str) -> None:
    if file_id is None:
        return
    row = files.find_file(runtime.store, file_id)
    if row is None:
        raise Invalid(
            f"invalid {param}: no such file {file_id} (upload it with POST /v1/files)", param=param,
            code="file_not_found",
        )  # fmt: skip
    if row.purpose != "fine-tune":
        raise Invalid(
            f"invalid {param}: {file_id} has purpose {row.purpose!r}, not 'fine-tune'", param=param,
            code="invalid_file_purpose",
        )  # fmt: skip


def _config_param(error: ConfigError) -> str:
    field = str(error).split(":", 1)[0].strip()
    names = {ours: theirs for theirs, ours in OPENAI_NAMES.items()} | {"learning_rate": "learning_rate_multiplier"}
    return f"hyperparameters.{names.get(field, field)}"


def _create(runtime: ServingRuntime, body: JobCreateRequest) -> Job:
    method, given = _method_and_hyperparameters(body)
    grader = _grader(body)
    if body.suffix is not None and not SUFFIX_RE.fullmatch(body.suffix):
        raise Invalid(
            f"suffix {body.suffix!r} is invalid: use 1 to 40 characters of lowercase letters, digits and '-'",
            param="suffix",
            code="invalid_value",
        )
    if body.validation_file is not None and body.training_file is None:
        raise Invalid(
            "validation_file goes with training_file (the store keeps its own held-out split)",
            param="validation_file", code="invalid_value",
        )  # fmt: skip
    if grader is not None and body.training_file is None:
        raise Invalid(
            "reinforcement fine-tuning trains on a training_file of RFT rows ({\"messages\", reference fields}): "
            "upload one with POST /v1/files", param="training_file", code="invalid_value",
        )  # fmt: skip
    model = _resolve_model(runtime, body.model)
    _check_file(runtime, body.training_file, "training_file")
    _check_file(runtime, body.validation_file, "validation_file")
    overrides = _overrides(runtime, method, given)
    seed = body.seed if body.seed is not None else random.randint(0, MAX_SEED)  # as OpenAI: random, reported
    try:
        return jobs.create_job(
            runtime.store,
            runtime.settings,
            method=method,
            model=model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            hyperparameters=overrides,
            seed=seed,
            grader=grader,
        )
    except ConfigError as error:
        raise Invalid(f"invalid hyperparameters: {error}", param=_config_param(error), code="invalid_value") from None
    except ValueError as error:
        raise Invalid(str(error), code="invalid_value") from error


@router.post("/v1/fine_tuning/jobs", response_model=FineTuningJob)
async def create_job(body: JobCreateRequest, runtime: Runtime) -> FineTuningJob:
    job = await asyncio.to_thread(_create, runtime, body)
    return job_object(runtime, job)


# -- reading and cancelling ------------------------------------------------------------------------


def _job(runtime: ServingRuntime, job_id: str) -> Job:
    return jobs.get_job(runtime.store, job_id)  # NotFound: job_not_found


@router.get("/v1/fine_tuning/jobs", response_model=JobList)
async def list_jobs(
    runtime: Runtime,
    after: str | None = Query(None, description="List the jobs after this job id (newest first)."),
    limit: int = Query(20, ge=1, le=100),
) -> JobList:
    if after is not None:
        await asyncio.to_thread(_job, runtime, after)  # an unknown cursor is a 404, not a silent first page
    rows, has_more = await asyncio.to_thread(jobs.list_jobs, runtime.store, after=after, limit=limit)
    return JobList(data=[job_object(runtime, job) for job in rows], has_more=has_more)


@router.get("/v1/fine_tuning/jobs/{job_id}", response_model=FineTuningJob)
async def retrieve_job(job_id: str, runtime: Runtime) -> FineTuningJob:
    return job_object(runtime, await asyncio.to_thread(_job, runtime, job_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=EventList)
async def list_events(
    runtime: Runtime,
    job_id: str,
    after: str | None = Query(None, description="List the events after this event id (newest first)."),
    limit: int = Query(20, ge=1, le=1000),
) -> EventList:
    cursor = None
    if after is not None:
        number = after.removeprefix("ftevent-")
        if not number.isdigit():
            raise Invalid(f"after must be an event id (ftevent-N), got {after!r}", param="after")
        cursor = int(number)
    await asyncio.to_thread(_job, runtime, job_id)
    rows, has_more = await asyncio.to_thread(jobs.list_events, runtime.store, job_id, after=cursor, limit=limit)
    return EventList(data=[event_object(event) for event in rows], has_more=has_more)


def _checkpoints(runtime: ServingRuntime, job_id: str) -> list[Checkpoint]:
    job = _job(runtime, job_id)
    if job.status != JobStatus.SUCCEEDED or not job.fine_tuned_model:
        return []
    try:
        adapter = runtime.registry.get(job.fine_tuned_model)
    except UnknownAdapter:
        return []
    return [checkpoint_object(job, adapter)]


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(
    runtime: Runtime,
    job_id: str,
    after: str | None = Query(None, description="List the checkpoints after this checkpoint id."),
    limit: int = Query(10, ge=1, le=100),
) -> CheckpointList:
    data = await asyncio.to_thread(_checkpoints, runtime, job_id)
    if after is not None:  # one checkpoint per job: the page after it is empty
        ids = [c.id for c in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    data = data[:limit]
    return CheckpointList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=False
    )


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(job_id: str, runtime: Runtime) -> FineTuningJob:
    # a queued job is cancelled at once; a running one stops at its next training step
    job, _ = await asyncio.to_thread(jobs.cancel_by_request, runtime.store, job_id)
    return job_object(runtime, job)
