"""Sequence: one request in flight in the hf engine, and what each sampled token does to it.

It holds the request's output tokens, detokenizer, stop matcher, random generator and JSON constraint, and
the caller's event loop and queue its outputs go to. `append` turns a sampled token into a `Delta` (text,
finish reason); `output` turns a delta into what the caller gets, holding a JSON answer back for its end.
The engine decides when a sequence runs and ends; a sequence never touches the model.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.detokenize import IncrementalDetokenizer, StopStringMatcher
from serving.engine import FinishReason, GenerationOutput, GenerationRequest, TokenLogprob
from serving.engines.grammar import JsonConstraint


@dataclass(frozen=True)
class Delta:
    """What one step added to a sequence; finish_reason is set on its last."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop  # the consumer's event loop, and its queue of outputs
    outputs: asyncio.Queue
    max_tokens: int  # max_tokens, capped by the context length
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    generator: torch.Generator | None  # None for greedy requests
    constraint: JsonConstraint | None = None  # JSON mode
    output_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    held: tuple[list[int], list[str], list[TokenLogprob]] = field(default_factory=lambda: ([], [], []))  # not sent yet

    @classmethod
    def start(
        cls, request: GenerationRequest, tokenizer: Any, context_length: int, loop, outputs, constraint=None
    ) -> Sequence:
        """Check the request and set up its state; outputs go to `outputs`, an asyncio.Queue of `loop`."""
        params, n_prompt = request.params, len(request.prompt_ids)
        if n_prompt == 0 or n_prompt >= context_length:
            raise ValueError(f"the prompt has {n_prompt} tokens; this model takes 1 to {context_length - 1}")
        if params.max_tokens < 1 or params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError("max_tokens must be >= 1, temperature >= 0 and top_p in (0, 1]")
        generator = None
        if params.temperature > 0:
            seed = params.seed % 2**63 if params.seed is not None else secrets.randbits(63)
            generator = torch.Generator().manual_seed(seed)
        return cls(
            request=request,
            loop=loop,
            outputs=outputs,
            max_tokens=min(params.max_tokens, context_length - n_prompt),
            detokenizer=IncrementalDetokenizer(tokenizer, request.prompt_ids),
            stops=StopStringMatcher(params.stop),
            generator=generator,
            constraint=constraint,
        )

    @property
    def adapter_name(self) -> str:
        return self.request.adapter or "__base__"  # PEFT's name for "no adapter" in a mixed batch

    def append(self, token: int, logprob: TokenLogprob | None, eos_ids: set[int]) -> Delta:
        """Take one sampled token: the text it adds (through the detokenizer and the stop strings) and the
        finish reason when it ends the request, with what the detokenizer and the stop matcher held back."""
        self.output_ids.append(token)
        if self.constraint is not None:
            self.constraint.accept(token)
        params = self.request.params
        is_eos = (token in eos_ids and not params.ignore_eos) or bool(self.constraint and self.constraint.done)
        text, stopped = self.stops.push("" if is_eos else self.detokenizer.push(token))
        reason = "stop" if stopped or is_eos else "length" if len(self.output_ids) >= self.max_tokens else None
        if reason and not stopped:  # the end: flush what the detokenizer and the stop matcher held back
            tail, stopped = self.stops.push(self.detokenizer.flush())
            text += tail + ("" if stopped else self.stops.flush())
            reason = "stop" if stopped else reason
        return Delta([token], text, reason, [logprob] if logprob else [])

    def output(self, delta: Delta) -> GenerationOutput | None:
        """What goes to the caller for `delta`: None while a JSON answer (stream=False) holds its tokens back
        for its last output (its first token still goes out at once)."""
        held_ids, held_text, held_logprobs = self.held
        if delta.finish_reason is None and not self.request.stream and len(self.output_ids) > 1:
            held_ids += delta.token_ids
            held_text.append(delta.text)
            held_logprobs += delta.logprobs
            return None
        token_ids, text, logprobs = delta.token_ids, delta.text, delta.logprobs
        if held_ids or held_text:
            token_ids, text, logprobs = held_ids + token_ids, "".join(held_text) + text, held_logprobs + logprobs
            self.held = ([], [], [])
        return GenerationOutput(
            token_ids=token_ids,
            text=text,
            finish_reason=delta.finish_reason,
            prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=len(self.output_ids),
            logprobs=None if self.request.params.logprobs is None else logprobs,
        )
