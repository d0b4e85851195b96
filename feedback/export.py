"""Export the store as JSONL training data: imported examples and the rows feedback gives.

`export_jsonl(engine, "sft" | "dpo" | "kto", out)` writes one canonical JSON object per line
(`feedback.formats.canonical_line`): SFT and DPO in OpenAI's formats, KTO in TRL's. Imported examples
come first, exactly as stored (canonical form), in import order; then the rows derived from ratings,
corrections and comparisons (`feedback.datasets`), in the order they arrived. Duplicates are written
once. Nothing is capped or split: this is the store's content, not a training set.

With `scrub` (the default) PII is replaced in every row (`feedback.pii.scrub_text`). Scrubbing
changes only text that holds an email, phone number or key-like string, so a clean imported file
exports byte for byte as it was imported (in canonical form, minus duplicates); `scrub=False` exports
raw text, for an operator who needs it.
"""

from __future__ import annotations

from typing import TextIO

from sqlalchemy import Engine

from feedback.datasets import store_rows
from feedback.formats import KINDS, Kind, canonical_line


def export_jsonl(engine: Engine, kind: Kind, out: TextIO, *, scrub: bool = True) -> int:
    """Write every `kind` row of the store to `out`, one JSON object per line; return the row count."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    rows = store_rows(engine, kind, scrub=scrub)
    for row in rows:
        out.write(canonical_line(row) + "\n")
    return len(rows)
