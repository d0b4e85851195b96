"""Training sets from the store: SFT, DPO and KTO rows, scrubbed, capped, split, with a snapshot.

Which signals become which rows is `feedback.signals`; every build then, in this order: scrubs obvious
PII (`feedback.pii`), drops duplicate rows (same content hash, first kept), caps the rows each user
contributes (`max_per_user`, the most recent kept; anonymous feedback counts as user ""; imported examples
are curated by an operator and are not capped), and splits by a hash of the prompt, so a prompt never
crosses splits. When the split would leave train empty (a tiny set), every row goes to train.

`Dataset.snapshot` is what the adapter registry stores: the source ids (`example:12`, `rating:fb-…`,
`comparison:cmp-…`), the SHA-256 of the canonical rows (same data, same hash) and counts.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from feedback.formats import Kind, canonical_line, content_hash
from feedback.pii import scrub_row
from feedback.signals import Row, Signals, rows_of

_SPLIT_SALT = b"ratchet-heldout-v1\0"


# -- the dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    kind: Kind
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    snapshot: dict[str, Any]  # {"kind", "ids", "sha256", "counts", "params"}


def to_trl_dpo(row: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI DPO row as TRL's conversational preference row {"prompt", "chosen", "rejected"}."""
    return {
        "prompt": row["input"]["messages"],
        "chosen": row["preferred_output"],
        "rejected": row["non_preferred_output"],
    }


def prompt_of(kind: Kind, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages a row answers: what the held-out split is keyed on."""
    if kind == "sft":
        return row["messages"][:-1]
    return row["input"]["messages"] if kind == "dpo" else row["prompt"]


def build(
    engine: Engine,
    kind: Kind,
    *,
    max_per_user: int | None = 50,
    heldout_fraction: float = 0.1,
    scrub: bool = True,
    since: float | None = None,
    drop_disputed: bool = False,
) -> Dataset:
    """The `kind` training set from the signals since `since` (UNIX seconds; None: all of them).

    `drop_disputed` leaves out the ratings a classifier fitted on the other ratings contradicts
    (feedback.agreement: likely flipped thumbs); imported examples, corrections and comparisons stay."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_per_user is not None and max_per_user < 1:
        raise ValueError(f"max_per_user must be at least 1 (or None for no cap), got {max_per_user}")
    signals = Signals.load(engine, since)
    disputed = signals.drop_disputed() if drop_disputed else 0
    rows = rows_of(signals, kind, training=True)
    params = {"max_per_user": max_per_user, "heldout_fraction": heldout_fraction, "scrub": scrub, "since": since}
    if drop_disputed:
        params["drop_disputed"] = True
    return _finish(kind, rows, params, disputed)


def build_sft(engine: Engine, **options: Any) -> Dataset:
    """SFT rows {"messages": [...]} ending with the answer to learn; options as `build`."""
    return build(engine, "sft", **options)


def build_dpo(engine: Engine, **options: Any) -> Dataset:
    """OpenAI DPO rows; `[to_trl_dpo(r) for r in ds.train]` is what TRL's DPOTrainer takes."""
    return build(engine, "dpo", **options)


def build_kto(engine: Engine, **options: Any) -> Dataset:
    """TRL KTO rows {"prompt", "completion", "label"}; options as `build`."""
    return build(engine, "kto", **options)


def store_rows(engine: Engine, kind: Kind, *, scrub: bool = True) -> list[dict[str, Any]]:
    """Every row of `kind` the store holds, in its exchange format, deduplicated, neither capped nor split.

    Imported rows come back exactly as stored (row weights included), so an export round-trips them.
    """
    rows = rows_of(Signals.load(engine, None), kind, training=False)
    return [row.data for row in _dedup(_scrubbed(rows) if scrub else rows)[0]]


# -- the build pipeline: scrub, dedup, cap, split, snapshot ------------------------------------


def _finish(kind: Kind, rows: list[Row], params: dict[str, Any], disputed: int) -> Dataset:
    if params["scrub"]:
        rows = _scrubbed(rows)
    rows, duplicates = _dedup(rows)
    rows, capped = _cap(rows, params["max_per_user"])
    train, heldout = [], []
    for row in rows:
        (heldout if _is_heldout(prompt_of(kind, row.data), params["heldout_fraction"]) else train).append(row)
    if not train:  # a tiny set: train on everything rather than on nothing
        train, heldout = heldout, []
    by_origin: dict[str, int] = defaultdict(int)
    for row in rows:
        by_origin[row.origin] += 1
    train_data, heldout_data = [r.data for r in train], [r.data for r in heldout]
    snapshot = {
        "kind": kind,
        "ids": sorted({source for row in rows for source in row.sources}),
        "sha256": content_hash({"train": train_data, "heldout": heldout_data}),
        "counts": {
            "train": len(train),
            "heldout": len(heldout),
            "by_source": dict(sorted(by_origin.items())),
            "dropped": {"duplicates": duplicates, "user_cap": capped, "disputed_ratings": disputed},
        },
        "params": params,
    }
    return Dataset(kind=kind, train=train_data, heldout=heldout_data, snapshot=snapshot)


def _scrubbed(rows: list[Row]) -> list[Row]:
    scrubbed = [Row(scrub_row(r.data), r.origin, r.sources, r.user, r.at) for r in rows]
    # two answers that differ only in PII ("call 555 …" vs "call 666 …") are no preference once scrubbed
    return [r for r in scrubbed if r.data.get("preferred_output", 0) != r.data.get("non_preferred_output", 1)]


def _dedup(rows: list[Row]) -> tuple[list[Row], int]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = content_hash(row.data)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def _cap(rows: list[Row], max_per_user: int | None) -> tuple[list[Row], int]:
    """Keep each user's `max_per_user` most recent rows; imported rows (user None) are not capped."""
    if max_per_user is None:
        return rows, 0
    taken: dict[str, int] = defaultdict(int)
    dropped: set[int] = set()
    for i in sorted(range(len(rows)), key=lambda i: (-rows[i].at, i)):
        user = rows[i].user
        if user is None:
            continue
        taken[user] += 1
        if taken[user] > max_per_user:
            dropped.add(i)
    return [row for i, row in enumerate(rows) if i not in dropped], len(dropped)


def _is_heldout(prompt: list[dict[str, Any]], fraction: float) -> bool:
    digest = hashlib.sha256(_SPLIT_SALT + canonical_line(prompt).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
