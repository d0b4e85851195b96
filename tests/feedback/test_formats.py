"""Line validation and canonical form of training rows (no database needed)."""

from __future__ import annotations

import json

import pytest

from feedback.formats import InvalidLine, canonical_line, content_hash, validate_line, validate_row

USER = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "4"}
SFT = {"messages": [{"role": "system", "content": "Be brief."}, USER, ANSWER]}
DPO = {
    "input": {"messages": [USER]},
    "preferred_output": [{"role": "assistant", "content": "4"}],
    "non_preferred_output": [{"role": "assistant", "content": "5"}],
}
KTO = {"prompt": [USER], "completion": [ANSWER], "label": True}


def reason(row: object) -> str:
    text = row if isinstance(row, str) else json.dumps(row)
    with pytest.raises(InvalidLine) as caught:
        validate_line(text)
    return caught.value.reason


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"messages": [', "bad JSON: Expecting value at column 15"),
        ('{"messages": []', "bad JSON: Expecting ',' delimiter at column 16"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"hello"', "expected a JSON object, got a string"),
        (
            '{"text": "hi"}',
            'unknown format: expected "messages" (SFT), "input", "preferred_output", "non_preferred_output" (DPO) '
            'or "prompt", "completion", "label" (KTO); got keys "text"',
        ),
        (
            "{}",
            'unknown format: expected "messages" (SFT), "input", "preferred_output", "non_preferred_output" (DPO) '
            'or "prompt", "completion", "label" (KTO); got keys none',
        ),
        ('{"messages": "hi"}', "messages must be a list of messages, got a string"),
        ('{"messages": []}', "messages is empty"),
        ('{"messages": ["hi"]}', "messages[0] must be an object, got a string"),
        ('{"messages": [{"content": "hi"}]}', 'messages[0] has no "role"'),
        ('{"messages": [{"role": "user"}]}', 'messages[0] has no "content"'),
        (
            '{"messages": [{"role": "tool", "content": "x"}]}',
            'messages[0] has unknown role "tool" (allowed: system, developer, user, assistant)',
        ),
        (
            '{"messages": [{"role": 3, "content": "x"}]}',
            "messages[0] has unknown role a number (allowed: system, developer, user, assistant)",
        ),
        ('{"messages": [{"role": "user", "content": "  "}]}', "messages[0] has empty content"),
        (
            '{"messages": [{"role": "user", "content": 7}]}',
            "messages[0] content must be a string or a list of text parts, got a number",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
            'messages[0] content[0] is a "image_url" part: only text parts are supported',
        ),
        (
            '{"messages": [{"role": "user", "content": "x", "tool_calls": []}]}',
            'messages[0] has unexpected key "tool_calls" (allowed: role, content, name, weight)',
        ),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message to learn from"),
        (
            '{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "and?"}]}',
            "the last message must be from the assistant (got user)",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "yo"}]}',
            "messages[0] has a weight: only assistant messages of SFT rows take one",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0.5}]}',
            "messages[1] weight must be 0 or 1, got 0.5",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": true}]}',
            "messages[1] weight must be 0 or 1, got true",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]}',
            "every assistant message has weight 0: nothing to learn from",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "weight": 2}',
            "weight must be 0 or 1, got 2",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": []}',
            'unexpected key "tools" in an SFT row (allowed: messages, weight)',
        ),
        ('{"input": {"messages": []}, "preferred_output": []}', 'DPO row is missing "non_preferred_output"'),
        (
            '{"input": [], "preferred_output": [], "non_preferred_output": []}',
            "input must be an object, got an array",
        ),
        ('{"prompt": [], "completion": []}', 'KTO row is missing "label"'),
    ],
)
def test_reasons_are_exact(line: str, expected: str) -> None:
    assert reason(line) == expected


