"""Train one LoRA adapter with TRL: `train("sft" | "dpo" | "kto" | "rft", ...) -> TrainResult`.

The contract:
- Rows come in the exchange formats of `feedback.datasets` / `feedback.formats`: OpenAI chat SFT rows
  (`{"messages", "weight"?}`), OpenAI DPO rows (`{"input", "preferred_output", "non_preferred_output"}`),
  TRL KTO rows (`{"prompt", "completion", "label"}`), OpenAI RFT rows (`{"messages", ...reference fields}`).
  They are converted to TRL's conversational shapes here.
- RFT trains with TRL's GRPOTrainer: `reward(answers, rows) -> scores` (a grader, retrain/grading.py)
  scores each sampled answer with its whole row as the grader's `item`; the KL reference is the starting
  policy (the base, or the parent adapter's base when continuing).
- SFT learns the answers only: each assistant message with weight 1 becomes one prompt/completion row
  (the conversation up to it, then it), so loss falls on answer tokens, and OpenAI's `weight: 0` (on a
  row or a message) means "context, not a target", exactly.
- Without a parent, a fresh LoRA adapter is trained on the base model; the reference of DPO / KTO is then
  the base (`ref_model=None`: the adapter-disabled model, no second copy in memory).
- With `parent_adapter_dir`, training continues from that adapter (its LoRA shape wins over the
  hyperparameters'). For DPO / KTO, TRL then keeps a frozen copy of the parent as the reference
  (adapter "ref"): the preference is learned relative to the policy being improved, as in standard
  DPO after SFT. The model is loaded afresh for each run, so that copy never collides with an old one
  (reusing one in-memory model fails in TRL with "Adapter with name 'ref' already exists"; docs/dev-log.md).
- `out_dir` receives `adapter_model.safetensors` + `adapter_config.json` (and PEFT's README.md), never a
  pickle: the trainer's own `save_model` (which writes training_args.bin) is not used.
- Per-step metrics go to `on_metrics(row)` and, with `run_dir`, to its metrics.csv; loss.png is drawn at
  the end (retrain/runs.py). `progress=True` shows a rich progress bar on stderr; nothing is printed on
  stdout.
- `Resources.torch_threads` and `Resources.nice` apply to the calling process and stay applied (niceness
  cannot be lowered again): run beside a server only in a process of its own (retrain/jobs.py does).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain.hyperparams import HYPERPARAMETERS, Hyperparameters, Method, Resources
from retrain.runs import RunLog
from retrain.watch import MetricsCallback, Recorder, summarise

RewardFunction = Callable[[list[str], list[dict[str, Any]]], list[float]]  # (answers, rows) -> scores


class TrainingError(RuntimeError):
    """Training could not run or finish; the message says why and what to do."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # summary: final train_* / eval_* values, steps, seconds, trained_tokens
    history: list[dict[str, Any]]  # every logged row (train and eval), as in metrics.csv
    hyperparameters: dict[str, Any]  # resolved: no "auto" left; what the registry records
    trained_tokens: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)  # what out_dir holds


