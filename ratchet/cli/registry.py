"""`ratchet adapters | status | eval | promote | rollback`: what is registered, served, and decided."""

from __future__ import annotations

from typing import Annotated

import typer

from ratchet.cli.common import AsJson, CliError, Home, err, flatten, print_json, print_table, running_url, workspace

ADAPTER_COLUMNS = ["name", "status", "method", "parent", "base_model", "created"]


def adapters(home: Home = None, as_json: AsJson = False) -> None:
    """List registered adapters with their lineage and status, newest first."""
    from feedback.registry import AdapterRegistry

    with workspace(home) as (settings, store):
        registry = AdapterRegistry(store, settings.adapters_dir)
        items = [registry.as_public(adapter) for adapter in registry.list()]
    if as_json:
        print_json({"adapters": items})
        return
    print_table("adapters", ADAPTER_COLUMNS, [[str(item.get(c) or "-") for c in ADAPTER_COLUMNS] for item in items])


def status(home: Home = None, as_json: AsJson = False) -> None:
    """What is being served and what the store holds (live through the admin API when a server runs)."""
    from deploy.control import status as current_status
    from deploy.status import explain

    with workspace(home) as (settings, store):
        state = current_status(settings, store)
    if as_json:
        print_json(state)
        return
    shown = [(key, value) for key, value in flatten(state) if not key.startswith(("decisions", "loop.last_decision"))]
    rows = [[key, "-" if value is None else str(value)] for key, value in shown]
    print_table(f"ratchet status ({settings.home})", ["what", "value"], rows, show_header=False)
    for decision in state.get("decisions", [])[-5:]:
        failed = [reason for reason in decision.get("reasons", []) if reason.startswith("FAILED")]
        why = decision.get("reason") or "; ".join(failed) or decision.get("error", "")
        err.print(f"decision: {decision.get('action')} {decision.get('adapter', '')} {why}", markup=False)
        for line in explain(decision):
            err.print(f"  {line}", markup=False)


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

    with workspace(home) as (settings, store):
        url = running_url(settings, store)
        baseline = (current_status(settings, store).get("current") or "base") if against == "current" else against
        client = OpenAI(base_url=url + "/v1", api_key=read_admin_key(settings), timeout=300, max_retries=1)
        err.print(f"evaluating {candidate} against {baseline} through {url} ...")
        outcome = run_evaluation(settings, store, client, candidate, baseline)
    for reason in outcome.decision.reasons:
        err.print(f"  {reason}")
    err.print(f"report: {outcome.report}")
    print(f"{candidate}: {outcome.decision.verdict}")


def promote(
    adapter: Annotated[str, typer.Argument(help="Adapter to promote (ft-NNNN, or base).")],
    force: Annotated[bool, typer.Option("--force", help="Promote even an adapter the gate rejected.")] = False,
    home: Home = None,
) -> None:
    """Make an adapter current, immediate and full (through the running server, else in the store)."""
    from deploy import control
    from feedback.errors import DomainError

    with workspace(home) as (settings, store):
        try:
            state, where = control.promote(settings, store, adapter, force=force)
        except DomainError as error:
            raise CliError(str(error)) from None
    err.print(f"current is now {state['current']} (previous {state['previous']}) via {where}")


def rollback(home: Home = None) -> None:
    """Go back to the previous adapter at once (through the running server, else in the store)."""
    from deploy import control
    from feedback.errors import DomainError

    with workspace(home) as (settings, store):
        try:
            state, where = control.rollback(settings, store)
        except DomainError as error:
            raise CliError(str(error)) from None
    err.print(f"current is now {state['current']} via {where}")
