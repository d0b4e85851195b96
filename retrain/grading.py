"""Running graders: score many answers at once and report as OpenAI's `graders/run` does.

`grade_batch(grader, outputs, items, context)` returns one `Grade` per (answer, dataset row): the reward,
each sub-grader's reward (multi), the judge's token usage, and OpenAI's error flags (`metadata.errors`).
A failure to grade one answer is never an exception: it is a flag on its Grade with reward 0 (a template
that does not resolve: `invalid_variable_error`; a judge answer without a number in range:
`model_grader_parse_error`; a python grader that raised, was refused by its sandbox or ran out of time:
`python_grader_runtime_error`). `Grade.problem()` states the first one in a sentence; a training run
stops on it, `graders/run` reports it.

A python grader's cases of one batch go to one sandboxed subprocess (retrain/sandbox.py). A score_model
grader asks RATCHET_JUDGE_URL (with RATCHET_JUDGE_API_KEY), or ratchet's own API when that is empty.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retrain import formula, similarity
from retrain.graders import (
    TEMPLATE,
    Grader,
    MultiGrader,
    PythonGrader,
    SamplingParams,
    ScoreModelGrader,
    StringCheckGrader,
)
from retrain.sandbox import SandboxFailure, SandboxLimits, run_python_grader

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
ERROR_FLAGS = (
    "formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
    "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
    "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
)  # fmt: skip


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradingContext:
    """Where graders reach out: the score_model endpoint and the python sandbox's limits."""

    judge_url: str
    judge_api_key: str = ""
    limits: SandboxLimits = SandboxLimits()

    @classmethod
    def from_settings(cls, settings: Any) -> GradingContext:
        url = settings.judge_url or f"http://{settings.host}:{settings.port}/v1"
        return cls(
            judge_url=url,
            judge_api_key=settings.judge_api_key.get_secret_value(),
            limits=SandboxLimits(seconds=settings.grader_timeout_seconds, memory_mb=settings.grader_memory_mb),
        )


@dataclass
class Grade:
    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)  # flags set to True, plus *_details strings
    token_usage: int = 0
    seconds: float = 0.0

    def failed(self, flag: str, details: str | None = None) -> Grade:
        self.reward = 0.0
        self.errors[flag] = True
        if details:
            key = {"python_grader_runtime_error": "python_grader_runtime_error_details"}.get(flag, f"{flag}_details")
            self.errors[key] = details
        return self

    def problem(self) -> str | None:
        """The first error as a sentence (what stops a training run), or None."""
        flags = [flag for flag in ERROR_FLAGS if self.errors.get(flag)]
        if not flags:
            return None
        details = [v for k, v in self.errors.items() if k.endswith(("_details", "_type")) and isinstance(v, str)]
        return f"{flags[0]}: {details[0]}" if details else flags[0]

    def openai_errors(self) -> dict[str, Any]:
        return {**{flag: bool(self.errors.get(flag)) for flag in ERROR_FLAGS}, **self.errors}


def sample_namespace(output_text: str) -> dict[str, Any]:
    """OpenAI's `sample`: the answer, and the answer as JSON when it parses."""
    try:
        output_json = json.loads(output_text)
    except (json.JSONDecodeError, RecursionError):
        output_json = None
    return {"output_text": output_text, "output_json": output_json, "output_tools": [], "choices": []}


class _Unresolved(LookupError):
    pass


def render(text: str, namespaces: dict[str, Any]) -> str:
    """Fill `{{ item.x }}` / `{{ sample.y }}`; a name that does not resolve raises _Unresolved."""

    def value(match: re.Match) -> str:
        node: Any = namespaces
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise _Unresolved(f"{{{{ {match.group(1)} }}}} does not resolve for this item and sample")
            node = node[part]
        return node if isinstance(node, str) else json.dumps(node)

    return TEMPLATE.sub(value, text)


def grade_batch(grader: Grader, outputs: Sequence[str], items: Sequence[dict], context: GradingContext) -> list[Grade]:
    """One Grade per (output, item) pair, in order."""
    started = time.monotonic()
    spaces = [{"sample": sample_namespace(text), "item": item} for text, item in zip(outputs, items, strict=True)]
    grades = _grade(grader, spaces, context)
    seconds = (time.monotonic() - started) / max(1, len(grades))
    for grade in grades:
        grade.seconds = seconds
    return grades


def _grade(grader: Grader, spaces: list[dict], context: GradingContext) -> list[Grade]:
    if isinstance(grader, MultiGrader):
        return _multi(grader, spaces, context)
    if isinstance(grader, PythonGrader):
        return _python(grader, spaces, context)
    return [_one(grader, space, context) for space in spaces]


