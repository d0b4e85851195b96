"""One fine-tuning run, start to finish: data -> TRL training -> a registered adapter.

This is what `ratchet train sft|dpo|kto` and the job runner (retrain/jobs.py) both do:

    data = data_from_store(store, "sft")            # or data_from_file("sft", path, validation_path)
    adapter = fine_tune(settings, "sft", data, config, suffix="support", parent="ft-0003")

The contract of `fine_tune`:
- the parent (when given) must be registered, built on the same base model, and intact (sha256);
- the adapter's name (`ft-NNNN[-suffix]`) is reserved before training by creating its folder; the adapter
  is written there and registered with its lineage, resolved hyperparameters, data snapshot, metrics and
  run folder (`<runs>/<job id or adapter name>/`: metrics.csv, loss.png);
- nothing half-written is registered: when training or registering fails, the adapter folder is removed
  (its number becomes free again, as no record ever held it) and the error propagates.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.datasets import build
from feedback.formats import Kind, content_hash
from feedback.ingest import FileProblem, ImportReport, read_rows
from feedback.models import Adapter
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore
from ratchet.settings import Settings
from retrain.hyperparams import TrainConfig
from retrain.rft_rows import rft_errors
from retrain.trainers import RewardFunction, TrainResult, train
from retrain.watch import MetricsCallback

MIN_TRAIN_ROWS = 1
NO_STORE_DATA = {
    "sft": "no training data in the store: rate some answers (thumbs up, scores of 4-5, corrections) or use --file",
    "dpo": "no preference pairs in the store: compare answers, correct some, or use --file",
    "kto": "no training data in the store: rate some answers or use --file",
}


class DataError(ValueError):
    """Training data that cannot be used; `lines` holds one `FILE:LINE: reason` per bad line."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []


@dataclass(frozen=True)
class TrainingData:
    method: Kind | str  # or "rft": rows of retrain/rft_rows.py
    train: list[dict[str, Any]]  # exchange-format rows (feedback.formats)
    heldout: list[dict[str, Any]]
    snapshot: dict[str, Any]  # what the adapter records: source ids or files, content hash, counts


def data_from_store(store: FeedbackStore, method: Kind | str, **options: Any) -> TrainingData:
    """The method's training set from the store (feedback.datasets: scrubbed, deduplicated, capped, split).

    For "rft" the rows are the prompts of every rated answer, once each, in the KTO set's split: the
    reward (a grader, or the learned ratings judge) then grades fresh answers to them."""
    if method == "rft":
        return _prompts_from_store(store, **options)
    dataset = build(store.engine, method, **options)
    if len(dataset.train) < MIN_TRAIN_ROWS:
        raise DataError(NO_STORE_DATA[method])
    snapshot = {"source": "store", **dataset.snapshot}
    return TrainingData(method, dataset.train, dataset.heldout, snapshot)


def _prompts_from_store(store: FeedbackStore, **options: Any) -> TrainingData:
    dataset = build(store.engine, "kto", **options)

    def prompts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        unique = {json.dumps(row["prompt"], sort_keys=True): row["prompt"] for row in rows}
        return [{"messages": messages} for messages in unique.values()]

    train, heldout = prompts(dataset.train), prompts(dataset.heldout)
    if not train:
        raise DataError("no rated prompts in the store yet: rate some answers, or use a training file")
    counts = {"train": len(train), "heldout": len(heldout)}
    snapshot = {"source": "store", **dataset.snapshot, "kind": "rft", "counts": counts}
    return TrainingData("rft", train, heldout, snapshot)


def data_from_file(method: Kind | str, path: Path | str, validation_path: Path | str | None = None) -> TrainingData:
    """Rows of an OpenAI-format JSONL file (and a validation file), every line validated (RFT rows for "rft").

    Raises DataError listing every bad line as `FILE:LINE: reason`; a row of another method's format is
    a bad line too (a DPO pair in an SFT file). Rows are used as given: no dedup, no split.
    """
    train_rows = _read_file(method, Path(path))
    heldout = _read_file(method, Path(validation_path)) if validation_path is not None else []
    snapshot = {
        "source": "file",
        "kind": method,
        "files": {"training": Path(path).name, "validation": Path(validation_path).name if validation_path else None},
        "sha256": content_hash({"train": train_rows, "heldout": heldout}),
        "counts": {"train": len(train_rows), "heldout": len(heldout)},
    }
    return TrainingData(method, train_rows, heldout, snapshot)


