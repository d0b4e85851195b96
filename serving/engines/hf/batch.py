"""The bookkeeping behind HFEngine's continuous batching: the batched KV cache, sampling, delivering outputs.
Each row is a `Sequence` (sequence.py).

- `KVBatch`: the running sequences and their KV cache, left-padded to one length. Rows join (`extend`,
  after their prefill) and leave (`keep`) between decode steps; columns that are padding in every row are
  dropped so the cache does not grow with sequences that have left.
- `SlabLayer`: a cache layer that writes each step's keys and values into spare columns of a buffer
  instead of concatenating (transformers' `DynamicLayer` copies the whole cache on every step, a cost
  that grows with every token and every row). `new_cache()` makes a cache of them.
- `left_pad` builds the inputs of a batched prefill; `sample` picks each row's next token and
  `token_logprobs` gives its log-probability where the request asked; `deliver` and `hand_over` pass
  outputs back to the callers' event loops.

Row independence is what makes a request's output the same whatever else is running: padding is masked
out of attention, positions count real tokens only (not padding), and every sampled row has its own
`torch.Generator`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from serving.engine import GenerationOutput, TokenLogprob
from serving.engines.hf.sequence import Sequence

MIN_TEMPERATURE = 1e-4  # sampling at a lower temperature is greedy in all but name (float32 logits)
SPARE_COLUMNS = 64  # a slab grows by this many positions (plus a quarter of its length) when it is full


class SlabLayer(DynamicLayer):
    """One layer's keys and values, [rows, heads, length, head_dim], as views of a buffer with spare columns:
    `update` writes the new positions in place; only a full buffer is copied (into a larger one)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self.set(key_states, value_states)
            return self.keys, self.values
        start, end = self.keys.shape[2], self.keys.shape[2] + key_states.shape[2]
        if end > self._keys.shape[2] or key_states.shape[0] != self._keys.shape[0]:
            self.set(torch.cat([self.keys, key_states], dim=2), torch.cat([self.values, value_states], dim=2))
        else:
            self._keys[:, :, start:end] = key_states
            self._values[:, :, start:end] = value_states
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the contents (rows joined or left): copy them into a fresh buffer with room to grow."""
        rows, heads, length, dim = keys.shape
        capacity = length + SPARE_COLUMNS + length // 4
        self._keys = keys.new_empty((rows, heads, capacity, dim))
        self._values = values.new_empty((rows, heads, capacity, values.shape[3]))
        self._keys[:, :, :length], self._values[:, :, :length] = keys, values
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]


def new_cache() -> Cache:
    return Cache(layer_class_to_replicate=SlabLayer)


class KVBatch:
    """Running sequences, their DynamicCache ([rows, heads, length, head_dim] per layer) and attention mask
    ([rows, length]; 0 = left padding). Row i of every tensor belongs to `seqs[i]`."""

    def __init__(self, seqs: list[Sequence], cache: Cache, mask: torch.Tensor) -> None:
        self.seqs, self.cache, self.mask = seqs, cache, mask

    def __len__(self) -> int:
        return len(self.seqs)

    def extend(self, other: KVBatch) -> None:
        """Append `other`'s rows, left-padding whichever cache is shorter."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.set(
                torch.cat([_pad_kv(mine.keys, length), _pad_kv(theirs.keys, length)]),
                torch.cat([_pad_kv(mine.values, length), _pad_kv(theirs.values, length)]),
            )
        self.mask = torch.cat([_pad_mask(self.mask, length), _pad_mask(other.mask, length)])
        self.seqs = self.seqs + other.seqs

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, then drop leading columns that are padding in every remaining row."""
        if len(rows) == len(self.seqs):
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask[index]
        start = int(self.mask.any(dim=0).long().argmax()) if rows else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.set(layer.keys[index, :, start:], layer.values[index, :, start:])
        self.seqs = [self.seqs[i] for i in rows]

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask and position_ids of one decode step: every row's last token.

        The mask goes out as the 4D boolean mask ([rows, 1, 1, length], True = attend) that transformers
        would build from the 2D one for a single new token (padding masked, nothing causal to mask), so the
        model uses it as it is: building it per step through `create_causal_mask` is a visible share of the
        decode thread on a model as small as the demo's."""
        input_ids = torch.tensor([[s.output_ids[-1]] for s in self.seqs], dtype=torch.long)
        position_ids = self.mask.sum(dim=1, keepdim=True)  # real tokens before this one
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return input_ids, self.mask.bool()[:, None, None, :], position_ids


