"""The feedback store: one object over one database that the HTTP routes and the CLI share.

`FeedbackStore(url)` wraps a SQLAlchemy engine (SQLite WAL + synchronous=FULL, or Postgres; see
feedback/db.py) and owns the rules of the public contract:

- every write method returns only after COMMIT, so a caller that acks (an HTTP 2xx) can promise the row
  survives a kill -9 of every process;
- `rate()` and `compare()` are upserts keyed by (completion, choice, user) and (sorted pair, user): the
  same user judging the same thing again replaces the judgement, keeps the row's id and reports
  `created=False`. They are single `INSERT … ON CONFLICT DO UPDATE` statements, so two processes racing
  on the same first rating end with one row and no IntegrityError;
- bad input raises `InvalidFeedback` (a ValueError whose message a user can read), an unknown id raises
  `UnknownCompletion`; nothing here raises a database error for bad input.

The store does not migrate on its own unless asked (`FeedbackStore(url, migrate=True)`): Alembic owns the
schema (feedback/db.py). Completions arrive in bulk through `record_completions`, which is what the
background `CompletionLogWriter` (feedback/writer.py) calls.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, case, func, select, union
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from feedback import db
from feedback.models import ApiKey, Comparison, Completion, Example, Rating, ServingState, new_id, now
from feedback.ratings import (
    RATING_KEY,
    RATING_REPLACED,
    InvalidFeedback,
    Judgement,
    Outcome,
    UnknownCompletion,
    check_user,
    rate_many,
    rating_columns,
)

__all__ = ["FeedbackStore", "InvalidFeedback", "Judgement", "UnknownApiKey", "UnknownCompletion"]

API_KEY_PREFIX = "rk-"


class UnknownApiKey(LookupError):
    """No API key has that id or prefix."""


class FeedbackStore:
    """Completions, ratings, comparisons, serving state and API keys over one engine.

    Thread-safe: every method runs in a session of its own, and the engine pools connections.
    """

    def __init__(self, url: str, *, migrate: bool = False) -> None:
        if migrate:
            db.migrate(url)
        self.url = url
        self.engine: Engine = db.make_engine(url)
        dialects = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
        if self.engine.dialect.name not in dialects:
            raise ValueError(f"the store runs on SQLite or PostgreSQL, not {self.engine.dialect.name} ({url})")
        # Both dialects spell upserts the same way (`on_conflict_do_update`) but in different classes.
        self._insert = dialects[self.engine.dialect.name]
        # Built once: on SQLite, building an upsert statement costs more than running it.
        self._rating_upsert = self._upsert(Rating, RATING_KEY, RATING_REPLACED)
        self._comparison_upsert = self._upsert(
            Comparison, ("completion_a", "completion_b", "user"), ("winner", "updated")
        )

    def _upsert(self, model: type, key: tuple[str, ...], replace: tuple[str, ...]) -> Any:
        """INSERT … ON CONFLICT (key) DO UPDATE SET replace … RETURNING the stored row's columns.

        A Core statement on the table, not the ORM's bulk insert: it is the hot path of the rating route,
        where the ORM's per-row bookkeeping cost more than the SQL."""
        columns = model.__table__.c
        stmt = self._insert(model.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=[columns[name] for name in key], set_={name: stmt.excluded[name] for name in replace}
        )
        # Not sort_by_parameter_order: SQLAlchemy cannot order an upsert's rows and would send one statement per
        # row; callers match the returned rows to theirs by the conflict key instead.
        return stmt.returning(*columns)

    # -- plumbing ------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back when it raises."""
        session = db.new_session(self.engine)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- completions ---------------------------------------------------------------------------
    def record_completions(self, rows: Sequence[Completion]) -> int:
        """Insert `rows` in one transaction; returns how many were new.

        An id that is already stored is skipped, not an error: a batch retried after a commit whose
        acknowledgement was lost (a dropped connection) must not fail on its own earlier success.
        """
        if not rows:
            return 0
        table = Completion.__table__
        stmt = self._insert(table).on_conflict_do_nothing(index_elements=[table.c.id]).returning(table.c.id)
        with self.session() as session:
            inserted = session.connection().execute(stmt, [row.model_dump() for row in rows]).all()
        return len(inserted)

    def get_completion(self, completion_id: str) -> Completion | None:
        with self.session() as session:
            return session.get(Completion, completion_id)

    # -- ratings and comparisons ---------------------------------------------------------------
    def rate(
        self,
        completion_id: str,
        choice_index: int,
        *,
        rating: int | None = None,
        score: int | None = None,
        comment: str | None = None,
        correction: str | None = None,
        user: str | None = "",
    ) -> tuple[Rating, bool]:
        """Store one user's judgement of one choice; returns (row, created) after COMMIT.

        Exactly one of `rating` (1 or -1) and `score` (1..5). A re-rating by the same user replaces the
        whole judgement (rating, score, comment and correction) and keeps the row's id and `created`.
        """
        judgement = Judgement(completion_id, choice_index, rating, score, comment, correction, user)
        with self.session() as session:
            (outcome,) = self.rate_many(session, [judgement])
            if isinstance(outcome, Exception):
                raise outcome
        row, created, _adapter = outcome
        return Rating(**rating_columns(row)), created

    def rate_many(self, session: Session, judgements: Sequence[Judgement]) -> list[Outcome]:
        """Many ratings in the caller's transaction, which the caller commits (feedback/ratings.py): one
        outcome per judgement, (row, created, adapter) or the error that refused it before it was written."""
        return rate_many(session.connection(), self._rating_upsert, judgements)

    def compare(self, completion_ids: Sequence[str], winner: str, user: str | None = "") -> tuple[Comparison, bool]:
        """Store one user's preference between two completions; returns (row, created) after COMMIT.

        `winner` is one of the two ids or "tie". The pair is stored sorted, so (a, b) and (b, a) by the
        same user are the same comparison, and judging it again replaces the winner.
        """
        with self.session() as session:
            return self.compare_in(session, completion_ids, winner, user)

    def compare_in(
        self, session: Session, completion_ids: Sequence[str], winner: str, user: str | None = ""
    ) -> tuple[Comparison, bool]:
        """`compare()` inside the caller's transaction, which the caller commits; bad input raises before
        anything is written."""
        if isinstance(completion_ids, str) or len(completion_ids) != 2:
            raise InvalidFeedback("completion_ids must be a list of exactly two completion ids")
        first, second = completion_ids
        if not all(isinstance(cid, str) and cid for cid in (first, second)):
            raise InvalidFeedback("completion_ids must be two non-empty strings")
        if first == second:
            raise InvalidFeedback("completion_ids must name two different completions")
        if winner not in (first, second, "tie"):
            raise InvalidFeedback(f"winner must be {first!r}, {second!r} or 'tie', not {winner!r}")
        user = check_user(user)
        low, high = sorted((first, second))
        found = set(session.connection().scalars(select(Completion.id).where(Completion.id.in_((low, high)))))
        for cid in (first, second):
            if cid not in found:
                raise UnknownCompletion(cid)
        fresh_id, stamp = new_id("cmp"), now()
        values = {"id": fresh_id, "completion_a": low, "completion_b": high, "winner": winner, "user": user}
        row = _run_upsert(session, self._comparison_upsert, Comparison, values | {"created": stamp, "updated": stamp})
        return row, row.id == fresh_id

    # -- counts --------------------------------------------------------------------------------
    def rating_count(self) -> int:
        """How many ratings the store holds (the loop's trigger; `stats()` counts everything)."""
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(Rating)))

    def stats(self) -> dict[str, Any]:
        """Counts in the shape of `ratchet data stats --json` (docs/cli.md); keys may be added, never renamed."""
        with self.session() as session:
            completions = session.scalar(select(func.count()).select_from(Completion))
            total, up, down, scores = session.execute(
                select(
                    func.count(),
                    func.count(case((Rating.rating == 1, 1))),
                    func.count(case((Rating.rating == -1, 1))),
                    func.count(Rating.score),
                )
            ).one()
            comparisons = session.scalar(select(func.count()).select_from(Comparison))
            kinds = dict(session.execute(select(Example.kind, func.count()).group_by(Example.kind)).tuples().all())
            people = union(
                select(Completion.user).where(Completion.user.is_not(None), Completion.user != ""),
                select(Rating.user).where(Rating.user != ""),
                select(Comparison.user).where(Comparison.user != ""),
            ).subquery()
            users = session.scalar(select(func.count()).select_from(people))
        return {
            "completions": completions,
            "ratings": {"total": total, "up": up, "down": down, "scores": scores},
            "comparisons": comparisons,
            "examples": {"sft": 0, "dpo": 0, **kinds},
            "users": users,
        }

    # -- serving state -------------------------------------------------------------------------
    def get_state(self, key: str) -> dict | None:
        """The JSON value stored under `key` (current, previous, canary, …), or None."""
        with self.session() as session:
            row = session.get(ServingState, key)
            return None if row is None else row.value

    def set_state(self, key: str, value: dict | None) -> None:
        """Store `value` under `key` (None clears it); committed when this returns."""
        self.set_states({key: value})

    def set_states(self, values: dict[str, dict | None]) -> None:
        """Store several keys in ONE transaction, so a reader never sees half a change of routing."""
        with self.session() as session:
            for key, value in values.items():
                stmt = self._insert(ServingState).values(key=key, value=value, updated=now())
                stmt = stmt.on_conflict_do_update(
                    index_elements=[ServingState.__table__.c.key],
                    set_={"value": stmt.excluded.value, "updated": stmt.excluded.updated},
                )
                session.execute(stmt)

    def routing_state(self) -> dict[str, Any]:
        """Who serves, as one consistent snapshot: {"current": name | None, "previous": name | None,
        "canary": {"adapter", "fraction", "started"} | None} (deploy/ writes it; every replica follows it)."""
        stored = self.get_states(["current", "previous", "canary"])
        return {
            "current": (stored["current"] or {}).get("adapter"),
            "previous": (stored["previous"] or {}).get("adapter"),
            "canary": stored["canary"],
        }

    def get_states(self, keys: Sequence[str]) -> dict[str, dict | None]:
        """Several keys read in one transaction (one consistent snapshot)."""
        with self.session() as session:
            rows = {
                row.key: row.value for row in session.scalars(select(ServingState).where(ServingState.key.in_(keys)))
            }
        return {key: rows.get(key) for key in keys}

    # -- API keys ------------------------------------------------------------------------------
    def add_api_key(self, name: str = "") -> tuple[str, str]:
        """Create a key; returns (id, plaintext). Only its SHA-256 is stored: show the plaintext once."""
        if len(name) > 128:
            raise ValueError("an API key name is at most 128 characters")
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(id=new_id("key"), name=name, key_hash=_sha256(plaintext), prefix=_display_prefix(plaintext))
        with self.session() as session:
            session.add(row)
        return row.id, plaintext

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included (their `revoked` time is set), oldest first."""
        with self.session() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created, ApiKey.id)))

    def revoke_api_key(self, id_or_prefix: str) -> ApiKey:
        """Revoke the key with this id or listed prefix; revoking twice keeps the first time."""
        with self.session() as session:
            matches = list(
                session.scalars(select(ApiKey).where((ApiKey.id == id_or_prefix) | (ApiKey.prefix == id_or_prefix)))
            )
            if not matches:
                raise UnknownApiKey(f"no API key has id or prefix {id_or_prefix!r}: see `ratchet keys list`")
            if len(matches) > 1:
                raise ValueError(f"{len(matches)} API keys share the prefix {id_or_prefix!r}: revoke by id")
            key = matches[0]
            if key.revoked is None:
                key.revoked = now()
            return key

    def verify_api_key(self, plaintext: str) -> ApiKey | None:
        """The live (not revoked) key whose hash matches, else None."""
        with self.session() as session:
            return session.scalar(select(ApiKey).where(ApiKey.key_hash == _sha256(plaintext), ApiKey.revoked.is_(None)))

    def seed_api_keys(self, keys: Sequence[str], name: str = "seeded") -> int:
        """Add the given plaintext keys unless stored already (a revoked one stays revoked); returns how many
        were new. Idempotent, so every start may seed from RATCHET_API_KEYS."""
        keys = [key.strip() for key in keys if key.strip()]
        if not keys:
            return 0
        table = ApiKey.__table__
        rows = [
            {"id": new_id("key"), "name": name, "key_hash": _sha256(k), "prefix": _display_prefix(k), "created": now()}
            for k in dict.fromkeys(keys)
        ]
        stmt = self._insert(table).on_conflict_do_nothing(index_elements=[table.c.key_hash]).returning(table.c.id)
        with self.session() as session:
            return len(session.connection().execute(stmt, rows).all())


# -- helpers --------------------------------------------------------------------------------------
def _run_upsert(session: Session, stmt: Any, model: type, values: dict[str, Any]) -> Any:
    """Run a prepared upsert for one row; the stored row as a (detached) `model` object."""
    return model(**session.connection().execute(stmt, values).one()._mapping)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _display_prefix(plaintext: str) -> str:
    """What listings show of a key: `rk-` plus 7 characters of a generated key; less of a short seeded one."""
    return plaintext[: min(10, len(plaintext) // 3)]
