"""What every command family shares: the option types, the one-line error, stdout JSON, the workspace."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ratchet.settings import Settings

if TYPE_CHECKING:
    from feedback.store import FeedbackStore

err = Console(stderr=True)

Home = Annotated[
    Path | None, typer.Option("--home", help="Workspace directory [env: RATCHET_HOME; default ./.ratchet]")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")]
Host = Annotated[str | None, typer.Option("--host", help="Bind address [default 127.0.0.1]")]
Port = Annotated[int | None, typer.Option("--port", help="Port [default 8000]")]


class CliError(Exception):
    """A failure the user can act on: printed as one line on stderr, exit code 1."""


def settings_for(home: Path | None, host: str | None = None, port: int | None = None) -> Settings:
    """The settings of one command: the environment's, with --home, --host and --port on top."""
    settings = Settings().with_home(home)
    update = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    return settings.model_copy(update=update) if update else settings


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def open_store(settings: Settings) -> FeedbackStore:
    """The store of an initialised workspace (migrated on open, so an older store is upgraded)."""
    from feedback.db import migrate
    from feedback.store import FeedbackStore

    if not settings.database_url and not settings.db_path.exists():
        raise CliError(f"no workspace at {settings.home}: run `ratchet init --home {settings.home}` first")
    migrate(settings.store_url)
    return FeedbackStore(settings.store_url)


@contextmanager
def workspace(home: Path | None) -> Iterator[tuple[Settings, FeedbackStore]]:
    """`with workspace(home) as (settings, store):` the command's settings and its open store, closed after."""
    settings = settings_for(home)
    store = open_store(settings)
    try:
        yield settings, store
    finally:
        store.close()


def running_url(settings: Settings, store: FeedbackStore) -> str:
    """The URL of the server running on this workspace, or a CliError saying how to start one."""
    from deploy.control import running_server

    url = running_server(settings, store)
    if url is None:
        raise CliError(f"no ratchet server answers for {settings.home}: start one with `ratchet serve` or `ratchet up`")
    return url


def flatten(obj: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested dict as (dotted key, value) rows, for a two-column table."""
    rows: list[tuple[str, object]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def print_table(title: str, columns: list[str], rows: list[list[str]], *, show_header: bool = True) -> None:
    table = Table(title=title, show_header=show_header)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
