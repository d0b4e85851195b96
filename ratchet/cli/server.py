"""`ratchet serve | up | demo | loop | simulate`: the running server and what drives it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ratchet.cli.common import Home, Host, Port, err, running_url, settings_for, workspace
from ratchet.settings import Settings


def serve(home: Home = None, host: Host = None, port: Port = None) -> None:
    """Serve the OpenAI-compatible API on Ray Serve until Ctrl-C (then drain and shut Ray down)."""
    from deploy.server import serve_forever

    serve_forever(settings_for(home, host, port), progress=err)


def up(home: Home = None, host: Host = None, port: Port = None) -> None:
    """Serve and run the improvement loop together until Ctrl-C (the main job)."""
    from deploy.server import serve_forever

    serve_forever(settings_for(home, host, port), progress=err, with_loop=True)


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

    settings = settings_for(home, host, port)
    result = run_demo(
        settings, ratings=ratings, minutes=minutes, seed=seed, noise=noise, careful=not loose, say=err.print
    )
    err.print(f"report: {result.report}")
    print(result.summary())


def _server_of(home: Path | None) -> tuple[Settings, str]:
    with workspace(home) as (settings, store):
        return settings, running_url(settings, store)


def loop(home: Home = None) -> None:
    """Run the retrain-evaluate-promote loop against the running server until Ctrl-C."""
    import signal
    import threading

    from deploy.loop import ImprovementLoop
    from deploy.workspace import read_admin_key

    settings, url = _server_of(home)
    improvement = ImprovementLoop(settings, url, read_admin_key(settings))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    err.print(f"loop running against {url}: every {settings.loop_every_ratings} ratings (Ctrl-C stops)")
    try:
        improvement.run_forever(stop)
    finally:
        improvement.close()


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

    settings, url = _server_of(home)
    crowd = SimulatedUsers(
        url, read_admin_key(settings), users=users, noise=noise, careful=not loose, target_style=style, seed=seed
    )
    try:
        posted = crowd.run(ratings)
        liked = sum(r.liked for r in crowd.history)
    finally:
        crowd.close()
    print(f"posted {posted} ratings; {liked}/{len(crowd.history)} answers had the preferred style")
