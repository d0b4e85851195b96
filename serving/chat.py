"""POST /v1/chat/completions: OpenAI Chat Completions over the replica's engine, logged to the store.

The steps of one request: 1) route `model` to an adapter, 2) render the chat template and check the
prompt against the context, 3) start `n` engine requests (choice i gets seed + i), 4) answer as one JSON
body or as SSE chunks ending with `data: [DONE]`, 5) hand the completion to the batched log writer, off
the hot path. A stream the client drops is aborted in the engine and still logged, as `abort`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from feedback.errors import DomainError
from feedback.models import Completion, new_id
from serving import metrics
from serving.auth import require_api_key
from serving.engine import AdapterNotLoadedError, GenerationRequest, JsonFormat, SamplingParams, TokenLogprob
from serving.errors import APIError, as_response
from serving.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprobEntry,
    TopLogprob,
    Usage,
)
from serving.runtime import Route, ServingRuntime, get_runtime

router = APIRouter()


@dataclass
class ChoiceState:
    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprobEntry] | None = None  # a list when the request asked for logprobs


@dataclass
class Call:
    """One chat request in flight: what it asked, where it went, what came back."""

    id: str
    body: ChatCompletionRequest
    route: Route
    prompt_ids: list[int]
    params: SamplingParams
    key_id: str | None
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    choices: list[ChoiceState] = field(default_factory=list)
    first_token_at: float | None = None

    def requests(self) -> list[GenerationRequest]:
        seed = self.params.seed
        return [
            GenerationRequest(
                request_id=f"{self.id}-{i}",
                prompt_ids=self.prompt_ids,
                adapter=self.route.engine_adapter,
                params=self.params if seed is None else _with_seed(self.params, seed + i),
                stream=bool(self.body.stream),
            )
            for i in range(self.body.n)
        ]

    def usage(self) -> Usage:
        completion = sum(c.completion_tokens for c in self.choices)
        prompt = len(self.prompt_ids)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    return replace(params, seed=seed)


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest,
    key_id: str | None = Depends(require_api_key),
    runtime: ServingRuntime = Depends(get_runtime),
):
    # Checked and taken before the first await (admit() does not suspend on entry), so a burst of
    # requests cannot all pass the check before any of them counts.
    runtime.check_capacity()
    slot = AsyncExitStack()
    await slot.enter_async_context(runtime.admit())
    streaming = False
    try:
        call = await _prepare(body, key_id, runtime)
        if body.stream:
            streaming = True  # the response holds the slot now: it outlives this function
            return AdmittedStream(
                slot,
                _stream(call, runtime),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(call, runtime)
    finally:
        if not streaming:
            await slot.aclose()


class AdmittedStream(StreamingResponse):
    """An SSE response that holds its request's admission slot until it ends, however it ends (done,
    failed, client gone, or never started), and closes its generator so the engine work stops with it."""

    def __init__(self, slot: AsyncExitStack, content: AsyncIterator[str], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                await self.slot.aclose()


async def _prepare(body: ChatCompletionRequest, key_id: str | None, runtime: ServingRuntime) -> Call:
    settings = runtime.settings
    if body.n > settings.max_n:
        raise APIError(400, f"n={body.n} is more than this server allows ({settings.max_n})", param="n")
    # 1) route
    route = await runtime.route(body.model, body.user or key_id)
    # 2) prompt and token budget
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt_ids = runtime.prompt_ids(messages)
    room = runtime.context_length - len(prompt_ids)
    if room <= 0:
        raise APIError(
            400,
            f"the prompt is {len(prompt_ids)} tokens but the model's context is "
            f"{runtime.context_length}: shorten the conversation",
            param="messages",
            code="context_length_exceeded",
        )
    requested = body.token_limit()
    if requested is not None and requested > room:
        raise APIError(
            400,
            f"max_tokens={requested} does not fit: the prompt takes {len(prompt_ids)} of "
            f"{runtime.context_length} tokens, leaving {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    params = SamplingParams(
        max_tokens=requested or min(settings.default_max_tokens, room),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=tuple(body.stop_list()),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        ignore_eos=body.ignore_eos,
        logprobs=body.engine_logprobs(),
        json_format=_json_format(body),
    )
    call = Call(id=new_id("chatcmpl"), body=body, route=route, prompt_ids=prompt_ids, params=params, key_id=key_id)
    call.choices = [ChoiceState(i, logprobs=None if params.logprobs is None else []) for i in range(body.n)]
    return call


def _json_format(body: ChatCompletionRequest) -> JsonFormat | None:
    """JSON mode for the engine; a schema that cannot become a grammar is a 400 here, before any streaming."""
    fmt = body.json_format()
    if fmt is not None:
        from serving.engines.grammar import check_schema  # xgrammar and torch: only for JSON-schema requests

        try:
            check_schema(fmt.schema)
        except ValueError as error:
            raise APIError(400, str(error), param="response_format") from None
    return fmt


def _logprob_entries(runtime: ServingRuntime, logprobs: list[TokenLogprob] | None) -> list[TokenLogprobEntry]:
    """The engine's token logprobs in OpenAI's shape; special tokens (end of sequence) have no text and
    are left out, so the entries' tokens spell the answer."""
    pieces = runtime.token_pieces

    def top(token_id: int, logprob: float) -> TopLogprob:
        text, raw = pieces(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=raw)

    def entry(lp: TokenLogprob) -> TokenLogprobEntry:
        text, raw = pieces(lp.token_id)
        return TokenLogprobEntry(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=[top(*t) for t in lp.top])

    return [entry(lp) for lp in logprobs or [] if not pieces.is_special(lp.token_id)]


