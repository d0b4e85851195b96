"""The rules of a judgement, and the write of many ratings in a few statements.

`FeedbackStore.rate()` (one rating, its own commit) and the group committer (many concurrent ratings, one
commit) share `rate_many`, so both follow the same rules and answer the same way. For N ratings it runs
one lookup of their completions and one multi-row upsert on SQLite, and on Postgres one statement that does
both (more only when the same user rates the same choice twice in a group: each repeat goes in a later
statement, so it replaces the first as it would have one request later; and one more lookup when some
rating names an unknown completion or choice, to say which). Few statements matter: the serving process's
threads share one interpreter lock, and every statement hands it over twice; on Postgres each is also a
round trip to a server process that must be scheduled on the same busy cores.

Bad input is refused per rating, before anything of it is written: the outcome in its place is the
exception (`InvalidFeedback`, `UnknownCompletion`), and its neighbours are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, text

from feedback.models import Completion, new_id, now

MAX_USER_LENGTH = 256  # the width of the `user` columns
_CHUNK = 500  # ids per IN (...) lookup, well under SQLite's and Postgres' parameter limits
# The upsert: a rating is keyed by (completion, choice, user); a re-rating replaces the judgement and `updated`.
RATING_KEY = ("completion_id", "choice_index", "user")
RATING_REPLACED = ("rating", "score", "comment", "correction", "updated")
_COLUMNS = {  # each column with its Postgres array type, for the unnest upsert below
    "id": "varchar[]",
    "completion_id": "varchar[]",
    "choice_index": "int[]",
    "user": "varchar[]",
    "rating": "int[]",
    "score": "int[]",
    "comment": "varchar[]",
    "correction": "varchar[]",
    "created": "float8[]",
    "updated": "float8[]",
}


def _quoted(names) -> str:
    return ", ".join(f'"{name}"' for name in names)


_REPLACE = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in RATING_REPLACED)
# On Postgres a group's rows go as one array per column: one short statement whatever the group's size, which
# the driver prepares once (a multi-row VALUES list is a new, long statement for every size, parsed each time).
# The same statement joins the completions, so a rating of an unknown completion or choice is not written
# (the caller asks why afterwards), and returns the adapter that answered each rated completion.
_GIVEN = ", ".join(f'g."{c}"' for c in _COLUMNS)
_POSTGRES_RATE = text(
    f"WITH given AS (SELECT * FROM unnest({', '.join(f'CAST(:{c} AS {t})' for c, t in _COLUMNS.items())}) "
    f"AS g({_quoted(_COLUMNS)})), "
    f"written AS (INSERT INTO ratings ({_quoted(_COLUMNS)}) "
    f"SELECT {_GIVEN} FROM given g "
    "JOIN completions c ON c.id = g.completion_id "
    "WHERE g.choice_index >= 0 AND g.choice_index < json_array_length(c.choices) "
    f"ON CONFLICT ({_quoted(RATING_KEY)}) DO UPDATE SET {_REPLACE} "
    f"RETURNING {_quoted(_COLUMNS)}) "
    "SELECT w.*, c.adapter FROM written w JOIN completions c ON c.id = w.completion_id"
)


class UnknownCompletion(LookupError):
    """The completion id is not in the store (never served, or its log write was lost)."""

    def __init__(self, completion_id: str) -> None:
        super().__init__(f"completion {completion_id!r} is unknown: rate only ids returned by /v1/chat/completions")
        self.completion_id = completion_id


class InvalidFeedback(ValueError):
    """A rating or comparison that breaks the rules; the message says which rule."""


@dataclass(frozen=True)
class Judgement:
    """One user's rating of one choice: exactly one of `rating` (1 or -1) and `score` (1..5)."""

    completion_id: str
    choice_index: int = 0
    rating: int | None = None
    score: int | None = None
    comment: str | None = None
    correction: str | None = None
    user: str | None = ""


Outcome = tuple[Row, bool, str] | Exception  # (the stored row's columns, created, adapter that answered) or why not


def rate_many(connection: Connection, upsert: Any, judgements: Sequence[Judgement]) -> list[Outcome]:
    """Write `judgements` in the caller's transaction (not committed here); one outcome per judgement."""
    outcomes: list[Outcome | None] = [None] * len(judgements)
    waves: list[list[tuple[int, dict[str, Any]]]] = []  # each wave: rows with distinct keys
    seen: dict[tuple[str, int, str], int] = {}  # key -> how many waves hold it already
    stamp = now()
    for position, judgement in enumerate(judgements):
        try:
            user = _check(judgement)
        except InvalidFeedback as error:
            outcomes[position] = error
            continue
        values = {
            "id": new_id("fb"),
            "completion_id": judgement.completion_id,
            "choice_index": judgement.choice_index,
            "user": user,
            "rating": judgement.rating,
            "score": judgement.score,
            "comment": judgement.comment,
            "correction": judgement.correction,
            "created": stamp,
            "updated": stamp,
        }
        wave = seen.get(_key(values), 0)
        seen[_key(values)] = wave + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append((position, values))
    for wave in waves:
        rows = [values for _, values in wave]
        if connection.dialect.name == "postgresql":
            written = _write_postgres(connection, rows)
        else:
            written = _write_sqlite(connection, upsert, rows)
        refused = []
        for position, values in wave:
            if (hit := written.get(_key(values))) is None:
                refused.append((position, values))
                continue
            row, adapter = hit
            # The id is only ours when our INSERT won; on conflict the stored row keeps its own id.
            outcomes[position] = (row, row.id == values["id"], adapter)
        for position, error in _why_refused(connection, refused):
            outcomes[position] = error
    return outcomes  # type: ignore[return-value]  (every position is filled above)


