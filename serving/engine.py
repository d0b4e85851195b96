"""The engine interface: what serving needs from an inference backend, and nothing more.

An engine turns one `GenerationRequest` (prompt token ids, an adapter name or None for the base model,
sampling parameters) into an async stream of `GenerationOutput` deltas, the last of which carries a
`finish_reason`. It also loads and unloads LoRA adapters by name from a directory the caller has already
checked (engines never resolve user-given paths). The engine knows nothing about HTTP, chat templates or
the store: serving applies the chat template, fans out `n` choices as separate requests, and logs.

Two implementations: `serving.engines.hf.HFEngine` (transformers + PEFT, continuous batching; the
reference) and `serving.engines.vllm.VLLMEngine` (vLLM's AsyncLLM with LoRA). `create_engine` picks one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class JsonFormat:
    """Constrain the output to JSON that matches `schema`, a JSON Schema as text (OpenAI's `response_format`:
    `json_schema`, or `json_object`, which is the schema `{"type": "object"}`). Both engines write it compact,
    with no whitespace outside strings (vLLM's `disable_any_whitespace`): a small model left free to add
    whitespace may add nothing else until max_tokens."""

    schema: str = '{"type": "object"}'


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # per request: the same seed gives the same sample, whatever else is running
    stop: tuple[str, ...] = ()  # stop strings; the text stops before the first one found
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens
    # None: no log-probabilities. k >= 0: each output token's logprob and the k most likely tokens at its
    # position (OpenAI's logprobs=true with top_logprobs=k).
    logprobs: int | None = None
    json_format: JsonFormat | None = None  # JSON mode; an engine without a grammar library answers unconstrained


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # a loaded adapter's name; None = the base model
    # False: the caller reads only the whole answer (a JSON response), so the engine may send the first
    # token (time to first token) and then everything else in the last output, instead of every step's delta.
    stream: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (its raw logits: before temperature, top_p and
    penalties, as vLLM's default `raw_logprobs`), and the most likely tokens at that position as
    (token id, logprob), most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenerationOutput:
    """A delta: the tokens and text produced since the previous output of this request."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None  # set on the last output only
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative
    logprobs: list[TokenLogprob] | None = None  # with params.logprobs set: one per entry of token_ids


class AdapterNotLoadedError(KeyError):
    """A request names an adapter the engine has not loaded (callers load first)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AdapterLoadError(RuntimeError):
    """An adapter could not be loaded (bad files, wrong base model, rank over the limit, ...)."""


class AdapterBusyError(AdapterLoadError):
    """A load refused for now, not for good: the name is in use or being unloaded, or every slot is busy."""


class Engine(Protocol):
    """What every engine offers. `generate` may be called concurrently from many tasks."""

    context_length: int

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> list[str]: ...

    async def shutdown(self) -> None: ...
