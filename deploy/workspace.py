"""The workspace: one directory that holds a ratchet installation's state.

`init_workspace` is idempotent: it creates what is missing (folders, the admin key, the migrated store,
the demo model when no base model is configured, the demo's regression suite) and leaves what exists
alone, so `serve`, `up` and `demo` call it on every start.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from feedback.db import migrate
from feedback.store import FeedbackStore
from ratchet.settings import Settings

DEMO_MARKER = "ratchet-demo.json"


@dataclass
class InitReport:
    home: Path
    created: list[str] = field(default_factory=list)  # what this call made (empty: all was there)
    base_model: str = ""


def demo_model_ready(model_dir: Path) -> bool:
    """A demo build is complete once its marker file exists (the build writes it last, then renames)."""
    return (model_dir / DEMO_MARKER).is_file() and (model_dir / "config.json").is_file()


def ensure_admin_key(path: Path) -> bool:
    """Write a fresh admin token (mode 0600, no trailing newline) unless one exists. True if written."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # an admin token readable by others is a leak: tighten, never loosen
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("ra-" + secrets.token_urlsafe(32))
    return True


def read_admin_key(settings: Settings) -> str:
    return settings.admin_key_path.read_text().strip()


def init_workspace(settings: Settings, *, build_model: bool = True, progress: bool = True) -> InitReport:
    """Create the workspace of `settings` (idempotent) and return what was created."""
    report = InitReport(home=settings.home.resolve(), base_model=settings.base_model_path)

    # 1) folders
    for directory in (
        settings.home,
        settings.models_dir,
        settings.adapters_dir,
        settings.runs_dir,
        settings.reports_dir,
        settings.regression_dir,
    ):
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            report.created.append(f"{directory.name}/")

    # 2) admin key
    if ensure_admin_key(settings.admin_key_path):
        report.created.append("admin.key")

    # 3) store: migrate to head, seed API keys from RATCHET_API_KEYS
    migrate(settings.store_url)
    if settings.seed_api_keys:
        store = FeedbackStore(settings.store_url)
        try:
            store.seed_api_keys(settings.seed_api_keys)
        finally:
            store.close()

    # 4) base model: the configured one must exist; otherwise build the demo model once
    if settings.base_model:
        if not Path(settings.base_model).is_dir():
            raise FileNotFoundError(
                f"RATCHET_BASE_MODEL={settings.base_model} is not a directory: point it at a local "
                "Hugging Face model dir, or unset it to use the demo model"
            )
    elif build_model and not demo_model_ready(settings.demo_model_dir):
        from retrain.demo.build import build_demo_model

        build_demo_model(settings.demo_model_dir, seed=settings.demo_seed, steps=settings.demo_steps, progress=progress)
        report.created.append(f"models/{settings.demo_model_dir.name}/")

    # 5) the regression suite of the demo model (its corpus knows the right answers); yours sit beside it
    if _serves_demo_model(settings) and not (settings.regression_dir / "demo.jsonl").exists():
        from eval.regression import write_demo_suite

        write_demo_suite(settings.regression_dir)
        report.created.append("regression/demo.jsonl")
    return report


def _serves_demo_model(settings: Settings) -> bool:
    return not settings.base_model or demo_model_ready(Path(settings.base_model))
