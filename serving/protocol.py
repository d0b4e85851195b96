"""The HTTP contract: pydantic models of the OpenAI Chat Completions API and ratchet's feedback routes.

Serving code maps these models to the engine and back; it never builds JSON by hand. Requests ignore
unknown fields, as OpenAI does. Fields that front ends send on every request (`tools`, `tool_choice`,
`parallel_tool_calls`) are accepted and answered without tool calls, so they never make a chat fail.
`response_format` (JSON mode, `json_object` or `json_schema`) and `logprobs` / `top_logprobs` are honoured.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.engine import JsonFormat

Role = Literal["system", "developer", "user", "assistant", "tool"]


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return text


# A string stored in a text column: PostgreSQL text cannot hold NUL, so it is refused here, as a 400.
Text = Annotated[str, AfterValidator(_no_nul)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- chat completions: request -------------------------------------------------------------------


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string: text parts are joined; other parts (images) are refused earlier."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(content, list):
            for part in content:
                if part.type != "text":
                    raise ValueError(f"content part type {part.type!r} is not supported: this model reads text only")
        return content


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self


class ChatCompletionRequest(_Request):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    user: Text | None = Field(None, max_length=256)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # Accepted so that front ends which always send them keep working; answered without tool calls.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None  # honoured: JSON mode (where the engine has xgrammar)
    logprobs: bool | None = None  # honoured: each output token's log-probability (raw logits, as vLLM)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # vLLM's extension, for load tests and benchmarks: generate exactly max_tokens, ignoring end-of-sequence.
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stop

    @model_validator(mode="after")
    def _has_a_turn_to_answer(self) -> ChatCompletionRequest:
        if all(m.role in ("system", "developer") for m in self.messages):
            raise ValueError("messages need at least one user, assistant or tool message")
        if self.top_logprobs and not self.logprobs:  # OpenAI's rule: top_logprobs needs logprobs=true
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def json_format(self) -> JsonFormat | None:
        """The engine's `SamplingParams.json_format`: None for text, else any JSON object or this schema."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        return JsonFormat(json.dumps(fmt.json_schema.schema_)) if fmt.type == "json_schema" else JsonFormat()

    def engine_logprobs(self) -> int | None:
        """The engine's `SamplingParams.logprobs`: None, or how many top tokens to give with each token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# -- chat completions: response ------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # the token's UTF-8 bytes (a token may hold part of a character)


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry] | None = None
    refusal: list[TokenLogprobEntry] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- models --------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ratchet"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- feedback ------------------------------------------------------------------------------------


class FeedbackRequest(_Request):
    completion_id: Text = Field(min_length=1, max_length=64)
    choice_index: int = Field(0, ge=0)
    rating: Literal[1, -1] | None = None
    score: int | None = Field(None, ge=1, le=5)
    comment: Text | None = Field(None, max_length=10_000)
    correction: Text | None = Field(None, max_length=100_000)
    user: Text | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _one_judgement(self) -> FeedbackRequest:
        if (self.rating is None) == (self.score is None):
            raise ValueError("give exactly one of rating (1 or -1) and score (1 to 5)")
        return self


class FeedbackResponse(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    created: int


class ComparisonRequest(_Request):
    completion_ids: list[Text] = Field(min_length=2, max_length=2)
    winner: Text = Field(min_length=1, max_length=64)
    user: Text | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _winner_is_one_of_them(self) -> ComparisonRequest:
        a, b = self.completion_ids
        if a == b:
            raise ValueError("completion_ids must name two different completions")
        if self.winner not in (a, b, "tie"):
            raise ValueError('winner must be one of completion_ids or "tie"')
        return self


class ComparisonResponse(BaseModel):
    id: str
    object: Literal["comparison"] = "comparison"
    created: int


# -- errors --------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
