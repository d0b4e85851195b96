"""The HTTP routes the full app adds to serving's: OpenAI's files, fine-tuning and grader API, the admin routes,
and the web UI (/ui) with the dashboard's admin routes.

Routers are thin: they parse, call a domain function (retrain/files.py, retrain/jobs.py, deploy/promotion.py)
and shape the answer; domain errors (feedback/errors.py) become OpenAI-shaped errors in serving/errors.py.
"""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    """Every router of the full app, in mounting order (called inside each serving replica)."""
    from deploy.routes import admin, dashboard, files, fine_tuning, graders, ui

    return [files.router, fine_tuning.router, graders.router, admin.router, dashboard.router, ui.router]
