"""Fine-tuning jobs, shaped like OpenAI's: records in the store, and a runner that trains them one at a time.

The life of a job (`Job` row; its history is `JobEvent` rows):

    create_job()  validating_files -> queued        (the data is checked at once: bad -> failed, with reason)
    JobRunner     queued -> running -> succeeded    (fine_tuned_model = the registered adapter)
                                    -> failed       (error = {"code", "message", "param"})
    cancel_job()  queued -> cancelled at once; running -> cancelled, the training stops at its next step
    recover_interrupted()   jobs a restart left validating or running -> failed ("interrupted"), and the
                            adapter folder they had reserved is removed (it was never registered)

Each training runs as a Ray task (`@ray.remote`, `max_calls=1`: a fresh worker process that exits
afterwards), so a crash or a memory blow-up of training never takes the server down, niceness and
thread settings die with the worker, and on a cluster the same task lands on a GPU worker
(`Resources.num_cpus` / `num_gpus`). The task reads the job from the store, trains with
retrain/finetune.py and writes its events (status, one "metrics" event per logged step) straight to the
store; the runner only starts tasks and records how they ended. Ray must be initialised by the caller.

A job's `hyperparameters` are overrides of the method's defaults (retrain/hyperparams.py field names);
on success they are replaced by the resolved values, as OpenAI reports them. `model` is "base" or the
adapter to continue from. File jobs name uploaded files (`File` rows, whose `path` is relative to the
workspace, or absolute).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from feedback.errors import Invalid, NotFound
from feedback.models import AdapterStatus, File, Job, JobEvent, JobStatus, new_id, now
from feedback.store import FeedbackStore
from ratchet.settings import Settings
from retrain.finetune import DataError, TrainingData, data_from_file, data_from_store
from retrain.hyperparams import METHODS, ConfigError, Resources, TrainConfig

UNFINISHED = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING)
DEFAULT_RESOURCES = Resources(device="auto", torch_threads=1, nice=10, num_cpus=1)
CANCEL_GRACE_SECONDS = 30.0  # a cancelled task stops at its next step; after this it is killed


class JobCancelled(Exception):
    """Raised inside the training task when its job was cancelled: training stops, nothing is registered."""


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
) -> Job:
    """Record a job and validate its data now: returns it queued, or failed with the reason."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
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
        return data_from_store(store, job.method)
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


# -- the training task (runs in a Ray worker process of its own) -------------------------------------


def run_job(settings: Settings, job_id: str, resources: Resources) -> dict[str, Any]:
    """Train one job in this process: data, TRL, registration, events. Returns the outcome for the runner."""
    from retrain.finetune import fine_tune

    store = FeedbackStore(settings.store_url)
    try:
        job = get_job(store, job_id)
        config = TrainConfig.default(job.method).with_overrides({**job.hyperparameters, "seed": job.seed})
        config = config.model_copy(update={"resources": resources})
        data = load_job_data(store, settings, job)

        def on_start(name: str, run_dir: Path) -> None:
            add_event(store, job_id, f"Training {name}", type="reserved", data={"adapter": name})

        def on_metrics(row: dict[str, Any]) -> None:
            # one event per logged step (OpenAI's "metrics" events), and the cancel check
            add_event(
                store, job_id, f"Step {row['step']}: {row['split']} loss {row.get('loss')}", type="metrics", data=row
            )
            if get_job(store, job_id).status == JobStatus.CANCELLED:
                raise JobCancelled(job_id)

        parent = None if job.model in ("base", "", None) else job.model
        record, result = fine_tune(
            settings,
            job.method,
            data,
            config,
            suffix=job.suffix,
            parent=parent,
            job_id=job_id,
            progress=False,
            on_metrics=on_metrics,
            on_start=on_start,
            store=store,
        )
        return {
            "adapter": record.name,
            "trained_tokens": result.trained_tokens,
            "hyperparameters": result.hyperparameters,
        }
    except JobCancelled:
        return {"cancelled": True}
    finally:
        store.close()


