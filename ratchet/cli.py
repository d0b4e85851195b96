"""The `ratchet` command line.

Contract (DESIGN.md): every command takes `--home DIR`; `status`, `adapters` and `data stats` take
`--json` and then print exactly one JSON object on stdout; exit code 0 on success, otherwise non-zero
with a one-line reason on stderr. Progress and chatter go to stderr, so stdout stays scriptable.
Heavy libraries (torch, transformers, ray) are imported inside the commands that need them, which keeps
`ratchet --help` fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from ratchet.settings import Settings

app = typer.Typer(
    help="Serve a chat model, learn from its users' ratings, and ship only what proves better.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Import, export and summarise training data and feedback.", no_args_is_help=True)
train_app = typer.Typer(help="Train a LoRA adapter with TRL (SFT, DPO or KTO).", no_args_is_help=True)
keys_app = typer.Typer(
    help="Manage API keys for the chat, feedback, files and fine-tuning routes.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(keys_app, name="keys")

err = Console(stderr=True)

Home = Annotated[
    Path | None, typer.Option("--home", help="Workspace directory [env: RATCHET_HOME; default ./.ratchet]")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")]
Host = Annotated[str | None, typer.Option("--host", help="Bind address [default 127.0.0.1]")]
Port = Annotated[int | None, typer.Option("--port", help="Port [default 8000]")]


class CliError(Exception):
    """A failure the user can act on: printed as one line on stderr, exit code 1."""


def settings_for(home: Path | None) -> Settings:
    return Settings().with_home(home)


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def open_store(settings: Settings):
    """The store of an initialised workspace (migrated on open, so an older store is upgraded)."""
    from feedback.db import migrate
    from feedback.store import FeedbackStore

    if not settings.database_url and not settings.db_path.exists():
        raise CliError(f"no workspace at {settings.home}: run `ratchet init --home {settings.home}` first")
    migrate(settings.store_url)
    return FeedbackStore(settings.store_url)


# -- init and chat -------------------------------------------------------------------------------


@app.command()
def init(home: Home = None) -> None:
    """Create the workspace (idempotent): folders, admin key, migrated store, and the demo model."""
    from deploy.workspace import init_workspace

    settings = settings_for(home)
    try:
        report = init_workspace(settings)
    except FileNotFoundError as error:
        raise CliError(str(error)) from error
    made = ", ".join(report.created) if report.created else "nothing new (already initialised)"
    err.print(f"workspace {report.home}: created {made}")
    err.print(f"base model: {report.base_model}")


@app.command()
def chat(
    message: Annotated[str, typer.Argument(help="What to say to the model.")],
    home: Home = None,
    model: Annotated[str, typer.Option(help="current, base or an adapter name (ft-NNNN).")] = "current",
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 96,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    url: Annotated[str | None, typer.Option(help="Ask a running server (base URL) instead of in-process.")] = None,
) -> None:
    """Ask the model one question and print the answer on stdout."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    if url:
        print(_chat_remote(url, model, messages, max_tokens, temperature, seed))
        return
    from serving.local_chat import chat as generate
    from serving.local_chat import load_model

    settings = settings_for(home)
    base_dir = Path(settings.base_model_path)
    if not (base_dir / "config.json").is_file():
        raise CliError(f"no base model at {base_dir}: run `ratchet init --home {settings.home}` first")
    adapter_dir = _adapter_dir_for(settings, model)
    loaded_model, tokenizer = load_model(str(base_dir), adapter_dir=adapter_dir)
    print(generate(loaded_model, tokenizer, messages, max_tokens=max_tokens, temperature=temperature, seed=seed))


def _adapter_dir_for(settings: Settings, model: str) -> str | None:
    """The adapter directory for a model name, or None for the base model."""
    if model == "base" or (model == "current" and not settings.db_path.exists() and not settings.database_url):
        return None
    from feedback.registry import AdapterRegistry

    store = open_store(settings)
    try:
        name = model
        if model == "current":
            name = (store.get_state("current") or {}).get("adapter") or "base"
            if name == "base":
                return None
        registry = AdapterRegistry(store, settings.adapters_dir)
        try:
            registry.get(name)
        except LookupError as error:
            raise CliError(f"model {name!r} not found: use current, base or a name from `ratchet adapters`") from error
        registry.verify(name)
        return str(registry.resolve_path(name))
    finally:
        store.close()