def _one(grader: Grader, space: dict, context: GradingContext) -> Grade:
    try:
        if isinstance(grader, ScoreModelGrader):
            return _score_model(grader, space, context)
        given, reference = render(grader.input, space), render(grader.reference, space)
    except _Unresolved as error:
        return Grade(0.0).failed("invalid_variable_error", str(error))
    if isinstance(grader, StringCheckGrader):
        return Grade(float(_string_check(grader.operation, given, reference)))
    return Grade(similarity.score(grader.evaluation_metric, given, reference))


def _string_check(operation: str, given: str, reference: str) -> bool:
    if operation == "eq":
        return given == reference
    if operation == "ne":
        return given != reference
    if operation == "like":
        return reference in given
    return reference.lower() in given.lower()


def _python(grader: PythonGrader, spaces: list[dict], context: GradingContext) -> list[Grade]:
    try:
        results = run_python_grader(grader.source, spaces, context.limits)
    except SandboxFailure as failure:
        return [Grade(0.0).failed("python_grader_runtime_error", str(failure)) for _ in spaces]
    return [
        Grade(result.score)
        if result.error is None
        else Grade(0.0).failed("python_grader_runtime_error", f"grade() raised {result.error}")
        for result in results
    ]


def _score_model(grader: ScoreModelGrader, space: dict, context: GradingContext) -> Grade:
    import openai

    low, high = grader.range or (0.0, 1.0)
    messages = [{"role": m.role, "content": render(m.text(), space)} for m in grader.input]
    params = grader.sampling_params or SamplingParams()
    client = openai.OpenAI(base_url=context.judge_url, api_key=context.judge_api_key or "none", max_retries=1)
    try:
        response = client.chat.completions.create(
            model=grader.model,
            messages=messages,
            max_tokens=params.max_completions_tokens or 64,
            temperature=0.0 if params.temperature is None else params.temperature,
            **{k: v for k, v in {"seed": params.seed, "top_p": params.top_p}.items() if v is not None},
        )
    except openai.OpenAIError as error:
        return Grade(0.0).failed("model_grader_server_error", f"{grader.model} at {context.judge_url}: {error}")
    answer = response.choices[0].message.content or ""
    usage = response.usage.total_tokens if response.usage else 0
    found = NUMBER.search(answer)
    score = float(found.group()) if found else None
    if score is None or not low <= score <= high:
        reason = f"the judge's answer has no number in [{low:g}, {high:g}]: {answer[:200]!r}"
        grade = Grade(0.0, token_usage=usage).failed("model_grader_parse_error", reason)
        return grade
    return Grade(score, token_usage=usage)


def _multi(grader: MultiGrader, spaces: list[dict], context: GradingContext) -> list[Grade]:
    assert isinstance(grader.graders, dict)  # the validator made it a mapping
    expression = formula.parse(grader.calculate_output, set(grader.graders))
    by_name = {name: _grade(sub, spaces, context) for name, sub in grader.graders.items()}
    grades = []
    for index in range(len(spaces)):
        parts = {name: results[index] for name, results in by_name.items()}
        grade = Grade(0.0, sub_rewards={name: part.reward for name, part in parts.items()})
        for part in parts.values():
            grade.errors.update({k: v for k, v in part.errors.items() if v})
            grade.token_usage += part.token_usage
        if grade.problem() is None:
            try:
                grade.reward = formula.evaluate(expression, grade.sub_rewards)
            except formula.FormulaError as error:
                grade.failed("formula_parse_error", str(error))
        grades.append(grade)
    return grades


# -- the grader as a training reward ---------------------------------------------------------------

# A judge that answers without a usable number scores 0 and training goes on; any other failure means the
# grader itself is broken, and training on its zeros would teach the model nothing true.
TOLERATED = ("model_grader_parse_error", "model_grader_refusal_error")


class GraderFailed(RuntimeError):
    """The grader could not grade an answer during training; the message says why."""


def training_reward(grader: Grader, context: GradingContext):
    """`(answers, rows) -> rewards` for retrain/trainers.py; raises GraderFailed on a broken grader."""

    def reward(answers: list[str], rows: list[dict[str, Any]]) -> list[float]:
        grades = grade_batch(grader, answers, rows, context)
        for grade in grades:
            fatal = [flag for flag in ERROR_FLAGS if grade.errors.get(flag) and flag not in TOLERATED]
            if fatal:
                raise GraderFailed(
                    f"the grader {grader.name!r} could not grade an answer ({grade.problem()}): "
                    "fix it (POST /v1/fine_tuning/alpha/graders/run tries it) and create the job again"
                )
        return [grade.reward for grade in grades]

    return reward
