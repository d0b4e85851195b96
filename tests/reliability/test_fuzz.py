"""Schemathesis against the session server's own /openapi.json: no 5xx, and every response (status, content
type, headers, body) as the document describes it.

Bounded: MAX_EXAMPLES cases per operation, derandomized (the same cases every run), chat completions held to
a few tokens. Only operations that cannot change the shared server's serving state or start work: no admin
promote / rollback / canary (those need the admin key anyway, which this test never sends), no uploads,
deletes or fine-tuning jobs. Feedback posts go to made-up completion ids (404) or are refused (400).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings  # hypothesis comes with schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 20  # per operation and generation mode (valid / invalid data)
MAX_TOKENS = 4
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXCLUDED = [  # (method or None, path regex): operations that would change the shared server or start work
    (None, r"^/admin/(promote|rollback|canary)"),
    ("POST", r"^/v1/files$"),
    ("DELETE", r".*"),
    ("POST", r"^/v1/fine_tuning/jobs"),
]


def fuzzed_operations(base_url: str) -> list:
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json", timeout=30)
    for method, path in EXCLUDED:
        schema = schema.exclude(method=method, path_regex=path) if method else schema.exclude(path_regex=path)
    return [result.ok() for result in schema.get_all_operations()]


def _bounded(case) -> None:
    """Chat cases stay cheap: the base model, at most MAX_TOKENS tokens and two choices."""
    body = case.body
    if case.path != "/v1/chat/completions" or not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = "base"  # random names are a cheap 404 (tested elsewhere); reach the engine instead
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int) and not isinstance(body[field], bool) and body[field] > MAX_TOKENS:
            body[field] = MAX_TOKENS
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > 2:
        body["n"] = 2


def fuzz(operation, mode: GenerationMode, base_url: str) -> str | None:
    """Run one operation's cases; the first failure (unshrunk, to stay bounded) as text, or None."""
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        _bounded(case)
        calls.append(case)
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)

    try:
        run()
    except Unsatisfiable:  # nothing to negate (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid case could be generated"
        return None
    except (Exception, BaseExceptionGroup) as error:  # a check failed (or the call did): report it with the others
        return f"{operation.label} [{mode.value}]: {type(error).__name__}: {error}"
    assert calls, f"{operation.label} [{mode.value}]: no case was generated"
    return None


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_api_answers_garbage_as_its_document_says(server):
    operations = fuzzed_operations(server.url)
    labels = {op.label for op in operations}
    assert "POST /v1/chat/completions" in labels and "POST /v1/feedback" in labels
    assert not any(label.startswith(("POST /admin/promote", "POST /admin/rollback")) for label in labels)
    failures = [
        failure
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if (failure := fuzz(operation, mode, server.url)) is not None
    ]
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize(("temperature", "top_p"), [(5e-324, 1.0), (1e-45, 0.9), (0.07, 5e-324), (2.0, 1e-40)])
def test_extreme_sampling_parameters_sample_the_top_token(temperature, top_p):
    """Found by this fuzzing: a subnormal temperature or top_p made the hf engine's sampling 0/0 (NaN) or
    empty, which failed the whole decode batch (every request in it) with a 500."""
    from types import SimpleNamespace

    import torch

    from serving.engine import SamplingParams
    from serving.engines.hf.batch import sample

    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p)
    request = SimpleNamespace(params=params)
    rows = [
        SimpleNamespace(request=request, output_ids=[], generator=torch.Generator(), finish_reason=None)
        for _ in range(3)
    ]
    assert sample(logits, rows) == logits.argmax(dim=-1).tolist()