def _pad_kv(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, length - x.shape[2], 0))


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (length - mask.shape[1], 0))


async def read_outputs(outputs: asyncio.Queue, stopped_early: Callable[[], None]) -> AsyncIterator[GenerationOutput]:
    """A request's outputs from its queue, up to the one with a finish_reason; an exception in the queue is
    raised. If the consumer stops first (closed, cancelled, disconnected), `stopped_early()` frees the slot.
    Callers that re-yield these must close this generator with theirs (`contextlib.aclosing`)."""
    finished = False
    try:
        while not finished:
            item = await outputs.get()
            if isinstance(item, BaseException):
                finished = True
                raise item
            finished = item.finish_reason is not None
            yield item
    finally:
        if not finished:
            stopped_early()


def deliver(items: list[tuple[Sequence, GenerationOutput | BaseException]]) -> list[Sequence]:
    """Hand outputs over to their consumers' event loops. Returns the sequences whose consumer's loop is
    closed (nobody is listening any more)."""
    closed = hand_over([(seq.loop, seq.outputs, item) for seq, item in items])
    return [seq for seq, _ in items if seq.loop in closed]


def hand_over(items: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, Any]]) -> set:
    """Put each item into its queue on that queue's event loop, with one wake-up per loop (not per item:
    each wake-up is a cross-thread call, costly at one per token). Returns the loops that are closed."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
    for loop, outputs, item in items:
        by_loop.setdefault(loop, []).append((outputs, item))
    closed = set()
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, pairs)
        except RuntimeError:
            closed.add(loop)
    return closed


def _put_all(pairs: list[tuple[asyncio.Queue, Any]]) -> None:
    for outputs, item in pairs:
        outputs.put_nowait(item)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of a batched prefill (positions start at 0 per row)."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, length - len(prompt) :] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, mask, position_ids


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """Next token of each row of `logits` ([rows, vocab], float32): penalties, then greedy or
    temperature + top-p with the row's own generator."""
    tokens = logits.argmax(dim=-1).tolist()  # greedy rows without penalties are done here
    for i, seq in enumerate(seqs):
        params = seq.request.params
        penalized = (params.presence_penalty or params.frequency_penalty) and seq.output_ids
        if (params.temperature == 0 and not penalized) or seq.finish_reason is not None:
            continue
        row = logits[i]
        if penalized:
            # OpenAI: logit -= count * frequency_penalty + (count > 0) * presence_penalty, over the output so far.
            counts = torch.bincount(torch.tensor(seq.output_ids), minlength=row.shape[0])[: row.shape[0]].float()
            row = row - counts * params.frequency_penalty - (counts > 0).float() * params.presence_penalty
        if params.temperature == 0:
            tokens[i] = int(row.argmax())
            continue
        # Shifted by the max and with a floor on the temperature, so that a tiny (even subnormal) temperature
        # is near-greedy instead of 0/0 = NaN, which would fail every request in the batch.
        probs = torch.softmax((row - row.max()) / max(params.temperature, MIN_TEMPERATURE), dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(dim=0) - sorted_probs >= params.top_p
            outside[0] = False  # the top token always stays (a top_p below float32's range rounds to 0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(outside, 0.0))
        tokens[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
    return tokens


def token_logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> list[TokenLogprob | None]:
    """For each row whose request asked for logprobs: the chosen token's log-probability under the raw
    logits ([rows, vocab], float32) and the request's `logprobs` most likely tokens; None for the others."""
    rows = [i for i, seq in enumerate(seqs) if seq.request.params.logprobs is not None]
    out: list[TokenLogprob | None] = [None] * len(seqs)
    if not rows:
        return out
    logp = torch.log_softmax(logits[rows], dim=-1)
    chosen = logp[torch.arange(len(rows)), torch.tensor([tokens[i] for i in rows])].tolist()
    k = min(max(seqs[i].request.params.logprobs for i in rows), logp.shape[1])
    top_values, top_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        n = seqs[i].request.params.logprobs
        out[i] = TokenLogprob(tokens[i], chosen[j], tuple(zip(top_ids[j][:n], top_values[j][:n], strict=True)))
    return out
