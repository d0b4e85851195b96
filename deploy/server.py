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

_runner = None  # the fine-tuning JobRunner of this driver process, while start() has one running


def persisted_state(settings: Settings) -> dict:
    store = FeedbackStore(settings.store_url)
    try:
        return store.routing_state()
    finally:
        store.close()


def start(settings: Settings) -> str:
    """Deploy the app on a (new or running) local Ray; returns the base URL once /health answers."""
    from deploy.app import IMPORT_PATH
    from serving import deployment

    deployment.start_ray(settings)
    config = deployment.serve_config(settings, state=persisted_state(settings), import_path=IMPORT_PATH)
    deployment.deploy(config)
    url = f"http://{settings.host}:{settings.port}"
    store = FeedbackStore(settings.store_url)
    try:
        store.set_state("server", {"url": url, "started": time.time()})
    finally:
        store.close()
    _start_job_runner(settings)
    return url


def _start_job_runner(settings: Settings) -> None:
    """Fail what a restart interrupted, then train queued jobs one at a time as Ray tasks (nice 10, one
    thread), from this driver process; the replicas only record jobs (deploy/routes/fine_tuning.py)."""
    global _runner
    from pathlib import Path

    from eval.judge import RATINGS_REWARD, ratings_reward
    from retrain.job_runner import JobRunner

    if _runner is None:
        # an absolute workspace: the Ray workers that train need not share this process's cwd
        _runner = JobRunner(
            settings.model_copy(update={"home": Path(settings.home).resolve()}),
            rewards={RATINGS_REWARD: ratings_reward},  # the loop's reinforcement jobs (deploy/loop.py)
        )
        _runner.start()


def stop(settings: Settings) -> None:
    global _runner
    from serving import deployment

    if _runner is not None:
        _runner.stop()  # a job still training is killed after the runner's grace (30 s) and marked cancelled
        _runner = None
    store = FeedbackStore(settings.store_url)
    try:
        store.set_state("server", None)
    finally:
        store.close()
    deployment.shutdown()


def serve_forever(settings: Settings, *, progress=None, with_loop: bool = False) -> None:
    """`ratchet serve` (and with the loop, `ratchet up`): serve until Ctrl-C or SIGTERM, then drain."""
    from deploy.workspace import init_workspace, read_admin_key

    say = progress.print if progress is not None else print
    if with_loop:  # before the workspace (and maybe a demo model build): a bad setting fails at once
        from deploy.loop import check_loop_settings

        check_loop_settings(settings)
    init_workspace(settings)
    say(f"starting Ray Serve ({settings.engine} engine, base {settings.base_model_id}) ...")
    url = start(settings)
    say(f"ratchet is serving on {url}  (OpenAI base_url {url}/v1; Ctrl-C stops)")
    say(f"web UI: {url}/ui")  # short: a narrow terminal must not wrap the URL
    say("  (playground and arena; the dashboard takes the admin key, <home>/admin.key)")
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    loop_thread = None
    if with_loop:
        from deploy.loop import ImprovementLoop

        improvement = ImprovementLoop(settings, url, read_admin_key(settings))
        loop_thread = threading.Thread(target=improvement.run_forever, args=(stopped,), name="ratchet-loop")
        loop_thread.start()
        say(f"the loop retrains every {settings.loop_every_ratings} new ratings; `ratchet status` shows it")
    try:
        stopped.wait()
    finally:
        say("draining and shutting down ...")
        if loop_thread is not None:
            loop_thread.join(timeout=30)
        stop(settings)