def _read_file(method: Kind | str, path: Path) -> list[dict[str, Any]]:
    if method == "rft":
        return _read_rft_file(path)
    report = ImportReport(path=str(path))
    try:
        rows = read_rows(path, report, count_tokens=None, max_tokens=None)
    except FileProblem as problem:
        raise DataError(f"{path}: {problem}") from None
    errors = list(report.errors)
    for line_number, row in rows:
        if row.kind != method:
            errors.append(
                f"{path}:{line_number}: a {row.kind.upper()} row, but {method} training takes {method.upper()} rows"
            )
    if errors:
        raise DataError(f"{path}: {len(errors)} bad line(s), nothing trained", errors)
    if len(rows) < MIN_TRAIN_ROWS:
        raise DataError(f"{path}: no rows to train on")
    return [row.data for _, row in sorted(rows, key=lambda item: item[0])]


def _read_rft_file(path: Path) -> list[dict[str, Any]]:
    try:
        rows, errors = rft_errors(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None
    if errors:
        raise DataError(f"{path}: {len(errors)} bad line(s), nothing trained", errors)
    return rows


def fine_tune(
    settings: Settings,
    method: Kind,
    data: TrainingData,
    config: TrainConfig | None = None,
    *,
    suffix: str | None = None,
    parent: str | None = None,
    job_id: str | None = None,
    progress: bool = True,
    on_metrics: MetricsCallback | None = None,
    on_start: Callable[[str, Path], None] | None = None,
    store: FeedbackStore | None = None,
    reward: RewardFunction | None = None,
) -> tuple[Adapter, TrainResult]:
    """Train on `data` and register the adapter; returns (its record, the training result).

    `on_start(name, run_dir)` is called once the name is reserved, before training starts.
    """
    config = config or TrainConfig.default(method)
    if config.method != method:
        raise ValueError(f"a {config.method} config was given to a {method} run")
    own_store = store is None
    store = store or FeedbackStore(settings.store_url)
    try:
        registry = AdapterRegistry(store, settings.adapters_dir)
        # 1) the parent: registered, same base model, files intact
        parent_dir = _parent_dir(registry, parent, settings.base_model_id) if parent else None
        # 2) reserve a name (its folder) and train into it
        _, name = registry.next_name(suffix)
        folder = settings.adapters_dir / name
        run_dir = settings.runs_dir / (job_id or name)
        try:
            if on_start is not None:
                on_start(name, run_dir)
            result = train(
                method,
                base_model_path=settings.base_model_path,
                train_rows=data.train,
                eval_rows=data.heldout,
                hyperparams=config.hyperparameters,
                out_dir=folder,
                parent_adapter_dir=parent_dir,
                run_dir=run_dir,
                resources=config.resources,
                progress=progress,
                on_metrics=on_metrics,
                trust_remote_code=settings.trust_remote_code,
                reward=reward,
            )
            # 3) register with everything needed to reproduce and judge it
            metrics = {**result.metrics, "run_dir": str(run_dir)}
            record = registry.register(
                name,
                method=method,
                base_model=settings.base_model_id,
                parent=parent,
                path=folder,
                hyperparameters=result.hyperparameters,
                data_snapshot=data.snapshot,
                metrics=metrics,
                job_id=job_id,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
            raise
        return record, result
    finally:
        if own_store:
            store.close()


def _parent_dir(registry: AdapterRegistry, parent: str, base_model_id: str) -> Path:
    record = registry.get(parent)
    if record.base_model != base_model_id:
        raise ValueError(
            f"adapter {parent} was trained on base {record.base_model} but the base model is {base_model_id}: "
            "continue from an adapter of this base, or train without --parent"
        )
    registry.verify(parent)
    return registry.resolve_path(parent)