def test_dpo_reasons() -> None:
    assert reason({**DPO, "input": {"messages": [USER, ANSWER]}}) == (
        "input.messages must end with a user message (got assistant)"
    )
    assert reason({**DPO, "input": {"messages": [USER], "tools": []}}) == (
        'input has unexpected key "tools" (allowed: messages)'
    )
    two = [ANSWER, ANSWER]
    assert reason({**DPO, "preferred_output": two}) == (
        "preferred_output must hold exactly one assistant message, got 2 messages"
    )
    assert reason({**DPO, "preferred_output": ANSWER}) == (
        "preferred_output must hold exactly one assistant message, got an object"
    )
    assert reason({**DPO, "non_preferred_output": [USER]}) == (
        'non_preferred_output[0] role must be "assistant", got "user"'
    )
    same = [{"role": "assistant", "content": "4"}]
    assert reason({**DPO, "non_preferred_output": same}) == "preferred_output and non_preferred_output are identical"


def test_kto_reasons() -> None:
    assert reason({**KTO, "label": 1}) == "label must be true or false, got 1"
    assert reason({**KTO, "prompt": "2+2?"}) == (
        "prompt must be a list of messages (TRL's conversational format), got a string"
    )
    assert reason({**KTO, "completion": []}) == "completion must hold exactly one assistant message, got 0 messages"


def test_good_rows_of_each_kind() -> None:
    assert validate_row(SFT).kind == "sft"
    assert validate_row(DPO).kind == "dpo"
    assert validate_row(KTO).kind == "kto"
    assert validate_row({**KTO, "label": False}).data["label"] is False
    developer = {"messages": [{"role": "developer", "content": "Be kind.", "name": "ops"}, USER, ANSWER]}
    assert validate_row(developer).data == developer


def test_weights_are_kept() -> None:
    row = {
        "messages": [USER, {"role": "assistant", "content": "5", "weight": 0}, USER, {**ANSWER, "weight": 1}],
        "weight": 1,
    }
    assert validate_row(row).data == row


def test_canonical_form_orders_keys_and_joins_text_parts() -> None:
    messy = {
        "messages": [
            {"content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}], "role": "user"},
            {"weight": 1, "content": "4", "role": "assistant"},
        ]
    }
    row = validate_row(messy)
    assert canonical_line(row.data) == (
        '{"messages": [{"role": "user", "content": "What is\\n2+2?"}, '
        '{"role": "assistant", "content": "4", "weight": 1}]}'
    )
    # the hash ignores layout: the canonical row, re-parsed, hashes the same
    assert validate_line(canonical_line(row.data)).content_hash == row.content_hash
    assert content_hash({"b": 1, "a": 2}) == content_hash({"a": 2, "b": 1})


def test_canonical_line_is_a_fixed_point() -> None:
    for row in (SFT, DPO, KTO, {"messages": [{"role": "user", "content": "héllo ✓"}, ANSWER]}):
        line = canonical_line(row)
        assert canonical_line(validate_line(line).data) == line


def test_content_is_kept_byte_for_byte() -> None:
    row = {"messages": [{"role": "user", "content": "  padded\n"}, {"role": "assistant", "content": "ok  "}]}
    assert validate_row(row).data == row


def test_token_limit_only_with_a_counter() -> None:
    def words(messages: list[dict]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    long_answer = {"messages": [USER, {"role": "assistant", "content": "word " * 20}]}
    assert validate_row(long_answer).tokens is None
    assert validate_row(long_answer, count_tokens=words).tokens == 23
    with pytest.raises(InvalidLine, match=r"^23 tokens > context 10$"):
        validate_row(long_answer, count_tokens=words, max_tokens=10)
    # DPO counts the prompt with its longer answer
    long_rejected = {**DPO, "non_preferred_output": [{"role": "assistant", "content": "no " * 9}]}
    with pytest.raises(InvalidLine, match=r"^12 tokens > context 11$"):
        validate_row(long_rejected, count_tokens=words, max_tokens=11)