_REMOTE_CACHE: dict[tuple[float, float], Any] = {}


def _remote_run_job(resources: Resources):
    import ray

    key = (resources.num_cpus, resources.num_gpus)
    if key not in _REMOTE_CACHE:
        # max_calls=1: a fresh process per training, gone afterwards (with its niceness and memory)
        _REMOTE_CACHE[key] = ray.remote(num_cpus=key[0], num_gpus=key[1], max_calls=1, max_retries=0)(run_job)
    return _REMOTE_CACHE[key]


# -- the runner ------------------------------------------------------------------------------------


class JobRunner:
    """Takes queued jobs one at a time, oldest first, and runs each as a Ray task; `start()` runs it in a
    background thread, `run_once()` runs the next job in the caller's thread (tests, scripts)."""

    def __init__(self, settings: Settings, *, resources: Resources = DEFAULT_RESOURCES, poll_seconds: float = 1.0):
        self.settings, self.resources, self.poll_seconds = settings, resources, poll_seconds
        self.store = FeedbackStore(settings.store_url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        recover_interrupted(self.store, self.settings)
        self._thread = threading.Thread(target=self._loop, name="ratchet-job-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.store.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.run_once() is None:
                self._stop.wait(self.poll_seconds)

    def run_once(self) -> str | None:
        """Run the oldest queued job to its end; returns its id, or None when none was queued."""
        with self.store.session() as session:
            query = select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created, Job.id)
            job_id = session.scalars(query).first()
        if job_id is None:
            return None
        job = set_status(
            self.store,
            job_id,
            JobStatus.RUNNING,
            "Fine-tuning job started",
            only_from=(JobStatus.QUEUED,),
            started=now(),
        )
        if job.status != JobStatus.RUNNING:  # cancelled between the query and now
            return job_id
        self._supervise(job_id)
        return job_id

    def _supervise(self, job_id: str) -> None:
        import ray

        ref = _remote_run_job(self.resources).remote(self.settings, job_id, self.resources)
        cancelled_at: float | None = None
        while not ray.wait([ref], timeout=self.poll_seconds)[0]:
            if cancelled_at is None and (
                self._stop.is_set() or get_job(self.store, job_id).status == JobStatus.CANCELLED
            ):
                cancelled_at = time.monotonic()
            if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_SECONDS:
                ray.cancel(ref, force=True)  # stuck outside the training loop: kill the worker
        try:
            outcome = ray.get(ref)
        except Exception as error:  # the task raised, was killed, or its process died
            self._failed(job_id, error)
            return
        if outcome.get("cancelled"):
            finish(self.store, job_id, JobStatus.CANCELLED)
            return
        job = finish(
            self.store,
            job_id,
            JobStatus.SUCCEEDED,
            fine_tuned_model=outcome["adapter"],
            trained_tokens=outcome["trained_tokens"],
            hyperparameters={k: v for k, v in outcome["hyperparameters"].items() if k != "method"},
        )
        if job.status != JobStatus.SUCCEEDED:  # cancelled while it registered: the adapter must not be served
            from feedback.registry import AdapterRegistry

            AdapterRegistry(self.store, self.settings.adapters_dir).set_status(
                outcome["adapter"], AdapterStatus.RETIRED
            )

    def _failed(self, job_id: str, error: Exception) -> None:
        import ray.exceptions

        cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
        if isinstance(cause, ray.exceptions.TaskCancelledError):
            finish(self.store, job_id, JobStatus.CANCELLED)
            return
        if isinstance(cause, ray.exceptions.WorkerCrashedError | ray.exceptions.OutOfMemoryError):
            reason = f"the training process died ({type(cause).__name__}): try a smaller batch_size or max_length"
        else:
            reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        code = "invalid_training_data" if isinstance(cause, DataError | ConfigError) else "training_failed"
        finish(self.store, job_id, JobStatus.FAILED, error={"code": code, "message": reason})
