"""The regression suite: prompts whose answers must keep holding, checked on every candidate.

A suite is JSONL files in `<home>/regression/` (add your own; every `*.jsonl` there is read), one case a
line:

    {"id": "moon-1", "prompt": "What do you know about the moon?", "any_of": ["exact answer", ...]}
    {"id": "refund", "messages": [{"role": "user", "content": "..."}], "regex": "(?i)refund within \\d+ days"}
    {"id": "polite", "prompt": "...", "contains": "thank you"}

Each case has a prompt (or messages) and one check: `any_of` (the stripped answer equals one of them),
`regex` (re.search matches) or `contains` (a substring, case-insensitive). The suite runs greedily, so
it is deterministic; the same checks judge the sampled answers of the win-rate pairs ("quality").
`ratchet init` writes `demo.jsonl` for the demo model: every held-out prompt phrasing of every topic,
whose answer must be one of that topic's canonical answers (well-formed and on topic).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names FILE:LINE."""


@dataclass(frozen=True)
class Case:
    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content), hashable
    any_of: tuple[str, ...] = ()
    regex: str | None = None
    contains: str | None = None

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def prompt(self) -> str:
        return next((content for role, content in reversed(self.messages) if role == "user"), "")

    def passes(self, answer: str) -> bool:
        text = answer.strip()
        if self.any_of:
            return text in self.any_of
        if self.regex is not None:
            return re.search(self.regex, text) is not None
        return self.contains is not None and self.contains.lower() in text.lower()


def parse_case(data: Any, where: str) -> Case:
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: a case is a JSON object")
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user")
            for m in messages
        ):
            raise SuiteError(f"{where}: messages must be system/user messages with string content")
        pairs = tuple((m["role"], m["content"]) for m in messages)
    elif isinstance(data.get("prompt"), str) and data["prompt"].strip():
        pairs = (("user", data["prompt"]),)
    else:
        raise SuiteError(f"{where}: a case needs a non-empty 'prompt' or 'messages'")
    checks = [key for key in ("any_of", "regex", "contains") if key in data]
    if len(checks) != 1:
        raise SuiteError(f"{where}: a case needs exactly one of any_of, regex, contains (has {checks or 'none'})")
    any_of = data.get("any_of", [])
    if "any_of" in data and (not isinstance(any_of, list) or not any_of or not all(isinstance(a, str) for a in any_of)):
        raise SuiteError(f"{where}: any_of must be a non-empty list of strings")
    if "regex" in data:
        try:
            re.compile(data["regex"])
        except (re.error, TypeError) as error:
            raise SuiteError(f"{where}: regex does not compile: {error}") from None
    if "contains" in data and not (isinstance(data["contains"], str) and data["contains"]):
        raise SuiteError(f"{where}: contains must be a non-empty string")
    return Case(
        id=str(data.get("id") or where),
        messages=pairs,
        any_of=tuple(a.strip() for a in any_of),
        regex=data.get("regex"),
        contains=data.get("contains"),
    )


def load_suite(folder: Path | str) -> list[Case]:
    """Every case of every `*.jsonl` in `folder` (none when it does not exist), in file and line order."""
    cases: list[Case] = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise SuiteError(f"{where}: not JSON ({error.msg})") from None
            cases.append(parse_case(data, where))
    return cases


def demo_cases() -> list[dict[str, Any]]:
    """The demo model's suite: each held-out phrasing must get a canonical answer of its topic."""
    from retrain.demo import corpus

    rows = []
    for topic in corpus.TOPICS:
        answers = sorted(corpus.canonical_answers(topic).values())
        for i, prompt in enumerate(corpus.heldout_prompts(topic)):
            rows.append({"id": f"{topic}-{i}", "prompt": prompt, "any_of": answers})
    return rows


def write_demo_suite(folder: Path | str) -> Path:
    path = Path(folder) / "demo.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in demo_cases()), encoding="utf-8")
    return path
