"""PII scrubbing of training rows: emails, phone numbers and key-like strings are replaced by `[email]`,
`[phone]`, `[key]` in every message `content` (roles, labels and weights untouched). The patterns err on
the side of keeping text: a long plain word is not a key, a short number is not a phone.
"""

from __future__ import annotations

import re
from typing import Any

_SECRET = re.compile(
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys (sk-…, sk-proj-…, rk-…)
    r"|\b(?:ghp|gho|ghu|ghs|github_pat)_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\b[0-9a-fA-F]{32,}\b"  # long hex: hashes used as secrets, API keys
)
# base64-ish runs: only when long and mixing upper, lower and digits, so long plain words survive
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/=_-])")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# a phone: an optional +country and (area), then digit groups (or one run of digits); 9 to 15 digits in all
_PHONE = re.compile(r"(?<![\w+.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,15}(?:[ .-]\d{2,4}){0,4}(?![\w])")


def _looks_like_token(match: re.Match[str]) -> str:
    text = match.group()
    mixed = any(c.isdigit() for c in text) and any(c.islower() for c in text) and any(c.isupper() for c in text)
    return "[key]" if mixed else text


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[phone]" if 9 <= digits <= 15 else match.group()


def scrub_text(text: str) -> str:
    """Replace emails, phone numbers and key-like strings by `[email]`, `[phone]`, `[key]`."""
    text = _SECRET.sub("[key]", text)
    text = _TOKEN.sub(_looks_like_token, text)
    text = _EMAIL.sub("[email]", text)
    return _PHONE.sub(_phone, text)


def scrub_row(value: Any) -> Any:
    """A copy of a row with every message `content` scrubbed (roles, labels, weights untouched)."""
    if isinstance(value, list):
        return [scrub_row(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_text(v) if k == "content" and isinstance(v, str) else scrub_row(v) for k, v in value.items()}
    return value