def _chat_remote(
    url: str, model: str, messages: list[dict], max_tokens: int, temperature: float, seed: int | None
) -> str:
    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if seed is not None:
        body["seed"] = seed
    try:
        response = httpx.post(url.rstrip("/") + "/v1/chat/completions", json=body, timeout=120)
    except httpx.HTTPError as error:
        raise CliError(f"cannot reach {url}: {error}") from error
    if response.status_code != 200:
        try:
            reason = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:200]
        raise CliError(f"server answered {response.status_code}: {reason}")
    return response.json()["choices"][0]["message"]["content"]


# -- data ----------------------------------------------------------------------------------------


@data_app.command("import")
def data_import(
    file: Annotated[Path, typer.Argument(help="OpenAI fine-tuning JSONL (chat SFT, DPO or KTO rows).")],
    home: Home = None,
    skip_invalid: Annotated[bool, typer.Option(help="Import the good lines even when some are bad.")] = False,
) -> None:
    """Validate every line and import the file in one transaction (nothing when any line is bad)."""
    from feedback.ingest import import_jsonl

    settings = settings_for(home)
    store = open_store(settings)
    try:
        count_tokens, context = _token_counter(settings)
        report = import_jsonl(
            store.engine, file, skip_invalid=skip_invalid, count_tokens=count_tokens, max_tokens=context
        )
    finally:
        store.close()
    for line in report.errors:
        sys.stderr.write(line + "\n")
    if not report.committed:
        raise CliError(f"{file}: {len(report.errors)} problem(s), nothing imported")
    kinds = ", ".join(f"{count} {kind}" for kind, count in report.imported.items() if count) or "no new rows"
    err.print(
        f"imported {kinds} from {file} ({report.duplicates} duplicate(s) dropped, "
        f"{report.skipped} invalid line(s) skipped)"
    )