def train(
    method: Method,
    *,
    base_model_path: str | Path,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]] = (),
    hyperparams: Hyperparameters | None = None,
    out_dir: str | Path,
    parent_adapter_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    resources: Resources | None = None,
    progress: bool = True,
    on_metrics: MetricsCallback | None = None,
    trust_remote_code: bool = False,
    reward: RewardFunction | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `train_rows` and save it into `out_dir`; see the module docstring."""
    hyperparams = hyperparams or HYPERPARAMETERS[method]()
    if hyperparams.method != method:
        raise TrainingError(f"{hyperparams.method} hyperparameters given to a {method} run")
    if (method == "rft") != (reward is not None):
        raise TrainingError("rft runs need a reward function (a grader), and only they take one")
    resources = resources or Resources()
    started = time.monotonic()
    # 0) share the machine: fewer threads and a lower priority when asked (both stay for this process)
    _apply_resources(resources)
    _quiet_libraries()
    # 1) data in TRL's shapes
    train_data, eval_data = to_trl_rows(method, train_rows), to_trl_rows(method, eval_rows)
    if not train_data:
        raise TrainingError(f"no {method} rows to train on")
    # 2) model and tokenizer (a trainable copy of the parent adapter, or the bare base)
    model, tokenizer, parent_lora = _load_model(base_model_path, parent_adapter_dir, trust_remote_code)
    n_parameters = (
        sum(p.numel() for p in model.get_base_model().parameters()) if parent_lora else model.num_parameters()
    )
    resolved = hyperparams.resolve(len(train_data), n_parameters)
    if parent_lora:  # continuing: the adapter keeps the shape it was trained with
        resolved = resolved.model_copy(update=parent_lora)
    # 3) the TRL trainer, with our callbacks in place of transformers' printing ones
    with tempfile.TemporaryDirectory(prefix="ratchet-trainer-") as scratch:
        run_log = RunLog(run_dir, method) if run_dir is not None else None
        recorder = Recorder(run_log, on_metrics, progress)
        try:
            trainer = _make_trainer(
                method, model, tokenizer, train_data, eval_data, resolved, resources, scratch, parent_lora is not None,
                reward,
            )  # fmt: skip
            trainer.add_callback(recorder.callback())
            # 4) the starting point's held-out loss / reward (the end is compared against it), then train
            start = trainer.evaluate() if eval_data else {}
            trainer.train()
            # 5) save the adapter only ("default"; never TRL's frozen "ref" copy), as safetensors
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            trainer.model.save_pretrained(out_dir, selected_adapters=["default"], safe_serialization=True)
        finally:
            recorder.stop()
            if run_log is not None:
                run_log.close()
        if run_log is not None and run_log.rows:
            run_log.plot(title=f"{method} on {Path(str(base_model_path)).name}")
    seconds = time.monotonic() - started
    metrics = summarise(recorder.history)
    trained_tokens = int(max((row.get("num_tokens", 0) for row in recorder.history), default=0))
    metrics.update({"steps": recorder.steps, "seconds": round(seconds, 2), "trained_tokens": trained_tokens})
    for key in ("eval_loss", "eval_reward"):
        if start.get(key) is not None:
            metrics[f"{key}_start"] = round(float(start[key]), 6)
    return TrainResult(
        metrics=metrics,
        history=recorder.history,
        hyperparameters=resolved.record(),
        trained_tokens=trained_tokens,
        seconds=seconds,
        files=sorted(p.name for p in Path(out_dir).iterdir()),
    )


# -- data ----------------------------------------------------------------------------------------


def to_trl_rows(method: Method, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exchange-format rows as TRL's conversational rows for `method`."""
    if method == "sft":
        return [pair for row in rows for pair in _sft_pairs(row)]
    if method == "dpo":
        return [
            {
                "prompt": _plain(row["input"]["messages"]),
                "chosen": _plain(row["preferred_output"]),
                "rejected": _plain(row["non_preferred_output"]),
            }
            for row in rows
        ]
    if method == "rft":
        # the whole row goes along as JSON text: rows differ in their reference fields, Arrow wants one shape
        return [{"prompt": _plain(row["messages"]), "item": json.dumps(row)} for row in rows]
    return [
        {"prompt": _plain(row["prompt"]), "completion": _plain(row["completion"]), "label": bool(row["label"])}
        for row in rows
    ]


def _sft_pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
    if row.get("weight", 1) == 0:
        return []
    messages = row["messages"]
    return [
        {"prompt": _plain(messages[:i]), "completion": _plain([message])}
        for i, message in enumerate(messages)
        if i > 0 and message["role"] == "assistant" and message.get("weight", 1) == 1
    ]


