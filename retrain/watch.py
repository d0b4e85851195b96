"""Watching a training run: Trainer logs become metrics rows (for the CSV, the callback and the job's events)
and a rich progress bar on stderr; `summarise` keeps the last value of each summary metric per split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from retrain.runs import RunLog, normalise_log

MetricsCallback = Callable[[dict[str, Any]], None]
SUMMARY_KEYS = ("loss", "mean_token_accuracy", "rewards/margins", "rewards/accuracies", "kl", "reward")


def summarise(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The last value of each summary metric per split: `train_loss`, `eval_loss`, `eval_rewards/margins`…"""
    summary: dict[str, float] = {}
    for row in history:
        for key in SUMMARY_KEYS:
            if key in row:
                summary[f"{row['split']}_{key}"] = round(float(row[key]), 6)
    return summary


class Recorder:
    """Collects Trainer logs as metrics rows, feeds the CSV and the callback, and drives a progress bar."""

    def __init__(self, run_log: RunLog | None, on_metrics: MetricsCallback | None, progress: bool) -> None:
        self.run_log, self.on_metrics = run_log, on_metrics
        self.history: list[dict[str, Any]] = []
        self.steps = 0
        self._bar = ProgressBar() if progress else None

    def callback(self):
        from transformers import TrainerCallback

        recorder = self

        class RecorderCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if recorder._bar is not None:
                    recorder._bar.start(state.max_steps)

            def on_step_end(self, args, state, control, **kwargs):
                recorder.steps = state.global_step
                if recorder._bar is not None:
                    recorder._bar.advance(state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                row = normalise_log(dict(logs or {}), step=state.global_step, epoch=state.epoch)
                if row is not None:
                    recorder.add(row)

        return RecorderCallback()

    def add(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.run_log is not None:
            self.run_log.add(row)
        if self._bar is not None and "loss" in row:
            self._bar.describe(row)
        if self.on_metrics is not None:
            self.on_metrics(row)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class ProgressBar:
    """A rich progress bar on stderr: steps, loss, and the eval loss once there is one."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = None
        self._text = {"train": "", "eval": ""}

    def start(self, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("", total=total)

    def advance(self, step: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=step)

    def describe(self, row: dict[str, Any]) -> None:
        self._text[row["split"]] = f"{row['split']} loss {row['loss']:.4f}"
        if self._task is not None:
            self._progress.update(self._task, description="  ".join(t for t in self._text.values() if t))

    def stop(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None
