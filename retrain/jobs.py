"""Fine-tuning jobs, shaped like OpenAI's: their records in the store, and the rules of their life.

The life of a job (`Job` row; its history is `JobEvent` rows):

    create_job()  validating_files -> queued        (the data is checked at once: bad -> failed, with reason)
    JobRunner     queued -> running -> succeeded    (fine_tuned_model = the registered adapter)
                                    -> failed       (error = {"code", "message", "param"})
    cancel_job()  queued -> cancelled at once; running -> cancelled, the training stops at its next step
    recover_interrupted()   jobs a restart left validating or running -> failed ("interrupted"), and the
                            adapter folder they had reserved is removed (it was never registered)

The runner that trains queued jobs is retrain/job_runner.py.

A job's `hyperparameters` are overrides of the method's defaults (retrain/hyperparams.py field names);
on success they are replaced by the resolved values, as OpenAI reports them. `model` is "base" or the
adapter to continue from. File jobs name uploaded files (`File` rows, whose `path` is relative to the
workspace, or absolute).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select

from feedback.errors import Invalid, NotFound
from feedback.models import File, Job, JobEvent, JobStatus, new_id, now
from feedback.store import FeedbackStore
from ratchet.settings import Settings
from retrain.finetune import DataError, TrainingData, data_from_file, data_from_store
from retrain.hyperparams import METHODS, TrainConfig

UNFINISHED = tuple(status for status in JobStatus if not status.finished)


# -- records ---------------------------------------------------------------------------------------


def create_job(
    store: FeedbackStore,
    settings: Settings,
    *,
    method: str,
    model: str = "base",
    training_file: str | None = None,
    validation_file: str | None = None,
    suffix: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
    grader: dict[str, Any] | None = None,
) -> Job:
    """Record a job and validate its data now: returns it queued, or failed with the reason.

    Reinforcement jobs (method "rft") need `grader`: an OpenAI grader already validated by
    retrain/graders.py, or a reward kind of the job runner's (the loop's `ratings_judge`); without a
    `training_file` they train on the prompts users rated (retrain/finetune.py)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if (method == "rft") != (grader is not None):
        raise ValueError("a grader goes with reinforcement fine-tuning, and reinforcement needs one")
    TrainConfig.default(method).with_overrides({**(hyperparameters or {}), "seed": seed})  # ConfigError early
    job = Job(
        id=new_id("ftjob"),
        method=method,
        model=model,
        status=JobStatus.VALIDATING_FILES,
        training_file=training_file,
        validation_file=validation_file,
        source="file" if training_file else "store",
        suffix=suffix,
        seed=seed,
        hyperparameters=hyperparameters or {},
        grader=grader,
    )
    with store.session() as session:
        session.add(job)
    add_event(store, job.id, f"Created fine-tuning job: {job.id}")
    add_event(store, job.id, "Validating training data")
    try:
        if model not in ("base", ""):
            from feedback.registry import AdapterRegistry

            AdapterRegistry(store, settings.adapters_dir).get(model)  # UnknownAdapter names the fix
        data = load_job_data(store, settings, job)
    except (DataError, LookupError) as error:
        return finish(
            store,
            job.id,
            JobStatus.FAILED,
            error={"code": "invalid_training_data", "message": _public(error, settings)},
        )
    add_event(store, job.id, f"Data validated: {len(data.train)} training row(s), {len(data.heldout)} held out")
    return set_status(store, job.id, JobStatus.QUEUED, "Job queued")


def _public(error: Exception, settings: Settings) -> str:
    """The reason as a user may see it: no server paths, and the bad lines themselves (a few)."""
    message = str(error)
    lines = getattr(error, "lines", [])
    if lines:
        message += ": " + "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
    return message.replace(str(settings.home.resolve()) + "/", "").replace(str(settings.home) + "/", "")


def load_job_data(store: FeedbackStore, settings: Settings, job: Job) -> TrainingData:
    """The job's training data: its uploaded files, or the store's feedback."""
    if job.training_file is None:
        return data_from_store(store, job.method, drop_disputed=settings.train_drop_disputed)
    training = _file_path(store, settings, job.training_file)
    validation = _file_path(store, settings, job.validation_file) if job.validation_file else None
    return data_from_file(job.method, training, validation)


def _file_path(store: FeedbackStore, settings: Settings, file_id: str) -> Path:
    with store.session() as session:
        row = session.get(File, file_id)
    if row is None:
        raise LookupError(f"file {file_id} does not exist: upload it with POST /v1/files first")
    return settings.home / row.path