def _plain(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    # Arrow wants one struct shape per column: keep the keys chat templates read
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# -- model and trainer ---------------------------------------------------------------------------


def _apply_resources(resources: Resources) -> None:
    import torch

    if resources.torch_threads:
        torch.set_num_threads(resources.torch_threads)
    if resources.nice and hasattr(os, "nice"):
        os.nice(resources.nice)


def _quiet_libraries() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars: our own bar is the one to watch


def _load_model(base_model_path: str | Path, parent_adapter_dir: str | Path | None, trust_remote_code: bool):
    """(model, tokenizer, parent LoRA shape or None). The parent is loaded trainable under "default"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            base_model_path, dtype="float32", trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise TrainingError(f"cannot load the base model {base_model_path}: {error}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if parent_adapter_dir is None:
        return model, tokenizer, None
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(parent_adapter_dir), is_trainable=True)
    config = model.peft_config["default"]
    modules = config.target_modules
    shape = {
        "lora_r": config.r,
        "lora_alpha": int(config.lora_alpha),
        "lora_dropout": float(config.lora_dropout),
        "target_modules": sorted(modules) if isinstance(modules, set | list) else modules,
    }
    return model, tokenizer, shape


def lora_config(hp: Hyperparameters):
    """The LoRA adapter `hp` describes (what TRL gets as `peft_config`; benchmarks build the same)."""
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _common_args(hp: Hyperparameters, resources: Resources, output_dir: str, n_train: int, has_eval: bool) -> dict:
    import torch

    use_cpu = resources.device == "cpu" or (resources.device == "auto" and not torch.cuda.is_available())
    if resources.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("resources.device is cuda but no GPU is visible: use device cpu or auto")
    steps_per_epoch = max(1, -(-n_train // (hp.batch_size * hp.gradient_accumulation)))
    total_steps = steps_per_epoch * hp.epochs
    # GRPO's batches count sampled answers: a group of num_generations per prompt
    per_device = hp.batch_size * getattr(hp, "num_generations", 1)
    args: dict[str, Any] = {
        "output_dir": output_dir,
        "num_train_epochs": hp.epochs,
        "learning_rate": hp.learning_rate,
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": per_device,
        "gradient_accumulation_steps": hp.gradient_accumulation,
        "warmup_steps": hp.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        "max_length": hp.max_length,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": use_cpu,
        "gradient_checkpointing": resources.gradient_checkpointing,
        "bf16": resources.precision == "bf16" and not use_cpu,
        "fp16": resources.precision == "fp16" and not use_cpu,
    }
    if has_eval:
        # about eight evaluations over the run, and always one at the end
        interval = getattr(hp, "eval_interval", "auto")
        args.update(eval_strategy="steps", eval_steps=max(1, total_steps // 8) if interval == "auto" else interval)
    if hp.method == "rft":
        del args["max_length"]  # GRPO bounds the answer instead (max_completion_length)
    return args


def _make_trainer(method, model, tokenizer, train_data, eval_data, hp, resources, scratch, has_parent, reward=None):
    from datasets import Dataset

    common = _common_args(hp, resources, scratch, len(train_data), bool(eval_data))
    train_set = Dataset.from_list(train_data)
    eval_set = Dataset.from_list(eval_data) if eval_data else None
    peft_config = None if has_parent else lora_config(hp)
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer_class: Any = SFTTrainer
        extra: dict[str, Any] = {}
    elif method == "dpo":
        from trl import DPOConfig, DPOTrainer

        losses = ["sigmoid", "sft"] if hp.sft_weight > 0 else ["sigmoid"]
        weights = [1.0, hp.sft_weight] if hp.sft_weight > 0 else None
        config = DPOConfig(**common, beta=hp.beta, loss_type=losses, loss_weights=weights)
        trainer_class, extra = DPOTrainer, {"ref_model": None}
    elif method == "rft":
        from trl import GRPOConfig, GRPOTrainer

        config = GRPOConfig(
            **common,
            num_generations=hp.num_generations,
            max_completion_length=hp.max_completion_length,
            temperature=hp.temperature,
            beta=hp.beta,
        )
        trainer_class, extra = GRPOTrainer, {"reward_funcs": [_grpo_reward(reward)]}
    else:
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(
            **common,
            beta=hp.beta,
            desirable_weight=hp.desirable_weight,
            undesirable_weight=hp.undesirable_weight,
        )
        trainer_class, extra = KTOTrainer, {"ref_model": None}
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        **extra,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log on stdout, which belongs to the caller
    trainer.remove_callback(ProgressCallback)
    return trainer


def _grpo_reward(reward: RewardFunction):
    """The grader as TRL's reward function: answers in, one score each (its name labels the metrics)."""

    def grader(prompts, completions, item, **_columns) -> list[float]:
        answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(score) for score in reward(answers, [json.loads(row) for row in item])]

    return grader
