"""Token ids -> text, one token at a time, for streaming: an incremental detokenizer and a stop-string matcher.

`IncrementalDetokenizer` turns each new token into the text it adds. It never emits broken UTF-8: a token
that ends inside a multi-byte character (byte-level BPE splits them) gives "" until the character is
complete. It decodes a short window of recent tokens rather than the whole output, so a long completion
costs O(1) per token, and starts that window inside the prompt so a first token that begins with a space
(sentencepiece) keeps it. The concatenation of its deltas equals `tokenizer.decode(output_ids)`. With a fast
(Rust) tokenizer that does no clean-up of its own, it calls the Rust decoder directly: transformers'
`decode` wraps that one call in Python (argument conversion) that, paid on every token, is a visible share of
the hf engine's decode thread on the demo model; the text is the same.

`TokenPieces` gives one token's own text and bytes, for OpenAI's logprobs: exact bytes for byte-level BPE
(where a token may hold part of a character), the decoded text's bytes otherwise.

`StopStringMatcher` sits after it: it holds back text that could be the start of a stop string and, once a
stop string appears, returns the text before it and reports the stop. Text after a stop is never emitted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.tokenization_utils_tokenizers import TokenizersBackend

REPLACEMENT_CHAR = "\ufffd"  # what decode gives for an incomplete UTF-8 sequence
PROMPT_WINDOW = 5  # prompt tokens decoded with the output so the first delta keeps its leading space


class IncrementalDetokenizer:
    """Feed output tokens with `push`, get the new text; `flush` at the end returns anything held back."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], *, skip_special_tokens: bool = True) -> None:
        self._decode = decoder(tokenizer, skip_special_tokens)
        self._ids = list(prompt_ids[-PROMPT_WINDOW:])
        # The text of ids[prefix:read] has been emitted already (or belongs to the prompt); ids[read:] has not.
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return ""  # nothing new yet, or a character still incomplete: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """The text of tokens not emitted yet (an incomplete character comes out as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text) :]


def decoder(tokenizer: Any, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """`tokenizer.decode` for a list of ids; the Rust decoder itself where that gives the same text: a
    `TokenizersBackend` whose `_decode` is not overridden and that does no clean-up of spaces."""
    plain = isinstance(tokenizer, TokenizersBackend) and type(tokenizer)._decode is TokenizersBackend._decode
    if plain and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        backend = tokenizer.backend_tokenizer
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class TokenPieces:
    """`pieces(token_id)` -> (text, UTF-8 bytes) of that token alone, cached per id; `is_special(token_id)`."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._special = set(tokenizer.all_special_ids)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self._cache:
            if self._byte_level and not self.is_special(token_id):
                piece = self._tokenizer.convert_ids_to_tokens(token_id)
                raw = b"".join(bytes([_BYTE_OF[c]]) if c in _BYTE_OF else c.encode() for c in piece)
                self._cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
            else:
                text = self._tokenizer.decode([token_id])
                self._cache[token_id] = (text, list(text.encode()))
        return self._cache[token_id]


_BYTE_OF = {char: byte for byte, char in bytes_to_unicode().items()}  # byte-level BPE's alphabet, inverted


class StopStringMatcher:
    """Feed text deltas with `push`; get back (text safe to emit, stopped)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""  # text not emitted yet because it may be the start of a stop string

    def push(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        pending = self._held + text
        found = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if found:
            self._held = ""
            return pending[: min(found)], True
        keep = max((_overlap(pending, s) for s in self._stops), default=0)
        self._held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """At the end of generation (no stop string came): the text held back."""
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper start of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
