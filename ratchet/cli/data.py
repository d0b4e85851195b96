"""`ratchet data import|export|stats`: training data in and out of the store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ratchet.cli.common import AsJson, CliError, Home, err, flatten, print_json, print_table, workspace
from ratchet.settings import Settings

app = typer.Typer(help="Import, export and summarise training data and feedback.", no_args_is_help=True)


@app.command("import")
def data_import(
    file: Annotated[Path, typer.Argument(help="OpenAI fine-tuning JSONL (chat SFT, DPO or KTO rows).")],
    home: Home = None,
    skip_invalid: Annotated[bool, typer.Option(help="Import the good lines even when some are bad.")] = False,
) -> None:
    """Validate every line and import the file in one transaction (nothing when any line is bad)."""
    from feedback.ingest import import_jsonl

    with workspace(home) as (settings, store):
        count_tokens, context = _token_counter(settings)
        report = import_jsonl(
            store.engine, file, skip_invalid=skip_invalid, count_tokens=count_tokens, max_tokens=context
        )
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


@app.command("export")
def data_export(
    home: Home = None,
    format: Annotated[str, typer.Option("--format", help="sft, dpo or kto.")] = "sft",
    output: Annotated[Path | None, typer.Option("--output", help="Write here instead of stdout.")] = None,
) -> None:
    """Write the store's training data (imported rows and rated conversations) as JSONL."""
    from feedback.export import export_jsonl

    if format not in ("sft", "dpo", "kto"):
        raise CliError(f"unknown format {format!r}: use sft, dpo or kto")
    with workspace(home) as (_, store):
        if output is None:
            count = export_jsonl(store.engine, format, sys.stdout)
        else:
            partial = output.with_name(output.name + ".partial")
            with partial.open("w", encoding="utf-8") as handle:
                count = export_jsonl(store.engine, format, handle)
            partial.replace(output)  # a reader never sees a half-written export
    err.print(f"exported {count} {format} row(s)" + (f" to {output}" if output else ""))


@app.command("stats")
def data_stats(home: Home = None, as_json: AsJson = False) -> None:
    """Summarise the store: completions, ratings, comparisons, examples, users."""
    with workspace(home) as (settings, store):
        stats = store.stats()
    if as_json:
        print_json(stats)
        return
    print_table(f"ratchet store ({settings.home})", ["what", "count"], [[k, str(v)] for k, v in flatten(stats)])
