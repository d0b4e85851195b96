"""Alembic on real SQLite and Postgres: one head, empty -> head -> base -> head, and the migrated
schema equals the models (autogenerate finds nothing to do)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

import feedback.models  # noqa: F401  (registers the tables)
from feedback.db import alembic_config, current_revision, downgrade, make_engine, migrate


def head(url: str) -> str:
    heads = ScriptDirectory.from_config(alembic_config(url)).get_heads()
    assert len(heads) == 1, f"alembic has several heads {heads}: merge them"
    return heads[0]


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_from_empty(empty_db_url: str) -> None:
    assert current_revision(empty_db_url) is None
    migrate(empty_db_url)
    assert current_revision(empty_db_url) == head(empty_db_url)
    assert tables(empty_db_url) == set(SQLModel.metadata.tables)
    migrate(empty_db_url)  # idempotent
    downgrade(empty_db_url, "base")
    assert current_revision(empty_db_url) is None and tables(empty_db_url) == set()
    migrate(empty_db_url)
    assert current_revision(empty_db_url) == head(empty_db_url)


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: add a migration for {diff}"
