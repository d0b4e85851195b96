"""Acting on a ratchet installation from outside: find its running server, or fall back to the store.

`promote`, `rollback` and `status` go through the admin API when a server runs (the workspace's store
records its URL on start), so the replicas switch at once; with no server they change the stored state,
which the next server start serves.
"""

from __future__ import annotations

from typing import Any

import httpx

from deploy import promotion
from deploy.status import status_object
from deploy.workspace import read_admin_key
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore
from ratchet.settings import Settings


def running_server(settings: Settings, store: FeedbackStore) -> str | None:
    """The URL of this workspace's server when it answers /health, else None."""
    url = (store.get_state("server") or {}).get("url")
    if not url:
        return None
    try:
        return url if httpx.get(url + "/health", timeout=3).status_code == 200 else None
    except httpx.HTTPError:
        return None


def _admin(settings: Settings, url: str):
    from deploy.loop import AdminClient

    return AdminClient(url, read_admin_key(settings))


def promote(settings: Settings, store: FeedbackStore, adapter: str, *, force: bool) -> tuple[dict[str, Any], str]:
    url = running_server(settings, store)
    if url is None:
        registry = AdapterRegistry(store, settings.adapters_dir)
        return promotion.promote(store, registry, adapter, force=force, reason="manual (no server running)"), "store"
    admin = _admin(settings, url)
    try:
        return admin.promote(adapter, reason="manual", force=force), url
    finally:
        admin.close()


def rollback(settings: Settings, store: FeedbackStore) -> tuple[dict[str, Any], str]:
    url = running_server(settings, store)
    if url is None:
        registry = AdapterRegistry(store, settings.adapters_dir)
        return promotion.rollback(store, registry, reason="manual (no server running)"), "store"
    admin = _admin(settings, url)
    try:
        return admin.rollback(reason="manual"), url
    finally:
        admin.close()


def status(settings: Settings, store: FeedbackStore) -> dict[str, Any]:
    url = running_server(settings, store)
    if url is None:
        return status_object(settings, store, server=None)
    admin = _admin(settings, url)
    try:
        return {**admin.status(), "server": url}
    finally:
        admin.close()