def _token_counter(settings: Settings):
    """(count_tokens, context length) from the base model's tokenizer, or (None, None) when absent."""
    base_dir = Path(settings.base_model_path)
    if not (base_dir / "config.json").is_file():
        err.print(f"[yellow]no base model at {base_dir}: prompt lengths are not checked[/]")
        return None, None
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=settings.trust_remote_code)
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=settings.trust_remote_code)
    context = getattr(config, "max_position_embeddings", None)

    def count_tokens(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    return count_tokens, context


@data_app.command("export")
def data_export(
    home: Home = None,
    format: Annotated[str, typer.Option("--format", help="sft, dpo or kto.")] = "sft",
    output: Annotated[Path | None, typer.Option("--output", help="Write here instead of stdout.")] = None,
) -> None:
    """Write the store's training data (imported rows and rated conversations) as JSONL."""
    from feedback.export import export_jsonl

    if format not in ("sft", "dpo", "kto"):
        raise CliError(f"unknown format {format!r}: use sft, dpo or kto")
    settings = settings_for(home)
    store = open_store(settings)
    try:
        if output is None:
            count = export_jsonl(store.engine, format, sys.stdout)
        else:
            partial = output.with_name(output.name + ".partial")
            with partial.open("w", encoding="utf-8") as handle:
                count = export_jsonl(store.engine, format, handle)
            partial.replace(output)  # a reader never sees a half-written export
    finally:
        store.close()
    err.print(f"exported {count} {format} row(s)" + (f" to {output}" if output else ""))


@data_app.command("stats")
def data_stats(home: Home = None, as_json: AsJson = False) -> None:
    """Summarise the store: completions, ratings, comparisons, examples, users."""
    settings = settings_for(home)
    store = open_store(settings)
    try:
        stats = store.stats()
    finally:
        store.close()
    if as_json:
        print_json(stats)
        return
    table = Table(title=f"ratchet store ({settings.home})")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in _flatten(stats):
        table.add_row(key, str(value))
    Console().print(table)


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


# -- registry and status -------------------------------------------------------------------------


@app.command()
def adapters(home: Home = None, as_json: AsJson = False) -> None:
    """List registered adapters with their lineage and status, newest first."""
    from feedback.registry import AdapterRegistry

    settings = settings_for(home)
    store = open_store(settings)
    try:
        registry = AdapterRegistry(store, settings.adapters_dir)
        items = [registry.as_public(adapter) for adapter in registry.list()]
    finally:
        store.close()
    if as_json:
        print_json({"adapters": items})
        return
    table = Table(title="adapters")
    for column in ("name", "status", "method", "parent", "base_model", "created"):
        table.add_column(column)
    for item in items:
        table.add_row(
            *(
                str(item.get(column) or "-")
                for column in ("name", "status", "method", "parent", "base_model", "created")
            )
        )
    Console().print(table)


@app.command()
def status(home: Home = None, as_json: AsJson = False) -> None:
    """What is being served and what the store holds (live through the admin API when a server runs)."""
    from deploy.control import status as current_status

    settings = settings_for(home)
    store = open_store(settings)
    try:
        state = current_status(settings, store)
    finally:
        store.close()
    if as_json:
        print_json(state)
        return
    table = Table(title=f"ratchet status ({settings.home})", show_header=False)
    for key, value in _flatten({k: v for k, v in state.items() if k != "decisions"}):
        table.add_row(key, "-" if value is None else str(value))
    Console().print(table)
    for decision in state.get("decisions", [])[-5:]:
        err.print(f"decision: {decision.get('action')} {decision.get('adapter', '')} {decision.get('reason', '')}")


# -- API keys ------------------------------------------------------------------------------------


@keys_app.command("add")
def keys_add(home: Home = None, name: Annotated[str, typer.Option(help="A label for the key.")] = "") -> None:
    """Create an API key and print it once on stdout (only its hash is stored)."""
    settings = settings_for(home)
    store = open_store(settings)
    try:
        key_id, key = store.add_api_key(name)
    finally:
        store.close()
    err.print(f"created {key_id}; store the key now, it is not shown again")
    print(key)


@keys_app.command("list")
def keys_list(home: Home = None, as_json: AsJson = False) -> None:
    """List API keys (id, label, prefix, state); never the keys themselves."""
    settings = settings_for(home)
    store = open_store(settings)
    try:
        rows = [
            {"id": k.id, "name": k.name, "prefix": k.prefix, "created": k.created, "revoked": k.revoked}
            for k in store.list_api_keys()
        ]
    finally:
        store.close()
    if as_json:
        print_json({"keys": rows})
        return
    table = Table(title="API keys")
    for column in ("id", "name", "prefix", "state"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["name"] or "-", row["prefix"] + "…", "revoked" if row["revoked"] else "active")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (key-…) or prefix.")], home: Home = None) -> None:
    """Revoke an API key; requests with it get 401 from then on."""
    settings = settings_for(home)
    store = open_store(settings)
    try:
        revoked = store.revoke_api_key(key_id)
    except LookupError as error:
        raise CliError(str(error).strip('\x27"')) from error
    finally:
        store.close()
    err.print(f"revoked {revoked.id}")


# -- commands that later work fills in -----------------------------------------------------------


def _with_address(settings: Settings, host: str | None, port: int | None) -> Settings:
    if host is not None:
        settings = settings.model_copy(update={"host": host})
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    return settings


@app.command()
def serve(home: Home = None, host: Host = None, port: Port = None) -> None:
    """Serve the OpenAI-compatible API on Ray Serve until Ctrl-C (then drain and shut Ray down)."""
    from deploy.server import serve_forever

    serve_forever(_with_address(settings_for(home), host, port), progress=err)


@app.command()
def up(home: Home = None, host: Host = None, port: Port = None) -> None:
    """Serve and run the improvement loop together until Ctrl-C (the main job)."""
    from deploy.server import serve_forever

    serve_forever(_with_address(settings_for(home), host, port), progress=err, with_loop=True)


@app.command()
def demo(
    home: Home = None,
    host: Host = None,
    port: Port = None,
    ratings: Annotated[int, typer.Option(help="Simulated ratings to collect.", min=1)] = 240,
    minutes: Annotated[float, typer.Option(help="Cap on the whole wall time, init included.", min=1)] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated users.")] = 0,
    noise: Annotated[float, typer.Option(help="Share of ratings flipped at random.", min=0, max=1)] = 0.0,
    loose: Annotated[bool, typer.Option("--loose", help="Users judge the style marker only (reward hacking).")] = False,
) -> None:
    """Simulated users with a hidden preference teach the model; prints the before/after line."""
    from deploy.demo import run_demo

    settings = _with_address(settings_for(home), host, port)
    result = run_demo(
        settings, ratings=ratings, minutes=minutes, seed=seed, noise=noise, careful=not loose, say=err.print
    )
    err.print(f"report: {result.report}")
    print(result.summary())


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
Epochs = Annotated[str | None, typer.Option("--epochs", help="Passes over the data, or auto.")]
LearningRate = Annotated[str | None, typer.Option("--learning-rate", help="Peak learning rate, or auto.")]
BatchSize = Annotated[str | None, typer.Option("--batch-size", help="Examples per step, or auto.")]
LoraR = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank.")]
LoraAlpha = Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha (usually 2 x rank).")]
MaxLength = Annotated[int | None, typer.Option("--max-length", help="Longest sequence in tokens.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed for data order and LoRA init.")]
Beta = Annotated[float | None, typer.Option("--beta", help="Deviation from the reference (lower = further).")]


@train_app.command("sft")
def train_sft(
    home: Home = None,
    file: TrainFile = None,
    from_store: FromStore = False,
    validation_file: ValidationFile = None,
    config: TrainConfigFile = None,
    suffix: Suffix = None,
    parent: Parent = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    batch_size: BatchSize = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    max_length: MaxLength = None,
    seed: Seed = None,
) -> None:
    """Supervised fine-tuning on good answers and corrections; prints the adapter name last on stdout."""
    hyperparameters = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "lora_r": lora_r}
    hyperparameters |= {"lora_alpha": lora_alpha, "max_length": max_length, "seed": seed}
    _train("sft", home, file, from_store, validation_file, config, suffix, parent, hyperparameters)


