"""`ratchet train sft|dpo|kto` and `ratchet train cancel`.

The hyperparameter flags are generated from the method's model in retrain/hyperparams.py (`--epochs`,
`--lora-r`, `--beta`, ...), one per field with its help text, so a new field needs no edit here.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ratchet.cli.common import CliError, Home, err, open_store, settings_for, workspace

app = typer.Typer(help="Train a LoRA adapter with TRL (SFT, DPO or KTO).", no_args_is_help=True)

TrainFile = Annotated[
    Path | None, typer.Option("--file", help="Train on this OpenAI-format JSONL (validated) instead of the store.")
]
FromStore = Annotated[bool, typer.Option("--from-store", help="Build the data from the store's feedback [default].")]
ValidationFile = Annotated[Path | None, typer.Option("--validation-file", help="JSONL for eval loss (with --file).")]
TrainConfigFile = Annotated[
    Path | None, typer.Option("--config", help="YAML recipe, e.g. configs/train/sft_lora_cpu.yaml.")
]
Suffix = Annotated[str | None, typer.Option("--suffix", help="Name the adapter ft-NNNN-<suffix> ([a-z0-9-]).")]
Parent = Annotated[str | None, typer.Option("--parent", help="Continue from this registered adapter (ft-NNNN).")]

SUMMARIES = {
    "sft": "Supervised fine-tuning on good answers and corrections; prints the adapter name last on stdout.",
    "dpo": "Direct preference optimisation on answer pairs; prints the adapter name last on stdout.",
    "kto": "KTO on unpaired thumbs up / down; prints the adapter name last on stdout.",
}


def _flag_type(default: Any) -> type:
    """int and float fields take numbers; the rest ("auto"-able, module lists) take text pydantic validates."""
    return type(default) if type(default) in (int, float) else str


def _hyperparameter_options(method: str) -> list[inspect.Parameter]:
    from retrain.hyperparams import HYPERPARAMETERS

    options = []
    for name, field in HYPERPARAMETERS[method].model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = Annotated[_flag_type(field.default) | None, typer.Option(flag, help=field.description)]
        options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return options


def _train_command(method: str) -> Callable[..., None]:
    """`ratchet train <method>`: the fixed options, then one flag per hyperparameter of the method."""
    fixed: dict[str, Any] = {
        "home": Home,
        "file": TrainFile,
        "from_store": FromStore,
        "validation_file": ValidationFile,
        "config": TrainConfigFile,
        "suffix": Suffix,
        "parent": Parent,
    }
    hyperparameters = _hyperparameter_options(method)
    names = [p.name for p in hyperparameters]

    def command(**given: Any) -> None:
        chosen = {name: given.pop(name) for name in names}
        if isinstance(chosen.get("target_modules"), str) and "," in chosen["target_modules"]:
            chosen["target_modules"] = [m.strip() for m in chosen["target_modules"].split(",") if m.strip()]
        given["from_store"] = bool(given["from_store"])
        train(method, hyperparameters=chosen, **given)

    parameters = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=False if name == "from_store" else None, annotation=annotation
        )
        for name, annotation in fixed.items()
    ] + hyperparameters
    command.__signature__ = inspect.Signature(parameters)  # typer reads the options from the signature
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = SUMMARIES[method]
    return command


for _method in SUMMARIES:
    app.command(_method)(_train_command(_method))


def train(
    method: str,
    *,
    home: Path | None,
    file: Path | None,
    from_store: bool,
    validation_file: Path | None,
    config: Path | None,
    suffix: str | None,
    parent: str | None,
    hyperparameters: dict[str, Any],
) -> None:
    """Build the data, train in this process, register the adapter, print its name (retrain/finetune.py)."""
    from retrain.finetune import DataError, data_from_file, data_from_store, fine_tune
    from retrain.hyperparams import ConfigError, TrainConfig, load_config
    from retrain.trainers import TrainingError

    if file is not None and from_store:
        raise CliError("use --from-store or --file, not both")
    if validation_file is not None and file is None:
        raise CliError("--validation-file goes with --file (the store holds its own held-out split)")
    settings = settings_for(home)
    try:
        recipe = load_config(config, method) if config else TrainConfig.default(method)
        recipe = recipe.with_overrides(hyperparameters)
    except ConfigError as error:
        raise CliError(str(error)) from error
    if not settings.base_model and not (settings.demo_model_dir / "config.json").is_file():
        raise CliError(f"no base model at {settings.demo_model_dir}: run `ratchet init --home {settings.home}` first")
    with open_store(settings) as store:
        try:
            drop = settings.train_drop_disputed
            data = (
                data_from_file(method, file, validation_file)
                if file
                else data_from_store(store, method, drop_disputed=drop)
            )
        except DataError as error:
            for line in error.lines:
                sys.stderr.write(line + "\n")
            raise CliError(str(error)) from error
        where = str(file) if file else "the store"
        err.print(f"{method}: {len(data.train)} training row(s), {len(data.heldout)} held out, from {where}")
        try:
            record, result = fine_tune(settings, method, data, recipe, suffix=suffix, parent=parent, store=store)
        except TrainingError as error:
            raise CliError(str(error)) from error
    summary = ", ".join(
        f"{key} {result.metrics[key]:.4g}" for key in ("train_loss", "eval_loss") if key in result.metrics
    )
    err.print(f"trained {record.name} in {result.seconds:.1f}s ({result.metrics['steps']} steps; {summary})")
    err.print(f"metrics and loss curves: {record.metrics['run_dir']}")
    print(record.name)


@app.command("cancel")
def train_cancel(
    job_id: Annotated[str, typer.Argument(help="Fine-tuning job id (ftjob-…).")], home: Home = None
) -> None:
    """Cancel a fine-tuning job: a queued one at once, a running one at its next training step."""
    from feedback.errors import Invalid
    from feedback.models import JobStatus
    from retrain.jobs import cancel_by_request

    with workspace(home) as (_, store):
        try:
            job, was = cancel_by_request(store, job_id)  # NotFound (a LookupError) names the unknown id
        except Invalid as error:
            raise CliError(str(error)) from None
    note = " (it stops at its next training step)" if was == JobStatus.RUNNING else ""
    err.print(f"{job.id}: {job.status}{note}")
    print(job.id)
