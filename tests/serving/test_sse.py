"""The SSE lines of a stream: the fast path for content deltas writes exactly what the pydantic model does."""

from __future__ import annotations

import json

import pytest

from serving.protocol import ChatCompletionChunk, ChunkChoice, Delta
from serving.sse import ChunkRenderer


@pytest.mark.parametrize("text", ["hi", " world", 'quote " and \\ slash', "é, 日本, 🙂", "\n\t\x00\x1f", "\u2028", ""])
@pytest.mark.parametrize("index", [0, 3])
def test_a_content_line_is_the_models_own_bytes(text, index):
    render = ChunkRenderer("chatcmpl-abc", 1733000000, "ft-0001")
    expected = ChatCompletionChunk(
        id="chatcmpl-abc",
        created=1733000000,
        model="ft-0001",
        choices=[ChunkChoice(index=index, delta=Delta(content=text))],
    ).model_dump_json(exclude={"usage"})
    line = render.content(index, text)
    assert line == f"data: {expected}\n\n"
    assert render.content(index, text) == line  # the cached frame gives the same bytes again
    assert json.loads(line.removeprefix("data: "))["choices"][0]["delta"]["content"] == text