def get_job(store: FeedbackStore, job_id: str) -> Job:
    with store.session() as session:
        job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"fine-tuning job {job_id} does not exist", code="job_not_found", param="fine_tuning_job_id")
    return job


def list_jobs(store: FeedbackStore, *, after: str | None = None, limit: int = 20) -> tuple[list[Job], bool]:
    """Jobs newest first, the page after job `after`; returns (jobs, has_more)."""
    with store.session() as session:
        query = select(Job).order_by(Job.created.desc(), Job.id.desc())
        if after is not None:
            anchor = session.get(Job, after)
            if anchor is not None:
                query = query.where(
                    (Job.created < anchor.created) | ((Job.created == anchor.created) & (Job.id < anchor.id))
                )
        rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_events(
    store: FeedbackStore, job_id: str, *, after: int | None = None, limit: int = 20
) -> tuple[list[JobEvent], bool]:
    """A job's events newest first (OpenAI's order), the page after event id `after`."""
    with store.session() as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())
        if after is not None:
            query = query.where(JobEvent.id < after)
        rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add_event(
    store: FeedbackStore, job_id: str, message: str, *, level: str = "info", type: str = "message", data=None
) -> None:
    with store.session() as session:
        session.add(JobEvent(job_id=job_id, message=message, level=level, type=type, data=data))


def set_status(
    store: FeedbackStore, job_id: str, status: str, message: str, *, only_from: tuple[str, ...] | None = None, **fields
) -> Job:
    """Move a job to `status` (when it is in one of `only_from`, if given) and log `message` as an event."""
    with store.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"fine-tuning job {job_id} does not exist")
        if only_from is not None and job.status not in only_from:
            return job
        job.status = status
        for key, value in fields.items():
            setattr(job, key, value)
        session.add(JobEvent(job_id=job_id, message=message, level="error" if status == JobStatus.FAILED else "info"))
        return job


def finish(store: FeedbackStore, job_id: str, status: str, *, error: dict | None = None, **fields) -> Job:
    """Mark a job succeeded, failed (with `error`) or cancelled, unless it already finished."""
    message = {JobStatus.SUCCEEDED: "The job has successfully completed", JobStatus.CANCELLED: "Job cancelled"}.get(
        status, ""
    )
    if error is not None:
        error = {"param": None, **error}
        message = f"Job failed: {error['message']}"
    return set_status(store, job_id, status, message, only_from=UNFINISHED, error=error, finished=now(), **fields)


def cancel_job(store: FeedbackStore, job_id: str) -> Job:
    """Cancel a job that has not finished (a finished one is returned unchanged)."""
    return finish(store, job_id, JobStatus.CANCELLED)


def cancel_by_request(store: FeedbackStore, job_id: str) -> tuple[Job, str]:
    """What a user's cancel does (the API and `ratchet train cancel` alike): a queued job is cancelled at
    once, a running one at its next training step; a finished one is Invalid (OpenAI answers 400).
    Returns (job, the status it had)."""
    job = get_job(store, job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        message = f"job {job_id} has already {job.status}: there is nothing to cancel"
        raise Invalid(message, code="job_already_finished")
    return cancel_job(store, job_id), job.status


def recover_interrupted(store: FeedbackStore, settings: Settings) -> list[str]:
    """Fail the jobs a restart interrupted (validating or running), removing their unregistered adapter."""
    from feedback.registry import AdapterRegistry

    with store.session() as session:
        stuck = list(
            session.scalars(select(Job.id).where(Job.status.in_((JobStatus.VALIDATING_FILES, JobStatus.RUNNING))))
        )
    registry = AdapterRegistry(store, settings.adapters_dir)
    for job_id in stuck:
        reserved = _reserved_adapter(store, job_id)
        if reserved and _unregistered(registry, reserved):
            shutil.rmtree(settings.adapters_dir / reserved, ignore_errors=True)
        message = "the service restarted while this job was running: nothing was registered; create the job again"
        finish(store, job_id, JobStatus.FAILED, error={"code": "interrupted", "message": message})
    return stuck


def _reserved_adapter(store: FeedbackStore, job_id: str) -> str | None:
    with store.session() as session:
        query = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "reserved")
        data = session.scalars(query.order_by(JobEvent.id.desc())).first()
    return (data or {}).get("adapter")


def _unregistered(registry, name: str) -> bool:
    try:
        registry.get(name)
    except LookupError:
        return True
    return False