Written = dict[tuple[str, int, str], tuple[Row, str]]  # a written rating's key -> (its stored row, the adapter)


def _key(values: dict[str, Any]) -> tuple[str, int, str]:
    return values["completion_id"], values["choice_index"], values["user"]


def _write_sqlite(connection: Connection, upsert: Any, rows: list[dict[str, Any]]) -> Written:
    """The rows whose completion and choice exist, in one multi-row INSERT (insertmanyvalues)."""
    found = _choices_and_adapters(connection, {row["completion_id"] for row in rows})
    valid = [row for row in rows if row["completion_id"] in found and _in_range(row, found)]
    # One statement for the wave; its rows come back in no set order, and a key is unique in a wave.
    stored = connection.execute(upsert, valid).all() if valid else []
    return {_key(row._mapping): (row, found[row.completion_id][1]) for row in stored}


def _write_postgres(connection: Connection, rows: list[dict[str, Any]]) -> Written:
    """The rows whose completion and choice exist, looked up and upserted in ONE statement (a round trip
    to the server each statement saves, which is what a group's time goes to when the cores are busy)."""
    stored = connection.execute(_POSTGRES_RATE, {c: [row[c] for row in rows] for c in _COLUMNS}).all()
    return {_key(row._mapping): (row, row.adapter) for row in stored}


def _in_range(row: dict[str, Any], found: dict[str, tuple[list, str]]) -> bool:
    return 0 <= row["choice_index"] < len(found[row["completion_id"]][0])


def _why_refused(connection: Connection, refused: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, Exception]]:
    """The error of each row the write left out: its completion is unknown or its choice out of range."""
    found = _choices_and_adapters(connection, {values["completion_id"] for _, values in refused}) if refused else {}
    errors: list[tuple[int, Exception]] = []
    for position, values in refused:
        cid, index = values["completion_id"], values["choice_index"]
        if cid not in found:
            errors.append((position, UnknownCompletion(cid)))
            continue
        count = len(found[cid][0])
        message = f"choice_index {index} is out of range: completion {cid} has {count} choice(s), indexed from 0"
        errors.append((position, InvalidFeedback(message)))
    return errors


def _choices_and_adapters(connection: Connection, ids: set[str]) -> dict[str, tuple[list, str]]:
    table = Completion.__table__
    query = select(table.c.id, table.c.choices, table.c.adapter)
    ordered = sorted(ids)
    found: dict[str, tuple[list, str]] = {}
    for start in range(0, len(ordered), _CHUNK):
        for cid, choices, adapter in connection.execute(query.where(table.c.id.in_(ordered[start : start + _CHUNK]))):
            found[cid] = (choices, adapter)
    return found


def rating_columns(row: Row) -> dict[str, Any]:
    """A written row's rating columns (a Postgres write's row also names the adapter)."""
    return {name: value for name, value in row._mapping.items() if name != "adapter"}


# -- the rules ------------------------------------------------------------------------------------
def _check(judgement: Judgement) -> str:
    """Raise InvalidFeedback for a judgement that breaks a rule; the user as stored."""
    rating, score = judgement.rating, judgement.score
    if (rating is None) == (score is None):
        raise InvalidFeedback("give exactly one of 'rating' (1 or -1) and 'score' (1 to 5)")
    if rating is not None and (not _is_int(rating) or rating not in (1, -1)):
        raise InvalidFeedback(f"rating must be 1 (good) or -1 (bad), not {rating!r}")
    if score is not None and (not _is_int(score) or not 1 <= score <= 5):
        raise InvalidFeedback(f"score must be an integer from 1 to 5, not {score!r}")
    for name in ("comment", "correction"):
        if getattr(judgement, name) is not None and not isinstance(getattr(judgement, name), str):
            raise InvalidFeedback(f"{name} must be a string")
    user = check_user(judgement.user)
    if not _is_int(judgement.choice_index):
        raise InvalidFeedback(f"choice_index must be an integer, not {judgement.choice_index!r}")
    return user


def check_user(user: object) -> str:
    user = user or ""
    if not isinstance(user, str):
        raise InvalidFeedback("user must be a string")
    if len(user) > MAX_USER_LENGTH:
        raise InvalidFeedback(f"user is at most {MAX_USER_LENGTH} characters")
    return user


def _is_int(value: object) -> bool:
    # bool is an int subclass, and `True` is not a rating.
    return isinstance(value, int) and not isinstance(value, bool)
