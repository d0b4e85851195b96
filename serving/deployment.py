"""The Ray Serve application: one deployment whose replicas each hold an engine and the HTTP app.

Ingress and engine share a replica, so a token goes from the engine to the socket without another hop;
replicas scale out whole. Routing state (current, previous, canary) lives in the store; the replica that
changes it rings the others through a small Ray actor (serving/fleet.py), and they re-read it at once. A
deployment's `user_config` `state`, applied by `reconfigure()` in place on every replica, is the other way
in (Serve's config path: no restart, no dropped request).

Extra routers (files, fine-tuning, admin promote/rollback) come from a function the full app's builder
passes in (`deploy.app:build`, which Serve's config names), called inside each replica: this package never
imports the packages that add them.

`application(settings, routers)` binds the deployment; `build(args)` is serving's own builder (the API
without the extra routers); `serve_config()` writes the config that names a builder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from ray import serve

from ratchet.settings import Settings

if TYPE_CHECKING:
    from fastapi import APIRouter

log = logging.getLogger("ratchet.serving")
APP_NAME = "ratchet"
DEPLOYMENT_NAME = "RatchetServer"
# Ray Serve's default stays: the handlers on a second event loop in a thread of their own. Moving them onto
# the replica's own loop (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0) sped up short requests such as ratings
# but slowed SSE streams, the main traffic (docs/benchmarks.md, feedback over HTTP).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
# The haproxy ingress: Ray Serve runs HAProxy on the public port, forwarding each request straight to the
# HTTP port of a replica (direct ingress), instead of through its Python proxy actor. A stopping replica
# waits this long for HAProxy to stop sending it requests (Ray's default, 30 s, is for external balancers).
HAPROXY_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")
GIL_SWITCH_SECONDS = 0.0005  # see RatchetServer.__init__


@serve.ingress()
class RatchetServer:
    """One replica: runtime (engine, store, writer) plus the FastAPI app built around it."""

    async def __init__(self, settings: dict[str, Any], routers: Callable[[], list[APIRouter]] | None = None) -> None:
        from serving import runtime as runtime_module
        from serving.app import create_app
        from serving.fleet import RayFleet

        self.settings = Settings(**settings)
        # With the hf engine in this process (RATCHET_ENGINE_PROCESS=false), and for vLLM's output thread,
        # other threads share this process's GIL with the HTTP event loop. At Python's default switch
        # interval (5 ms) a request waits up to that long each time one of them holds the GIL; at 0.5 ms the
        # demo model served more tokens/s under concurrency with the in-thread engine, and the 30M model
        # lost nothing (its steps are in torch ops, which release the GIL; docs/benchmarks.md).
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        context = serve.get_replica_context()
        fleet = RayFleet(app=context.app_name, replica=context.replica_id.unique_id)
        self.runtime = runtime_module.ServingRuntime(self.settings, fleet=fleet)
        await self.runtime.start()
        runtime_module.install(self.runtime)
        self.http_app = create_app(routers() if routers else [], max_request_bytes=self.settings.max_request_bytes)

    def __serve_build_asgi_app__(self):
        return self.http_app

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's in-place update: apply the routing state (loads and checks adapters first)."""
        await self.runtime.apply_state(config.get("state") or {})

    async def check_health(self) -> None:
        if not self.runtime.ready:
            raise RuntimeError("runtime not ready")
        if not getattr(self.runtime.engine, "alive", True):  # the hf engine's process died: replace the replica
            raise RuntimeError("the engine process is gone")

    async def __del__(self) -> None:
        await self.runtime.shutdown()


def application(settings: dict[str, Any], routers: Callable[[], list[APIRouter]] | None = None) -> serve.Application:
    """The deployment bound to its settings (a module-level `routers` function travels by reference)."""
    return serve.deployment(RatchetServer, name=DEPLOYMENT_NAME).bind(settings, routers)


def build(args: dict[str, Any]) -> serve.Application:
    """Serve application builder for serving's API alone: `args` = {"settings": {...}}."""
    # No settings in args: the replica reads RATCHET_* from its environment (the runtime_env).
    return application(args.get("settings") or {})


