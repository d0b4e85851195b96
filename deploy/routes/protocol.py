"""The fine-tuning API's contract: pydantic models shaped like OpenAI's objects.

Requests ignore unknown fields, as OpenAI does (`integrations`, `metadata` are accepted and not kept).
Responses carry the fields the official `openai` SDK reads: `object` names the kind ("file",
"fine_tuning.job", "fine_tuning.job.event", "fine_tuning.job.checkpoint", "list"), times are UNIX
seconds, and lists have `data` and `has_more` for the SDK's cursor pagination (`after` = last id).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**31 - 1


# -- files ----------------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# -- fine-tuning jobs: requests --------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MethodParams(_Request):
    hyperparameters: dict[str, Any] | None = None


class ReinforcementParams(MethodParams):
    grader: dict[str, Any] = Field(description="OpenAI's grader object (retrain/graders.py validates it).")


class MethodRequest(_Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodParams | None = None
    dpo: MethodParams | None = None
    reinforcement: ReinforcementParams | None = None


class JobCreateRequest(_Request):
    model: str = Field(min_length=1, description="base, current, or a registered adapter to continue from.")
    training_file: str | None = Field(None, description="An uploaded file id; omitted: the store's feedback.")
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    hyperparameters: dict[str, Any] | None = Field(None, description="Legacy: supervised hyperparameters.")
    method: MethodRequest | None = None


# -- fine-tuning jobs: responses -------------------------------------------------------------------


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: int | Literal["auto"] | None = "auto"
    batch_size: int | Literal["auto"] | None = "auto"
    learning_rate_multiplier: float | Literal["auto"] | None = "auto"
    beta: float | Literal["auto"] | None = None  # dpo (and kto) only


class MethodHyperparameters(BaseModel):
    hyperparameters: JobHyperparameters


class ReinforcementHyperparameters(BaseModel):
    n_epochs: int | Literal["auto"] | None = "auto"
    batch_size: int | Literal["auto"] | None = "auto"
    learning_rate_multiplier: float | Literal["auto"] | None = "auto"
    compute_multiplier: float | Literal["auto"] | None = "auto"  # answers per prompt / the default 8
    eval_interval: int | Literal["auto"] | None = "auto"
    eval_samples: int | Literal["auto"] | None = "auto"
    reasoning_effort: str | None = "default"


class ReinforcementMethod(BaseModel):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters


class JobMethod(BaseModel):
    type: str
    supervised: MethodHyperparameters | None = None
    dpo: MethodHyperparameters | None = None
    kto: MethodHyperparameters | None = None  # jobs the loop creates from the store
    reinforcement: ReinforcementMethod | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: JobHyperparameters
    method: JobMethod
    model: str
    organization_id: str = "ratchet"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str | None = None
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventObject]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# -- graders (OpenAI's /v1/fine_tuning/alpha/graders) ---------------------------------------------


class GraderRunRequest(_Request):
    grader: dict[str, Any]
    model_sample: str = Field(description="The answer to grade: the `sample` namespace (output_text, output_json).")
    item: dict[str, Any] | None = Field(None, description="The dataset row: the `item` namespace.")


class GraderValidateRequest(_Request):
    grader: dict[str, Any]


class GraderValidateResponse(BaseModel):
    grader: dict[str, Any]


class GraderRunMetadata(BaseModel):
    errors: dict[str, Any]
    execution_time: float
    name: str
    sampled_model_name: str | None = None
    scores: dict[str, Any]
    token_usage: int | None = None
    type: str


class GraderRunResponse(BaseModel):
    metadata: GraderRunMetadata
    model_grader_token_usage_per_model: dict[str, Any] = Field(default_factory=dict)
    reward: float
    sub_rewards: dict[str, Any] = Field(default_factory=dict)