async def _run_choice(
    call: Call, runtime: ServingRuntime, request: GenerationRequest, index: int, queue: asyncio.Queue | None
) -> None:
    """Drive one engine request to its end, updating the choice (and feeding the stream queue).

    With a queue, every delta goes there as (index, text, finish_reason, logprob entries or None), and the
    task's end as (index, None, error-or-None, None), so the streaming side needs only one `await queue.get()`.
    """
    state = call.choices[index]
    error: BaseException | None = None
    try:
        async for output in runtime.engine.generate(request):
            if call.first_token_at is None and output.token_ids:
                call.first_token_at = time.perf_counter()
            state.text += output.text
            state.completion_tokens = output.completion_tokens
            if output.finish_reason:
                state.finish_reason = output.finish_reason
            entries = None if state.logprobs is None else _logprob_entries(runtime, output.logprobs)
            if entries:
                state.logprobs += entries
            if queue is not None and (output.text or output.finish_reason or entries):
                queue.put_nowait((index, output.text, output.finish_reason, entries))
    except Exception as exc:
        if isinstance(exc, AdapterNotLoadedError):  # evicted or unloaded between routing and the first step
            exc = APIError(503, f"{exc}; retry shortly", code="adapter_unavailable", headers={"Retry-After": "1"})
        elif isinstance(exc, ValueError):  # the engine refused the request as it is (a schema it cannot use)
            exc = APIError(400, str(exc))
        error = exc
        if queue is None:
            raise exc from None
    finally:
        if queue is not None:
            queue.put_nowait((index, None, error, None))


async def _complete(call: Call, runtime: ServingRuntime) -> ChatCompletion:
    tasks = [asyncio.create_task(_run_choice(call, runtime, r, i, None)) for i, r in enumerate(call.requests())]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        _finish(call, runtime)
        raise
    _finish(call, runtime)
    return ChatCompletion(
        id=call.id,
        created=call.created,
        model=call.route.answered,
        choices=[
            Choice(
                index=c.index,
                message=AssistantMessage(content=c.text),
                finish_reason=c.finish_reason or "stop",
                logprobs=None if c.logprobs is None else ChoiceLogprobs(content=c.logprobs),
            )
            for c in call.choices
        ],
        usage=call.usage(),
    )


async def _stream(call: Call, runtime: ServingRuntime) -> AsyncIterator[str]:
    queue: asyncio.Queue = asyncio.Queue()
    include_usage = bool(call.body.stream_options and call.body.stream_options.include_usage)

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(
            id=call.id, created=call.created, model=call.route.answered, choices=choices, usage=usage
        )
        return f"data: {body.model_dump_json(exclude={'usage'} if usage is None else None)}\n\n"

    tasks: list[asyncio.Task] = []
    try:
        tasks = [asyncio.create_task(_run_choice(call, runtime, r, i, queue)) for i, r in enumerate(call.requests())]
        for i in range(call.body.n):
            yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        running = len(tasks)
        while running:
            index, text, finish, entries = await queue.get()
            if text is None:  # a choice's task ended; `finish` holds its error, if any
                running -= 1
                if isinstance(finish, BaseException):
                    raise finish
                continue
            if text or entries:
                logprobs = None if entries is None else ChoiceLogprobs(content=entries)
                yield chunk([ChunkChoice(index=index, delta=Delta(content=text), logprobs=logprobs)])
            if finish:
                yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=finish)])
        if include_usage:
            yield chunk([], usage=call.usage())
        yield "data: [DONE]\n\n"
    except (APIError, DomainError) as error:
        # The status line is gone once streaming started: report the error in-band, as OpenAI does.
        yield f"data: {as_response(error).body.decode()}\n\n"
    finally:
        # Reached on normal end, on error, and when the client disconnects (the generator is closed).
        for task in tasks:
            if not task.done():
                task.cancel()
        for state in call.choices:
            if state.finish_reason is None:
                state.finish_reason = "abort"
        _finish(call, runtime)


def _finish(call: Call, runtime: ServingRuntime) -> None:
    """Record metrics and hand the completion to the batched writer (never blocks on the database)."""
    elapsed = time.perf_counter() - call.started
    usage = call.usage()
    metrics.observe_completion(
        call.route.answered,
        usage.prompt_tokens,
        usage.completion_tokens,
        elapsed,
        None if call.first_token_at is None else call.first_token_at - call.started,
    )
    body = call.body
    runtime.writer.submit(
        Completion(
            id=call.id,
            user=body.user,
            api_key_id=call.key_id,
            model=body.model,
            adapter=call.route.answered,
            base_model=runtime.base_model_id,
            route=call.route.arm,
            messages=[m.model_dump(exclude_none=True) for m in body.messages],
            choices=[
                {"index": c.index, "text": c.text, "finish_reason": c.finish_reason or "abort"} for c in call.choices
            ],
            params={
                "temperature": call.params.temperature,
                "top_p": call.params.top_p,
                "max_tokens": call.params.max_tokens,
                "seed": body.seed,
                "stop": list(call.params.stop),
                "n": body.n,
                "presence_penalty": body.presence_penalty,
                "frequency_penalty": body.frequency_penalty,
                "logprobs": call.params.logprobs,
                "json_schema": None if call.params.json_format is None else call.params.json_format.schema,
            },
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=elapsed * 1000.0,
        )
    )
