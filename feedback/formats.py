"""Training-data formats: validate one JSONL line, and put it in canonical form.

Three row shapes are accepted, line by line (a file may mix them):

    SFT  {"messages": [...], "weight"?: 0|1}                      OpenAI chat fine-tuning
    DPO  {"input": {"messages": [...]}, "preferred_output": [...],
          "non_preferred_output": [...]}                          OpenAI preference fine-tuning
    KTO  {"prompt": [...], "completion": [...], "label": bool}    TRL's unpaired preference format

A message is `{"role", "content", "name"?, "weight"?}`; roles are system, developer, user and assistant
(no tools: ratchet trains without them). `weight` (0 or 1) is OpenAI's per-message switch and is allowed
on assistant messages of SFT rows only; the row-level `weight` of SFT rows is 0 or 1 too (0 = keep the
row, but do not train on it).

Canonical form, so that a good file round-trips unchanged:
- keys in a fixed order (the order above; message keys role, content, name, weight); unknown keys are
  rejected rather than dropped, so nothing is lost silently;
- content given as text parts (`[{"type": "text", "text": ...}]`) becomes one string, the parts joined
  with "\\n" (as vLLM does); string content is kept byte for byte (no stripping);
- `canonical_line` writes JSON with Python's default separators (`", "`, `": "`, as in OpenAI's docs) and
  UTF-8 characters unescaped; `content_hash` is the SHA-256 of the compact, key-sorted JSON, so the same
  row always hashes the same whatever its layout.

Reasons in `InvalidLine` are short and name the exact place (`messages[2]`, 0-based like JSON paths).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["sft", "dpo", "kto"]
KINDS: tuple[Kind, ...] = ("sft", "dpo", "kto")
ROLES = ("system", "developer", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")
ROW_KEYS: dict[Kind, tuple[str, ...]] = {
    "sft": ("messages", "weight"),
    "dpo": ("input", "preferred_output", "non_preferred_output"),
    "kto": ("prompt", "completion", "label"),
}
REQUIRED_KEYS: dict[Kind, tuple[str, ...]] = {
    "sft": ("messages",),
    "dpo": ("input", "preferred_output", "non_preferred_output"),
    "kto": ("prompt", "completion", "label"),
}

TokenCounter = Callable[[list[dict]], int]


class InvalidLine(ValueError):
    """A line that is not a valid training row; `reason` says why, for a person to fix it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ValidatedRow:
    kind: Kind
    data: dict[str, Any]  # canonical form
    content_hash: str
    tokens: int | None = None  # longest sequence, when a token counter was given


# -- canonical JSON ------------------------------------------------------------------------------


def canonical_line(data: Any) -> str:
    """One JSONL line (without newline): keys in the order given, OpenAI-docs spacing, UTF-8 as is."""
    return json.dumps(data, ensure_ascii=False)


def content_hash(data: Any) -> str:
    """SHA-256 of the compact, key-sorted JSON: identity of a row whatever its key order or spacing."""
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# -- messages ------------------------------------------------------------------------------------


def _content(value: Any, where: str) -> str:
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict):
                raise InvalidLine(f"{where} content[{i}] must be a text part object, got {_type_name(part)}")
            if part.get("type") != "text":
                raise InvalidLine(f'{where} content[{i}] is a "{part.get("type")}" part: only text parts are supported')
            if not isinstance(part.get("text"), str):
                raise InvalidLine(f'{where} content[{i}] has no "text" string')
            texts.append(part["text"])
        value = "\n".join(texts)
    elif not isinstance(value, str):
        raise InvalidLine(f"{where} content must be a string or a list of text parts, got {_type_name(value)}")
    if not value.strip():
        raise InvalidLine(f"{where} has empty content")
    return value


def parse_message(value: Any, where: str, *, weight_allowed: bool = False) -> dict[str, Any]:
    """One message in canonical form; `where` names it in errors (`messages[2]`)."""
    if not isinstance(value, dict):
        raise InvalidLine(f"{where} must be an object, got {_type_name(value)}")
    for key in value:
        if key not in MESSAGE_KEYS:
            allowed = ", ".join(MESSAGE_KEYS)
            raise InvalidLine(f'{where} has unexpected key "{key}" (allowed: {allowed})')
    if "role" not in value:
        raise InvalidLine(f'{where} has no "role"')
    role = value["role"]
    if role not in ROLES:
        shown = f'"{role}"' if isinstance(role, str) else _type_name(role)
        raise InvalidLine(f"{where} has unknown role {shown} (allowed: {', '.join(ROLES)})")
    if "content" not in value:
        raise InvalidLine(f'{where} has no "content"')
    message: dict[str, Any] = {"role": role, "content": _content(value["content"], where)}
    if "name" in value:
        if not isinstance(value["name"], str) or not value["name"]:
            raise InvalidLine(f"{where} name must be a non-empty string")
        message["name"] = value["name"]
    if "weight" in value:
        if not weight_allowed or role != "assistant":
            raise InvalidLine(f"{where} has a weight: only assistant messages of SFT rows take one")
        message["weight"] = _weight(value["weight"], f"{where} weight")
    return message


def parse_messages(value: Any, where: str, *, weight_allowed: bool = False) -> list[dict[str, Any]]:
    """A non-empty list of messages in canonical form (also used on logged completion prompts)."""
    if not isinstance(value, list):
        raise InvalidLine(f"{where} must be a list of messages, got {_type_name(value)}")
    if not value:
        raise InvalidLine(f"{where} is empty")
    return [parse_message(m, f"{where}[{i}]", weight_allowed=weight_allowed) for i, m in enumerate(value)]


