"""Running the full app: serving's routes plus the routers of retrain and deploy, on a local Ray.

`serve_forever` is `ratchet serve`: initialise the workspace, start Ray with explicit small resources,
deploy through Serve's config path with the persisted routing state, record the server's URL in the
store (so `promote`, `rollback` and `status` find it), and block until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import time

from feedback.store import FeedbackStore
from ratchet.settings import Settings

# Routers later packages add to the app, by import path (imported inside each replica).
EXTRA_ROUTERS: list[str] = []


def persisted_state(settings: Settings) -> dict:
    store = FeedbackStore(settings.store_url)
    try:
        return {
            "current": (store.get_state("current") or {}).get("adapter"),
            "previous": (store.get_state("previous") or {}).get("adapter"),
            "canary": store.get_state("canary"),
        }
    finally:
        store.close()


def start(settings: Settings) -> str:
    """Deploy the app on a (new or running) local Ray; returns the base URL once /health answers."""
    from serving import deployment

    deployment.start_ray(settings)
    config = deployment.serve_config(settings, routers=EXTRA_ROUTERS, state=persisted_state(settings))
    deployment.deploy(config)
    url = f"http://{settings.host}:{settings.port}"
    store = FeedbackStore(settings.store_url)
    try:
        store.set_state("server", {"url": url, "started": time.time()})
    finally:
        store.close()
    return url


def stop(settings: Settings) -> None:
    from serving import deployment

    store = FeedbackStore(settings.store_url)
    try:
        store.set_state("server", None)
    finally:
        store.close()
    deployment.shutdown()


def serve_forever(settings: Settings, *, progress=None) -> None:
    from deploy.workspace import init_workspace

    say = progress.print if progress is not None else print
    init_workspace(settings)
    say(f"starting Ray Serve ({settings.engine} engine, base {settings.base_model_id}) ...")
    url = start(settings)
    say(f"ratchet is serving on {url}  (OpenAI base_url {url}/v1; Ctrl-C stops)")
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        stopped.wait()
    finally:
        say("draining and shutting down ...")
        stop(settings)
