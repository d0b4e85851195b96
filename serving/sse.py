"""Server-sent event lines of a streamed chat completion (`data: {chunk}` and a blank line each)."""

from __future__ import annotations

from pydantic_core import to_json

from serving.protocol import ChatCompletionChunk, ChunkChoice, Delta, Usage


class ChunkRenderer:
    """The SSE lines of one streamed call. A content delta, nearly every line of a stream, is the call's
    fixed JSON around the JSON of its text: rendered once per choice by the pydantic model itself, then
    reused, so the bytes are the model's own."""

    _MARK = "\x00content\x00"

    def __init__(self, id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = id, created, model
        self._around: dict[int, tuple[str, str]] = {}

    def __call__(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return f"data: {body.model_dump_json(exclude={'usage'} if usage is None else None)}\n\n"

    def content(self, index: int, text: str) -> str:
        around = self._around.get(index)
        if around is None:
            line = self([ChunkChoice(index=index, delta=Delta(content=self._MARK))])
            head, _, tail = line.partition(to_json(self._MARK).decode())
            around = self._around[index] = (head, tail)
        return around[0] + to_json(text).decode() + around[1]
