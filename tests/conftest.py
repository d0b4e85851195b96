"""Shared fixtures.

`db_url` runs a test on both stores: SQLite in a temp dir, and a fresh database of its own on the real
PostgreSQL at 127.0.0.1:5432 (trust auth; created from the `test` database, dropped afterwards). Both
are migrated to the newest revision. Set RATCHET_TEST_POSTGRES to another server URL to point elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from feedback.db import migrate

POSTGRES_ADMIN_URL = os.environ.get("RATCHET_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _database_url(name: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database of its own (a copy of `template` when given), dropped afterwards."""
    name = f"ratchet_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {error.orig}")
    try:
        yield _database_url(name)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty, unmigrated Postgres database of this test's own."""
    yield from _postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """An empty, unmigrated database: SQLite in tmp_path, or Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ratchet.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """A Postgres database migrated once per session; tests get copies (CREATE DATABASE ... TEMPLATE)."""
    for url in _postgres_database():
        migrate(url)
        sa.create_engine(url).dispose()  # a template must have no open connections
        yield url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A migrated database of this test's own, on SQLite and on Postgres."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ratchet.db'}"
        migrate(url)
        yield url
    else:
        yield from _postgres_database(template=request.getfixturevalue("migrated_postgres_template"))