def settings_payload(settings: Settings) -> dict[str, Any]:
    """Settings as plain JSON for a replica, with the workspace made absolute (workers have their own cwd)."""
    # Secrets stay out: the config is logged by Serve's controller, kept in Ray's GCS and shown by
    # `serve status`. Replicas need no keys; a database URL with a password they read from the environment
    # they inherit (RATCHET_DATABASE_URL) when it came from there.
    exclude = {name for name, field in Settings.model_fields.items() if field.annotation is SecretStr}
    if _has_password(settings.database_url) and os.environ.get("RATCHET_DATABASE_URL") == settings.database_url:
        exclude.add("database_url")
    payload = settings.model_dump(mode="json", exclude=exclude)
    payload["home"] = str(Path(settings.home).resolve())
    return payload


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return bool(url) and make_url(url).password is not None
    except Exception:  # not a URL the store could use either; nothing to hide
        return False


def serve_config(
    settings: Settings,
    *,
    state: dict | None = None,
    import_path: str = "serving.deployment:build",
) -> dict[str, Any]:
    """The Serve config (`serve deploy` / `serve run` format) for this app and these settings."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": import_path,
                "args": {"settings": settings_payload(settings)},
                "deployments": [
                    {
                        "name": DEPLOYMENT_NAME,
                        "num_replicas": settings.replicas,
                        # Admission control happens in the app (OpenAI-shaped 429s); Serve's limits sit far above
                        # it. Every request holds a Serve slot to its end (a stream, a feedback waiting on its
                        # commit), so the replica takes 4x the app's chat limit + 64: a flood of 4x capacity, chats
                        # and the rest, reaches the app (a fast 429 for chats) instead of waiting in Serve's queue.
                        # At 2x + 8, locust's mix far above the app's limit got many of Serve's own plain-text
                        # 503s instead (benchmarks/bench_load.py). Past the queue, Serve's rejection is the last
                        # resort: a 503 with Retry-After, in Serve's body.
                        "max_ongoing_requests": 4 * settings.max_concurrent_requests + 64,
                        "max_queued_requests": 2 * settings.max_concurrent_requests,
                        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
                        "ray_actor_options": {"num_cpus": settings.replica_cpus},
                        "user_config": {"state": state or {}},
                        "health_check_period_s": 10,
                        "logging_config": {"enable_access_log": settings.access_log},
                        "graceful_shutdown_timeout_s": 20,
                    }
                ],
            }
        ],
    }


def start_ray(settings: Settings) -> None:
    import ray

    # Each of Ray's processes reads these once as it starts: they must be in the environment before ray.init.
    haproxy = settings.ingress == "haproxy"
    env = {**RAY_ENV, **(HAPROXY_ENV if haproxy else {})}
    os.environ.update({k: os.environ.get(k, v) for k, v in env.items()})
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if haproxy else "0"  # the setting wins over the environment
    if not ray.is_initialized():
        if haproxy:  # HAProxy's stats and metrics ports and Serve's fallback proxy: fixed by default, so
            # a second server on this machine (or a test's) would find them taken
            os.environ.update({name: str(free_port()) for name in HAPROXY_PORTS})
        # "local": a plain ray.init() joins the newest cluster on this machine (/tmp/ray/ray_current_cluster),
        # so a second `ratchet serve` would share, and die with, another server's Ray.
        ray.init(
            address="local",
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=True,
            runtime_env={"env_vars": RAY_ENV},
        )


def free_port() -> int:
    """A TCP port free on this machine now (for HAProxy's side ports, and the tests' servers)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deploy(config: dict[str, Any], *, timeout: float = 600.0) -> None:
    """Deploy (or update in place) through Serve's config path, and wait until the app runs."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=config["http_options"], proxy_location=config["proxy_location"])
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"the serving app failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"the serving app was not running after {timeout:.0f} s")


def shutdown() -> None:
    import ray

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