@train_app.command("dpo")
def train_dpo(
    home: Home = None,
    file: TrainFile = None,
    from_store: FromStore = False,
    validation_file: ValidationFile = None,
    config: TrainConfigFile = None,
    suffix: Suffix = None,
    parent: Parent = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    batch_size: BatchSize = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    beta: Beta = None,
) -> None:
    """Direct preference optimisation on answer pairs; prints the adapter name last on stdout."""
    hyperparameters = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "lora_r": lora_r}
    hyperparameters |= {"lora_alpha": lora_alpha, "max_length": max_length, "seed": seed, "beta": beta}
    _train("dpo", home, file, from_store, validation_file, config, suffix, parent, hyperparameters)


@train_app.command("kto")
def train_kto(
    home: Home = None,
    file: TrainFile = None,
    from_store: FromStore = False,
    validation_file: ValidationFile = None,
    config: TrainConfigFile = None,
    suffix: Suffix = None,
    parent: Parent = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    batch_size: BatchSize = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    beta: Beta = None,
) -> None:
    """KTO on unpaired thumbs up / down; prints the adapter name last on stdout."""
    hyperparameters = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "lora_r": lora_r}
    hyperparameters |= {"lora_alpha": lora_alpha, "max_length": max_length, "seed": seed, "beta": beta}
    _train("kto", home, file, from_store, validation_file, config, suffix, parent, hyperparameters)


