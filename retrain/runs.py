"""A training run's folder: per-step metrics as CSV while it trains, loss curves as PNG at the end.

`<runs>/<name>/` (name = the job id or the adapter name) holds:

    metrics.csv   one row per logged step, appended and flushed as training goes (`tail -f` works):
                  step, epoch, split (train / eval), then the method's metrics (METRIC_COLUMNS)
    loss.png      train and eval loss by step, beside the method's quality curve (token accuracy for
                  SFT, reward margin and accuracy for DPO / KTO, the
                  grader's mean reward for RFT: its reward curve)

Trainer logs name eval metrics `eval_loss`, `eval_rewards/margins`; rows here drop the prefix and say
`split=eval` instead, so train and eval share columns. Metrics outside the columns stay in the history
the trainer returns, not in the CSV. matplotlib is imported only to draw, with the Agg backend (no display).
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

METRICS_FILE, PLOT_FILE = "metrics.csv", "loss.png"
BASE_COLUMNS = ("step", "epoch", "split", "loss", "learning_rate", "grad_norm", "num_tokens")
PREFERENCE_COLUMNS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
METRIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": (*BASE_COLUMNS, "mean_token_accuracy", "entropy"),
    "dpo": (*BASE_COLUMNS, *PREFERENCE_COLUMNS),
    "kto": (*BASE_COLUMNS, *PREFERENCE_COLUMNS, "kl"),
    "rft": (*BASE_COLUMNS, "reward", "reward_std", "kl", "entropy", "completions/mean_length", "frac_reward_zero_std"),
}
# the curve drawn beside the loss, per method
QUALITY_CURVES: dict[str, tuple[str, ...]] = {
    "sft": ("mean_token_accuracy",),
    "dpo": ("rewards/margins", "rewards/accuracies"),
    "kto": ("rewards/margins", "kl"),
    "rft": ("reward",),
}


def normalise_log(logs: dict[str, Any], *, step: int, epoch: float | None) -> dict[str, Any] | None:
    """One Trainer log as a metrics row (`split` train or eval), or None for the end-of-run summary."""
    if any(key.startswith(("train_runtime", "train_samples", "eval_runtime")) for key in logs) and not (
        "loss" in logs or "eval_loss" in logs
    ):
        return None
    split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
    row: dict[str, Any] = {"step": step, "epoch": round(epoch, 4) if epoch is not None else None, "split": split}
    for key, value in logs.items():
        name = key.removeprefix("eval_") if split == "eval" else key
        if name in ("runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos"):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[name] = float(value)
    return row


class RunLog:
    """The metrics CSV of one run, written row by row. Use as a context manager, or call close()."""

    def __init__(self, run_dir: Path | str, method: str) -> None:
        self.dir = Path(run_dir)
        # a name is reused only after a failed run gave its number back: start that folder afresh
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.method = method
        self.columns = METRIC_COLUMNS[method]
        self.rows: list[dict[str, Any]] = []
        self._file: IO[str] | None = (self.dir / METRICS_FILE).open("w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._file.flush()

    @property
    def plot_path(self) -> Path:
        return self.dir / PLOT_FILE

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._file is not None:
            self._writer.writerow({k: _cell(v) for k, v in row.items()})
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def plot(self, title: str = "") -> Path:
        """Draw the loss curves (and the method's quality curve) into loss.png; returns its path."""
        return plot_metrics(self.rows, self.plot_path, self.method, title=title)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """The rows of a run's metrics.csv, numbers as floats (empty cells left out)."""
    with (Path(run_dir) / METRICS_FILE).open(newline="", encoding="utf-8") as handle:
        return [
            {k: v if k == "split" else float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)
        ]


def plot_metrics(rows: Iterable[dict[str, Any]], path: Path | str, method: str, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    figure, (loss_axes, quality_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("eval", "o-")):
        steps, values = _series(rows, split, "loss")
        if steps:
            loss_axes.plot(steps, values, style, label=f"{split} loss", markersize=3)
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("loss")
    for metric in QUALITY_CURVES[method]:
        for split, style in (("train", "-"), ("eval", "o-")):
            steps, values = _series(rows, split, metric)
            if steps:
                quality_axes.plot(steps, values, style, label=f"{split} {metric}", markersize=3)
    quality_axes.set_xlabel("step")
    quality_axes.set_title(" / ".join(QUALITY_CURVES[method]))
    for axes in (loss_axes, quality_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _series(rows: list[dict[str, Any]], split: str, metric: str) -> tuple[list[float], list[float]]:
    points = [
        (row["step"], row[metric])
        for row in rows
        if row.get("split") == split and isinstance(row.get(metric), float) and math.isfinite(row[metric])
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
