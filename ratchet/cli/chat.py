"""`ratchet init` and `ratchet chat`: make the workspace, ask the model one question."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ratchet.cli.common import CliError, Home, err, open_store, settings_for
from ratchet.settings import Settings


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

    with open_store(settings) as store:
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