def _train(
    method: str,
    home: Path | None,
    file: Path | None,
    from_store: bool,
    validation_file: Path | None,
    config_file: Path | None,
    suffix: str | None,
    parent: str | None,
    hyperparameters: dict,
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
        config = load_config(config_file, method) if config_file else TrainConfig.default(method)
        config = config.with_overrides(hyperparameters)
    except ConfigError as error:
        raise CliError(str(error)) from error
    if not settings.base_model and not (settings.demo_model_dir / "config.json").is_file():
        raise CliError(f"no base model at {settings.demo_model_dir}: run `ratchet init --home {settings.home}` first")
    store = open_store(settings)
    try:
        try:
            data = data_from_file(method, file, validation_file) if file else data_from_store(store, method)
        except DataError as error:
            for line in error.lines:
                sys.stderr.write(line + "\n")
            raise CliError(str(error)) from error
        where = str(file) if file else "the store"
        err.print(f"{method}: {len(data.train)} training row(s), {len(data.heldout)} held out, from {where}")
        try:
            record, result = fine_tune(settings, method, data, config, suffix=suffix, parent=parent, store=store)
        except TrainingError as error:
            raise CliError(str(error)) from error
    finally:
        store.close()
    summary = ", ".join(
        f"{key} {result.metrics[key]:.4g}" for key in ("train_loss", "eval_loss") if key in result.metrics
    )
    err.print(f"trained {record.name} in {result.seconds:.1f}s ({result.metrics['steps']} steps; {summary})")
    err.print(f"metrics and loss curves: {record.metrics['run_dir']}")
    print(record.name)


@train_app.command("cancel")
def train_cancel(
    job_id: Annotated[str, typer.Argument(help="Fine-tuning job id (ftjob-…).")], home: Home = None
) -> None:
    """Cancel a fine-tuning job: a queued one at once, a running one at its next training step."""
    from retrain.jobs import cancel_job, get_job

    store = open_store(settings_for(home))
    try:
        job = get_job(store, job_id)  # LookupError names the unknown id
        if job.status in ("succeeded", "failed"):
            raise CliError(f"job {job_id} has already {job.status}: there is nothing to cancel")
        was = job.status
        job = cancel_job(store, job_id)
    finally:
        store.close()
    note = " (it stops at its next training step)" if was == "running" else ""
    err.print(f"{job.id}: {job.status}{note}")
    print(job.id)


def _running_url(settings: Settings, store) -> str:
    from deploy.control import running_server

    url = running_server(settings, store)
    if url is None:
        raise CliError(f"no ratchet server answers for {settings.home}: start one with `ratchet serve` or `ratchet up`")
    return url


def _settings_and_server(home: Path | None) -> tuple[Settings, str]:
    settings = settings_for(home)
    store = open_store(settings)
    try:
        return settings, _running_url(settings, store)
    finally:
        store.close()


@app.command("eval")
def evaluate(
    candidate: Annotated[str, typer.Argument(help="Adapter to evaluate (ft-NNNN).")],
    against: Annotated[str, typer.Option("--against", help="Baseline: current, base or an adapter.")] = "current",
    home: Home = None,
) -> None:
    """Evaluate a candidate against a baseline through the running server; writes a report, prints the verdict."""
    from openai import OpenAI

    from deploy.control import status as current_status
    from deploy.workspace import read_admin_key
    from eval.run import run_evaluation

    settings = settings_for(home)
    store = open_store(settings)
    try:
        url = _running_url(settings, store)
        baseline = (current_status(settings, store).get("current") or "base") if against == "current" else against
        client = OpenAI(base_url=url + "/v1", api_key=read_admin_key(settings), timeout=300, max_retries=1)
        err.print(f"evaluating {candidate} against {baseline} through {url} ...")
        outcome = run_evaluation(settings, store, client, candidate, baseline)
    finally:
        store.close()
    for reason in outcome.decision.reasons:
        err.print(f"  {reason}")
    err.print(f"report: {outcome.report}")
    print(f"{candidate}: {outcome.decision.verdict}")


@app.command()
def promote(
    adapter: Annotated[str, typer.Argument(help="Adapter to promote (ft-NNNN, or base).")],
    force: Annotated[bool, typer.Option("--force", help="Promote even an adapter the gate rejected.")] = False,
    home: Home = None,
) -> None:
    """Make an adapter current, immediate and full (through the running server, else in the store)."""
    from deploy import control, promotion

    settings = settings_for(home)
    store = open_store(settings)
    try:
        state, where = control.promote(settings, store, adapter, force=force)
    except promotion.PromotionError as error:
        raise CliError(str(error)) from None
    finally:
        store.close()
    err.print(f"current is now {state['current']} (previous {state['previous']}) via {where}")


@app.command()
def rollback(home: Home = None) -> None:
    """Go back to the previous adapter at once (through the running server, else in the store)."""
    from deploy import control, promotion

    settings = settings_for(home)
    store = open_store(settings)
    try:
        state, where = control.rollback(settings, store)
    except promotion.PromotionError as error:
        raise CliError(str(error)) from None
    finally:
        store.close()
    err.print(f"current is now {state['current']} via {where}")


@app.command()
def loop(home: Home = None) -> None:
    """Run the retrain-evaluate-promote loop against the running server until Ctrl-C."""
    import signal
    import threading

    from deploy.loop import ImprovementLoop
    from deploy.workspace import read_admin_key

    settings, url = _settings_and_server(home)
    improvement = ImprovementLoop(settings, url, read_admin_key(settings))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    err.print(f"loop running against {url}: every {settings.loop_every_ratings} ratings (Ctrl-C stops)")
    try:
        improvement.run_forever(stop)
    finally:
        improvement.close()


@app.command()
def simulate(
    ratings: Annotated[int, typer.Option(help="Ratings to post.", min=1)] = 100,
    users: Annotated[int, typer.Option(help="Distinct simulated users.", min=1)] = 20,
    noise: Annotated[float, typer.Option(help="Share of ratings flipped at random.", min=0, max=1)] = 0.0,
    style: Annotated[str, typer.Option(help="The hidden preference: a demo answer style.")] = "tldr",
    seed: Annotated[int, typer.Option(help="Seed of the users' choices.")] = 0,
    loose: Annotated[bool, typer.Option("--loose", help="Judge the style marker only (reward hacking).")] = False,
    home: Home = None,
) -> None:
    """Send simulated users with a hidden preference to the running server; prints what they liked."""
    from deploy.workspace import read_admin_key
    from eval.simulated_users import SimulatedUsers

    settings, url = _settings_and_server(home)
    crowd = SimulatedUsers(
        url, read_admin_key(settings), users=users, noise=noise, careful=not loose, target_style=style, seed=seed
    )
    try:
        posted = crowd.run(ratings)
        liked = sum(r.liked for r in crowd.history)
    finally:
        crowd.close()
    print(f"posted {posted} ratings; {liked}/{len(crowd.history)} answers had the preferred style")


# -- entry point ---------------------------------------------------------------------------------


try:  # typer 0.29 parses with its own copy of click, whose errors are not click's
    from typer._click.exceptions import ClickException as _TyperClickException

    CLICK_ERRORS: tuple[type[Exception], ...] = (click.ClickException, _TyperClickException)
except ImportError:
    CLICK_ERRORS = (click.ClickException,)


def main() -> None:
    """Console entry point: errors become one line on stderr and a non-zero exit code."""
    try:
        code = app(standalone_mode=False)
    except CliError as error:
        sys.stderr.write(f"ratchet: {error}\n")
        sys.exit(1)
    except click.exceptions.Abort:
        sys.stderr.write("ratchet: aborted\n")
        sys.exit(130)
    except CLICK_ERRORS as error:
        sys.stderr.write(f"ratchet: {error.format_message()}\n")
        sys.exit(error.exit_code)
    except (OSError, ValueError, LookupError) as error:
        # missing files, bad values and unknown names from the packages below: the message says it all
        sys.stderr.write(f"ratchet: {error}\n")
        sys.exit(1)
    except Exception as error:
        if os.environ.get("RATCHET_DEBUG"):
            raise
        sys.stderr.write(
            f"ratchet: internal error ({type(error).__name__}: {error}); set RATCHET_DEBUG=1 for the traceback\n"
        )
        sys.exit(1)
    sys.exit(code or 0)
