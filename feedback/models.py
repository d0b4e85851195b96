"""The store's tables: what ratchet remembers.

One SQLModel class per table. Alembic (feedback/migrations) owns the schema: change a class here, then
add a migration. Times are UNIX seconds as floats (`created`), ids are the strings the HTTP API shows
(`chatcmpl-…`, `fb-…`, `ftjob-…`), and anything shaped like OpenAI's JSON (messages, choices,
hyperparameters) is stored as JSON.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class AdapterStatus(StrEnum):
    """Where an adapter stands in the registry (stored as its plain string)."""

    CANDIDATE = "candidate"  # trained, not yet judged
    CURRENT = "current"  # served as "current"
    PREVIOUS = "previous"  # what a rollback returns to
    CANARY = "canary"  # served to a share of "current" traffic
    REJECTED = "rejected"  # failed the gate or was rolled back
    SUPERSEDED = "superseded"  # was previous, then pushed out by a newer promotion
    RETIRED = "retired"  # files kept, never served again


class JobStatus(StrEnum):
    """A fine-tuning job's status, OpenAI's values (stored as its plain string)."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    """`prefix-<24 hex>`: the id style of the OpenAI API (`chatcmpl-…`, `fb-…`)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _json(nullable: bool = False) -> Any:
    return Field(default=None if nullable else ..., sa_column=Column(JSON, nullable=nullable))


class Completion(SQLModel, table=True):
    """One chat completion as served: the request, every choice, who asked and which adapter answered."""

    __tablename__ = "completions"
    __table_args__ = (Index("ix_completions_created", "created"),)

    id: str = Field(primary_key=True, max_length=64)  # chatcmpl-…
    created: float = Field(default_factory=now)
    user: str | None = Field(default=None, max_length=256, index=True)
    api_key_id: str | None = Field(default=None, max_length=64)
    model: str = Field(max_length=128)  # the name the client asked for (current, base, ft-…)
    adapter: str = Field(max_length=128, index=True)  # the name that answered (base or ft-…)
    base_model: str = Field(max_length=256)
    route: str | None = Field(default=None, max_length=32)  # current / canary / direct
    messages: list = _json()  # request messages, OpenAI shape
    choices: list = _json()  # [{"index", "text", "finish_reason"}]
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # sampling parameters
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0


