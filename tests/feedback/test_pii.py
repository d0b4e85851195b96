"""The PII scrubber on a labelled set (pii_cases.json): every email, phone number and key goes, and text
without any comes back unchanged. benchmarks/bench_pii.py scores other scrubbers on the same set."""

import json
from pathlib import Path

import pytest

from feedback.pii import scrub_row, scrub_text

CASES = json.loads((Path(__file__).parent / "pii_cases.json").read_text())


@pytest.mark.parametrize("case", CASES["pii"], ids=lambda c: c["text"][:40])
def test_every_email_phone_and_key_is_replaced(case):
    scrubbed = scrub_text(case["text"])
    for secret in case["secrets"]:
        assert secret not in scrubbed, scrubbed
    assert any(tag in scrubbed for tag in ("[email]", "[phone]", "[key]"))


@pytest.mark.parametrize("text", CASES["clean"])
def test_text_without_pii_is_unchanged(text):
    assert scrub_text(text) == text


def test_rows_are_scrubbed_in_message_content_only():
    row = {"messages": [{"role": "user", "content": "mail ann@example.com"}], "label": "ann@example.com"}
    assert scrub_row(row) == {"messages": [{"role": "user", "content": "mail [email]"}], "label": "ann@example.com"}