def _weight(value: Any, where: str) -> int:
    # `type(...) is int` and not isinstance: JSON true would otherwise pass as 1.
    if type(value) is not int or value not in (0, 1):
        raise InvalidLine(f"{where} must be 0 or 1, got {json.dumps(value)}")
    return value


def _prompt(value: Any, where: str) -> list[dict[str, Any]]:
    messages = parse_messages(value, where)
    if messages[-1]["role"] != "user":
        raise InvalidLine(f"{where} must end with a user message (got {messages[-1]['role']})")
    return messages


def _one_answer(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) != 1:
        got = f"{len(value)} messages" if isinstance(value, list) else _type_name(value)
        raise InvalidLine(f"{where} must hold exactly one assistant message, got {got}")
    message = parse_message(value[0], f"{where}[0]")
    if message["role"] != "assistant":
        raise InvalidLine(f'{where}[0] role must be "assistant", got "{message["role"]}"')
    return [message]


# -- rows ----------------------------------------------------------------------------------------


def _detect_kind(row: dict) -> Kind:
    for kind in KINDS:
        if any(key in row for key in REQUIRED_KEYS[kind]):
            for key in REQUIRED_KEYS[kind]:
                if key not in row:
                    raise InvalidLine(f'{kind.upper()} row is missing "{key}"')
            for key in row:
                if key not in ROW_KEYS[kind]:
                    allowed = ", ".join(ROW_KEYS[kind])
                    article = "an" if kind == "sft" else "a"
                    raise InvalidLine(f'unexpected key "{key}" in {article} {kind.upper()} row (allowed: {allowed})')
            return kind
    got = ", ".join(f'"{k}"' for k in row) or "none"
    raise InvalidLine(
        'unknown format: expected "messages" (SFT), "input", "preferred_output", "non_preferred_output" (DPO) '
        f'or "prompt", "completion", "label" (KTO); got keys {got}'
    )


def _sft(row: dict) -> dict[str, Any]:
    messages = parse_messages(row["messages"], "messages", weight_allowed=True)
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise InvalidLine("no assistant message to learn from")
    if messages[-1]["role"] != "assistant":
        raise InvalidLine(f"the last message must be from the assistant (got {messages[-1]['role']})")
    if all(m.get("weight", 1) == 0 for m in answers):
        raise InvalidLine("every assistant message has weight 0: nothing to learn from")
    data: dict[str, Any] = {"messages": messages}
    if "weight" in row:
        data["weight"] = _weight(row["weight"], "weight")
    return data


def _dpo(row: dict) -> dict[str, Any]:
    if not isinstance(row["input"], dict):
        raise InvalidLine(f"input must be an object, got {_type_name(row['input'])}")
    for key in row["input"]:
        if key != "messages":
            raise InvalidLine(f'input has unexpected key "{key}" (allowed: messages)')
    if "messages" not in row["input"]:
        raise InvalidLine('input is missing "messages"')
    prompt = _prompt(row["input"]["messages"], "input.messages")
    preferred = _one_answer(row["preferred_output"], "preferred_output")
    rejected = _one_answer(row["non_preferred_output"], "non_preferred_output")
    if preferred[0]["content"] == rejected[0]["content"]:
        raise InvalidLine("preferred_output and non_preferred_output are identical")
    return {"input": {"messages": prompt}, "preferred_output": preferred, "non_preferred_output": rejected}


def _kto(row: dict) -> dict[str, Any]:
    if isinstance(row["prompt"], str):
        raise InvalidLine("prompt must be a list of messages (TRL's conversational format), got a string")
    prompt = _prompt(row["prompt"], "prompt")
    completion = _one_answer(row["completion"], "completion")
    if not isinstance(row["label"], bool):
        raise InvalidLine(f"label must be true or false, got {json.dumps(row['label'])}")
    return {"prompt": prompt, "completion": completion, "label": row["label"]}


def _sequences(kind: Kind, data: dict) -> list[list[dict]]:
    """The token sequences a trainer sees for this row (prompt plus each answer)."""
    if kind == "sft":
        return [data["messages"]]
    if kind == "dpo":
        prompt = data["input"]["messages"]
        return [prompt + data["preferred_output"], prompt + data["non_preferred_output"]]
    return [data["prompt"] + data["completion"]]


def validate_row(row: Any, *, count_tokens: TokenCounter | None = None, max_tokens: int | None = None) -> ValidatedRow:
    """Validate a decoded row; raise `InvalidLine` with the reason, or return it in canonical form."""
    if not isinstance(row, dict):
        raise InvalidLine(f"expected a JSON object, got {_type_name(row)}")
    kind = _detect_kind(row)
    data = {"sft": _sft, "dpo": _dpo, "kto": _kto}[kind](row)
    tokens = None
    if count_tokens is not None:
        tokens = max(count_tokens(sequence) for sequence in _sequences(kind, data))
        if max_tokens is not None and tokens > max_tokens:
            raise InvalidLine(f"{tokens} tokens > context {max_tokens}")
    return ValidatedRow(kind=kind, data=data, content_hash=content_hash(data), tokens=tokens)


def validate_line(
    text: str, *, count_tokens: TokenCounter | None = None, max_tokens: int | None = None
) -> ValidatedRow:
    """Validate one JSONL line; raise `InvalidLine` with the reason, or return it in canonical form."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidLine(f"bad JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise InvalidLine("bad JSON: nested too deeply") from None
    return validate_row(row, count_tokens=count_tokens, max_tokens=max_tokens)