class Rating(SQLModel, table=True):
    """A user's judgement of one choice: thumbs (+1/-1) or a 1-5 score, with an optional correction."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("completion_id", "choice_index", "user", name="uq_rating_per_user"),)

    id: str = Field(primary_key=True, max_length=64)  # fb-…
    completion_id: str = Field(foreign_key="completions.id", index=True, max_length=64)
    choice_index: int = 0
    user: str = Field(default="", max_length=256)  # "" = anonymous; part of the upsert key
    rating: int | None = None  # +1 / -1
    score: int | None = None  # 1..5
    comment: str | None = None
    correction: str | None = None  # the answer the user wanted
    created: float = Field(default_factory=now)
    updated: float = Field(default_factory=now)


class Comparison(SQLModel, table=True):
    """A pairwise preference between two completions (the pair is stored sorted; winner is an id or tie)."""

    __tablename__ = "comparisons"
    __table_args__ = (UniqueConstraint("completion_a", "completion_b", "user", name="uq_comparison_per_user"),)

    id: str = Field(primary_key=True, max_length=64)  # cmp-…
    completion_a: str = Field(foreign_key="completions.id", max_length=64)
    completion_b: str = Field(foreign_key="completions.id", max_length=64)
    winner: str = Field(max_length=64)  # completion_a, completion_b or "tie"
    user: str = Field(default="", max_length=256)
    created: float = Field(default_factory=now)
    updated: float = Field(default_factory=now)


class Example(SQLModel, table=True):
    """An imported training row, kept in its OpenAI format (`kind` sft or dpo); duplicates share a hash."""

    __tablename__ = "examples"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16, index=True)  # sft / dpo
    data: dict = _json()
    content_hash: str = Field(max_length=64, unique=True)
    source: str = Field(default="", max_length=512)
    created: float = Field(default_factory=now)


class Adapter(SQLModel, table=True):
    """The adapter registry: every trained LoRA adapter with its lineage, data, files and verdicts."""

    __tablename__ = "adapters"

    name: str = Field(primary_key=True, max_length=128)  # ft-NNNN or ft-NNNN-<suffix>
    number: int = Field(unique=True)  # NNNN, the counter that keeps names unique
    base_model: str = Field(max_length=256)
    method: str = Field(max_length=16)  # sft / dpo / kto
    parent: str | None = Field(default=None, max_length=128)
    status: str = Field(default=AdapterStatus.CANDIDATE, max_length=32, index=True)
    path: str = Field(max_length=1024)  # relative to <home>/adapters
    sha256: str = Field(default="", max_length=64)  # of adapter_model.safetensors
    files: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # file -> sha256
    hyperparameters: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_snapshot: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    job_id: str | None = Field(default=None, max_length=64)
    report: str | None = Field(default=None, max_length=1024)
    decision: dict | None = _json(nullable=True)  # the gate's verdict with its reasons
    created: float = Field(default_factory=now)


class Job(SQLModel, table=True):
    """A fine-tuning job, shaped like OpenAI's fine_tuning.job."""

    __tablename__ = "jobs"

    id: str = Field(primary_key=True, max_length=64)  # ftjob-…
    method: str = Field(max_length=16)
    model: str = Field(max_length=128)  # base or the adapter it continues from
    status: str = Field(default=JobStatus.QUEUED, max_length=32, index=True)
    training_file: str | None = Field(default=None, max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    source: str = Field(default="store", max_length=16)  # store / file
    suffix: str | None = Field(default=None, max_length=64)
    seed: int = 0
    hyperparameters: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    grader: dict | None = _json(nullable=True)  # reinforcement jobs: OpenAI's grader object, validated
    fine_tuned_model: str | None = Field(default=None, max_length=128)
    error: dict | None = _json(nullable=True)
    trained_tokens: int | None = None
    created: float = Field(default_factory=now)
    started: float | None = None
    finished: float | None = None


class JobEvent(SQLModel, table=True):
    """Job progress: status changes, per-step metrics (type "metrics", data holds them), errors."""

    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=64)
    created: float = Field(default_factory=now)
    level: str = Field(default="info", max_length=16)
    type: str = Field(default="message", max_length=16)  # message / metrics
    message: str = ""
    data: dict | None = _json(nullable=True)


class File(SQLModel, table=True):
    """An uploaded file (OpenAI files API); its bytes live under <home>/files/."""

    __tablename__ = "files"

    id: str = Field(primary_key=True, max_length=64)  # file-…
    filename: str = Field(max_length=512)
    purpose: str = Field(max_length=32)
    bytes: int = 0
    path: str = Field(max_length=1024)
    created: float = Field(default_factory=now)


class EvalRun(SQLModel, table=True):
    """One offline evaluation of a candidate against a baseline, with the gate's decision."""

    __tablename__ = "eval_runs"

    id: str = Field(primary_key=True, max_length=64)  # eval-…
    candidate: str = Field(max_length=128, index=True)
    baseline: str = Field(max_length=128)
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    decision: str | None = Field(default=None, max_length=16)  # promote / reject
    reasons: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    report: str | None = Field(default=None, max_length=1024)
    created: float = Field(default_factory=now)


class ApiKey(SQLModel, table=True):
    """An API key, stored as its SHA-256 (the key itself is shown once, at creation)."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=64)  # key-…
    name: str = Field(default="", max_length=128)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)  # first characters, to tell keys apart in listings
    created: float = Field(default_factory=now)
    revoked: float | None = None


class ServingState(SQLModel, table=True):
    """Desired serving state as key -> JSON value (current, previous, canary), so a restart resumes it."""

    __tablename__ = "serving_state"

    key: str = Field(primary_key=True, max_length=64)
    value: dict | None = _json(nullable=True)
    updated: float = Field(default_factory=now)
