"""JobRunner: trains queued fine-tuning jobs one at a time, oldest first, each as a Ray task.

Each training runs as a Ray task (`@ray.remote`, `max_calls=1`: a fresh worker process that exits
afterwards), so a crash or a memory blow-up of training never takes the server down, niceness and
thread settings die with the worker, and on a cluster the same task lands on a GPU worker
(`Resources.num_cpus` / `num_gpus`). The task (`run_job`) reads the job from the store, trains with
retrain/finetune.py and writes its events (status, one "metrics" event per logged step) straight to the
store; the runner only starts tasks and records how they ended (retrain/jobs.py holds the records). Ray
must be initialised by the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from feedback.models import AdapterStatus, Job, JobStatus, now
from feedback.store import FeedbackStore
from ratchet.settings import Settings
from retrain.finetune import DataError
from retrain.graders import parse_grader
from retrain.grading import GraderFailed, GradingContext, training_reward
from retrain.hyperparams import ConfigError, Resources, TrainConfig
from retrain.jobs import add_event, finish, get_job, load_job_data, recover_interrupted, set_status
from retrain.trainers import RewardFunction

# A reward kind the layers above retrain supply (the loop's learned ratings judge: eval/judge.py), by the
# `type` a job's grader names: (settings, store, grader) -> (answers, rows) -> rewards.
RewardFactory = Callable[[Settings, FeedbackStore, dict[str, Any]], RewardFunction]
DEFAULT_RESOURCES = Resources(device="auto", torch_threads=1, nice=10, num_cpus=1)
CANCEL_GRACE_SECONDS = 30.0  # a cancelled task stops at its next step; after this it is killed


class JobCancelled(Exception):
    """Raised inside the training task when its job was cancelled: training stops, nothing is registered."""


# -- the training task (runs in a Ray worker process of its own) -------------------------------------


def run_job(
    settings: Settings, job_id: str, resources: Resources, rewards: dict[str, RewardFactory] | None = None
) -> dict[str, Any]:
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
        reward = _reward(job.grader, settings, store, rewards or {}) if job.method == "rft" else None
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
            reward=reward,
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


def _reward(grader: dict[str, Any], settings: Settings, store: FeedbackStore, rewards: dict[str, RewardFactory]):
    """The job's reward: one of the runner's own reward kinds, or an OpenAI grader (retrain/grading.py)."""
    if grader.get("type") in rewards:
        return rewards[grader["type"]](settings, store, grader)
    return training_reward(parse_grader(grader), GradingContext.from_settings(settings))


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

    def __init__(
        self,
        settings: Settings,
        *,
        resources: Resources = DEFAULT_RESOURCES,
        poll_seconds: float = 1.0,
        rewards: dict[str, RewardFactory] | None = None,
    ):
        self.settings, self.resources, self.poll_seconds = settings, resources, poll_seconds
        self.rewards = rewards or {}  # reward kinds of the layers above (deploy passes the ratings judge)
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

        ref = _remote_run_job(self.resources).remote(self.settings, job_id, self.resources, self.rewards)
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
        code = "grader_failed" if isinstance(cause, GraderFailed) else code
        finish(self.store, job_id, JobStatus.FAILED, error={"code": code, "message": reason})
