"""The full app's Serve builder: serving's deployment with the routes of deploy/routes/ mounted.

`deploy.app:build` is what the Serve configs name (`ratchet serve`, deploy/serve_config.yaml, the KubeRay
manifest); `args` = {"settings": {...}} (empty: replicas read RATCHET_* from their environment).
"""

from __future__ import annotations

from typing import Any

from deploy.routes import routers
from serving import deployment

IMPORT_PATH = "deploy.app:build"


def build(args: dict[str, Any]):
    return deployment.application(args.get("settings") or {}, routers)
