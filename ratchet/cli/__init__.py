"""The `ratchet` command line: one module per command family, assembled here.

Contract (docs/cli.md): every command takes `--home DIR`; `status`, `adapters` and `data stats` take `--json`
and then print exactly one JSON object on stdout; exit code 0 on success, otherwise non-zero with a one-line
reason on stderr. Progress and chatter go to stderr, so stdout stays scriptable. Heavy libraries (torch,
transformers, ray) are imported inside the commands that need them, which keeps `ratchet --help` fast.

    chat.py      init, chat                    data.py      data import | export | stats
    server.py    serve, up, demo, loop, simulate  train.py  train sft | dpo | kto | cancel
    registry.py  adapters, status, eval, promote, rollback  keys.py  keys add | list | revoke
"""

from __future__ import annotations

import os
import sys

import click
import typer

from ratchet.cli import chat, data, keys, registry, server, train
from ratchet.cli.common import CliError

app = typer.Typer(
    help="Serve a chat model, learn from its users' ratings, and ship only what proves better.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for command in (chat.init, chat.chat, server.serve, server.up, server.demo):
    app.command()(command)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
for command in (registry.adapters, registry.status):
    app.command()(command)
app.command("eval")(registry.evaluate)
for command in (registry.promote, registry.rollback, server.loop, server.simulate):
    app.command()(command)
app.add_typer(keys.app, name="keys")

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
