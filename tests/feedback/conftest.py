"""Fixtures of the store-level tests: a FeedbackStore on each backend `db_url` gives (tests/conftest.py)."""

from __future__ import annotations

import pytest

from feedback.store import FeedbackStore


@pytest.fixture
def store(db_url: str):
    store = FeedbackStore(db_url)
    yield store
    store.close()
