"""Training configuration as data: hyperparameters per method, the resources a run may use, YAML configs.

The contract:
- `SFTHyperparameters`, `DPOHyperparameters`, `KTOHyperparameters`, `RFTHyperparameters` (pydantic): every
  field has a default and a help text (`description`). `epochs`, `learning_rate` and `batch_size` may be
  `"auto"`; `resolve()` then derives them from the dataset size and the model size, the way OpenAI's
  fine-tuning does, and returns a copy with concrete numbers only: that copy is what an adapter records.
- `Resources`: where and how gently a run trains (device, precision, torch threads, `nice`, the Ray
  task's `num_cpus` / `num_gpus`). Not a hyperparameter: it changes speed, never the result.
- `TrainConfig` = method + hyperparameters + resources; `load_config(path)` reads the YAML files in
  `configs/train/`, `TrainConfig.with_overrides()` applies command-line flags on top.

The defaults are tuned for ratchet's tiny demo model and are strong enough to show learning (LoRA on all
linear layers, r 8, alpha 16, a learning rate of a few 1e-3; docs/dev-log.md). On a real base model use
the `*_gpu.yaml` configs, whose rates are ten times lower, or let `learning_rate: auto` pick by size.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Method = Literal["sft", "dpo", "kto", "rft"]
METHODS: tuple[Method, ...] = ("sft", "dpo", "kto", "rft")
Auto = Literal["auto"]

# OpenAI's rule for n_epochs="auto": three passes, more for small sets (so the model sees at least ~100
# examples), fewer for huge ones, between 1 and 25 epochs.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS = 1, 25
MAX_AUTO_BATCH = 32
# learning_rate="auto": LoRA tolerates far higher rates on a tiny model than on a billion parameters.
# (parameters below, rate) for SFT; preference methods take half, as they drift off fluency sooner.
AUTO_LR_BY_SIZE: tuple[tuple[float, float], ...] = ((50e6, 2e-3), (2e9, 5e-4), (float("inf"), 2e-4))
PREFERENCE_LR_FACTOR = 0.5


class Hyperparameters(BaseModel):
    """What every method shares: the schedule and the LoRA adapter."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: Annotated[int, Field(ge=1, le=100)] | Auto = Field(
        "auto", description="Passes over the training set; auto = 3, more for small sets (up to 25)."
    )
    learning_rate: Annotated[float, Field(gt=0, lt=1)] | Auto = Field(
        "auto", description="Peak learning rate (linear decay); auto = by model size (2e-3 for the demo model)."
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        "auto", description="Examples per optimizer step (per device); auto = ~n/10, a power of 2, at most 32."
    )
    gradient_accumulation: int = Field(
        1, ge=1, description="Batches summed before each optimizer step (effective batch = batch_size x this)."
    )
    max_length: int = Field(512, ge=16, description="Longest sequence in tokens (prompt + answer); longer are cut.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming the learning rate up.")
    lora_r: int = Field(8, ge=1, le=256, description="LoRA rank: the adapter's capacity (and size).")
    lora_alpha: int = Field(
        16, ge=1, description="LoRA scale alpha; the update is scaled by alpha / r (usually 2 x r)."
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path; helps large, noisy sets.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Layers that get LoRA: all-linear, or a list of module names (q_proj, ...)."
    )
    seed: int = Field(0, description="Seed for data order, LoRA initialisation and dropout.")

    # -- auto values ---------------------------------------------------------------------------
    def resolve(self, n_train: int, n_parameters: int) -> Hyperparameters:
        """A copy with every "auto" replaced by a number chosen from the data and model size."""
        if n_train < 1:
            raise ValueError("cannot resolve hyperparameters for an empty training set")
        update: dict[str, Any] = {}
        if self.epochs == "auto":
            update["epochs"] = auto_epochs(n_train)
        if self.batch_size == "auto":
            update["batch_size"] = auto_batch_size(n_train)
        if self.learning_rate == "auto":
            update["learning_rate"] = auto_learning_rate(n_parameters, preference=self.method in ("dpo", "kto"))
        return self.model_copy(update=update)

    method: ClassVar[Method]  # each subclass names its training method

    def record(self) -> dict[str, Any]:
        """What the registry stores: every field plus the method (call on a resolved copy)."""
        return {"method": self.method, **self.model_dump()}


class SFTHyperparameters(Hyperparameters):
    """Supervised fine-tuning: learn to write the given answers (loss on answer tokens only)."""

    method: ClassVar[Method] = "sft"


class DPOHyperparameters(Hyperparameters):
    """Direct preference optimisation on (prompt, chosen, rejected) pairs."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (lower = further).")
    sft_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of an SFT loss on the chosen answer added to DPO's; keeps tiny models fluent (0 = off).",
    )

    method: ClassVar[Method] = "dpo"


class KTOHyperparameters(Hyperparameters):
    """KTO on unpaired answers labelled desirable or not."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (lower = further).")
    desirable_weight: float = Field(
        1.0, gt=0, description="Loss weight of desirable answers (raise when they are rare)."
    )
    undesirable_weight: float = Field(1.0, gt=0, description="Loss weight of undesirable answers.")

    @field_validator("batch_size")
    @classmethod
    def _pairs_for_kl(cls, value: int | str) -> int | str:
        # KTO estimates its KL term from mismatched (prompt, answer) pairs inside a batch
        if value != "auto" and value < 2:
            raise ValueError("KTO needs a batch_size of at least 2 (its KL estimate pairs examples in a batch)")
        return value

    def resolve(self, n_train: int, n_parameters: int) -> Hyperparameters:
        resolved = super().resolve(n_train, n_parameters)
        return resolved.model_copy(update={"batch_size": max(2, resolved.batch_size)})

    method: ClassVar[Method] = "kto"


