"""`ratchet keys add|list|revoke`: API keys for the chat, feedback, files and fine-tuning routes."""

from __future__ import annotations

from typing import Annotated

import typer

from ratchet.cli.common import AsJson, CliError, Home, err, print_json, print_table, workspace

app = typer.Typer(help="Manage API keys for the chat, feedback, files and fine-tuning routes.", no_args_is_help=True)


@app.command("add")
def keys_add(home: Home = None, name: Annotated[str, typer.Option(help="A label for the key.")] = "") -> None:
    """Create an API key and print it once on stdout (only its hash is stored)."""
    with workspace(home) as (_, store):
        key_id, key = store.add_api_key(name)
    err.print(f"created {key_id}; store the key now, it is not shown again")
    print(key)


@app.command("list")
def keys_list(home: Home = None, as_json: AsJson = False) -> None:
    """List API keys (id, label, prefix, state); never the keys themselves."""
    with workspace(home) as (_, store):
        rows = [
            {"id": k.id, "name": k.name, "prefix": k.prefix, "created": k.created, "revoked": k.revoked}
            for k in store.list_api_keys()
        ]
    if as_json:
        print_json({"keys": rows})
        return
    cells = [[r["id"], r["name"] or "-", r["prefix"] + "…", "revoked" if r["revoked"] else "active"] for r in rows]
    print_table("API keys", ["id", "name", "prefix", "state"], cells)


@app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (key-…) or prefix.")], home: Home = None) -> None:
    """Revoke an API key; requests with it get 401 from then on."""
    with workspace(home) as (_, store):
        try:
            revoked = store.revoke_api_key(key_id)
        except LookupError as error:
            raise CliError(str(error).strip('\x27"')) from error
    err.print(f"revoked {revoked.id}")
