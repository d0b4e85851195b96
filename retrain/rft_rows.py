"""Reinforcement fine-tuning rows: OpenAI's RFT JSONL, checked line by line.

One JSON object per line: `messages` (the conversation the model answers: system / developer / user /
assistant turns, the last one not the assistant's) plus any reference fields the grader's templates
read (`{{ item.reference_answer }}`). The whole row is the grader's `item`. Errors are
`FILE:LINE: reason`, as for the other formats (feedback/ingest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROLES = ("system", "developer", "user", "assistant")


class RFTRowInvalid(ValueError):
    """One bad RFT line; the message is the reason."""


def validate_rft_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RFTRowInvalid(f"expected a JSON object, got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RFTRowInvalid('an RFT row needs "messages": a non-empty list of {"role", "content"}')
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RFTRowInvalid(f"messages[{index}]: role must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise RFTRowInvalid(f"messages[{index}]: content must be a non-empty string")
    if messages[-1]["role"] == "assistant":
        raise RFTRowInvalid("the last message is the assistant's: an RFT row ends where the model answers")
    return row


def rft_errors(path: Path, shown_as: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, errors) of an RFT JSONL file; errors are `FILE:LINE: reason` (none: every line is good)."""
    shown_as = shown_as or str(path)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(validate_rft_row(json.loads(line)))
        except json.JSONDecodeError as error:
            errors.append(f"{shown_as}:{number}: bad JSON: {error.msg} at column {error.colno}")
        except RFTRowInvalid as invalid:
            errors.append(f"{shown_as}:{number}: {invalid}")
    if not rows and not errors:
        errors.append(f"{shown_as}: empty file: no rows to train on")
    return rows, errors