class RFTHyperparameters(Hyperparameters):
    """Reinforcement fine-tuning with GRPO: sample a group of answers per prompt, grade them, and move the
    policy toward the answers graded above their group's mean. `batch_size` counts prompts, as OpenAI's does.
    """

    num_generations: int = Field(
        8, ge=2, le=64, description="Answers sampled per prompt (GRPO's group; OpenAI's compute_multiplier scales it)."
    )
    max_completion_length: int = Field(96, ge=1, le=4096, description="Longest sampled answer, in tokens.")
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature of the group's answers.")
    beta: float = Field(
        0.04, ge=0, description="Weight of the KL penalty toward the starting policy (0 = none; keeps answers fluent)."
    )
    eval_interval: Annotated[int, Field(ge=1)] | Auto = Field(
        "auto", description="Steps between held-out evaluations; auto = about 8 per run."
    )

    method: ClassVar[Method] = "rft"


HYPERPARAMETERS: dict[Method, type[Hyperparameters]] = {
    "sft": SFTHyperparameters,
    "dpo": DPOHyperparameters,
    "kto": KTOHyperparameters,
    "rft": RFTHyperparameters,
}


def auto_epochs(n_train: int) -> int:
    """OpenAI's rule: 3 epochs, raised so small sets see ~100 examples, lowered for very large sets."""
    if n_train * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, max(TARGET_EPOCHS, MIN_TARGET_EXAMPLES // n_train))
    if n_train * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_AUTO_EPOCHS, MAX_TARGET_EXAMPLES // n_train)
    return TARGET_EPOCHS


def auto_batch_size(n_train: int) -> int:
    """About ten optimizer steps per epoch on small sets (small sets learn from many small steps), as a
    power of two, at most 32."""
    size = 1
    while size * 2 <= min(MAX_AUTO_BATCH, n_train / 10):
        size *= 2
    return size


def auto_learning_rate(n_parameters: int, *, preference: bool = False) -> float:
    rate = next(rate for limit, rate in AUTO_LR_BY_SIZE if n_parameters < limit)
    return rate * PREFERENCE_LR_FACTOR if preference else rate


@functools.lru_cache(maxsize=8)
def parameter_count(model_dir: str) -> int | None:
    """Parameters of a local model, summed from its safetensors headers (no weights loaded); None if unknown."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        total += sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")
    return total or None


def base_learning_rate(model_dir: str, method: str) -> float | None:
    """The rate "auto" picks for this base model and method (what OpenAI's learning_rate_multiplier 1 means)."""
    count = parameter_count(model_dir)
    return None if count is None else auto_learning_rate(count, preference=method in ("dpo", "kto"))


# -- resources ---------------------------------------------------------------------------------------


class Resources(BaseModel):
    """Where a run trains and how much of the machine it takes; never changes what it learns."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="cpu, cuda, or auto (cuda when available).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision; bf16 on modern GPUs, fp32 on CPU."
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch's default (all cores).")
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Raise the training process's niceness by this (Unix), to yield the CPU to a server beside it.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less memory, slower steps (TRL's default is on; "
        "worth it for billions of parameters, not for the demo model: benchmarks/bench_training.py).",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs the Ray training task reserves.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs the Ray training task reserves.")


# -- configs -----------------------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """One training recipe: the method, its hyperparameters and the resources (a `configs/train/*.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    method: Method
    hyperparameters: SFTHyperparameters | DPOHyperparameters | KTOHyperparameters | RFTHyperparameters
    resources: Resources = Field(default_factory=Resources)

    @classmethod
    def default(cls, method: Method) -> TrainConfig:
        return cls(method=method, hyperparameters=HYPERPARAMETERS[method]())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Validate a config mapping; errors name the field (`hyperparameters.lora_r: ...`)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with method, hyperparameters, resources")
        method = data.get("method")
        if method not in METHODS:
            raise ConfigError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
        try:
            return cls(
                method=method,
                hyperparameters=HYPERPARAMETERS[method].model_validate(data.get("hyperparameters") or {}),
                resources=Resources.model_validate(data.get("resources") or {}),
                **{k: v for k, v in data.items() if k not in ("method", "hyperparameters", "resources")},
            )
        except ValidationError as error:
            raise ConfigError(f"{source}: {_first_error(error)}") from None

    def with_overrides(self, hyperparameters: dict[str, Any] | None = None, **resources: Any) -> TrainConfig:
        """A copy with the given fields replaced (None values are ignored: flags the user did not give)."""
        hp = {k: v for k, v in (hyperparameters or {}).items() if v is not None}
        rs = {k: v for k, v in resources.items() if v is not None}
        try:
            return TrainConfig(
                method=self.method,
                hyperparameters=type(self.hyperparameters).model_validate({**self.hyperparameters.model_dump(), **hp}),
                resources=Resources.model_validate({**self.resources.model_dump(), **rs}),
            )
        except ValidationError as error:
            raise ConfigError(_first_error(error)) from None


class ConfigError(ValueError):
    """A config file or flag with a value out of range or of the wrong kind; the message names it."""


def load_config(path: Path | str, method: Method | None = None) -> TrainConfig:
    """Read a YAML training config; with `method`, refuse a config written for another method."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    config = TrainConfig.from_dict(data, source=str(path))
    if method is not None and config.method != method:
        raise ConfigError(f"{path} is a {config.method} config: use it with `ratchet train {config.method}`")
    return config


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    # unions add their member to the location ("constrained-int", "literal['auto']"): keep field names only
    where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or (p.isidentifier() and p not in _TYPES))
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {first.get('input')!r})"


_TYPES = ("int", "float", "str", "bool")
