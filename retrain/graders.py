"""Graders: score a model's answer the way OpenAI's fine-tuning graders do.

Five kinds, in the shapes of the `openai` SDK's `types.graders`:
- `string_check`: `input` against `reference` by `operation`: eq, ne, like (contains), ilike (contains,
  ignoring case); 1.0 or 0.0.
- `text_similarity`: `evaluation_metric` fuzzy_match, bleu, gleu, rouge_1 ... rouge_5, rouge_l, in [0, 1]
  (retrain/similarity.py). cosine and meteor are refused when the grader is validated, with the reason.
- `score_model`: asks an OpenAI-compatible chat model (`model`) the templated `input` messages and reads
  the first number of its answer, which must lie in `range` (default [0, 1]); the endpoint is
  RATCHET_JUDGE_URL, or ratchet's own API when that is empty.
- `python`: `source` defines `grade(sample, item) -> float`; it runs in a sandboxed subprocess
  (retrain/sandbox.py), never in the caller's process.
- `multi`: named `graders` combined by `calculate_output` (retrain/formula.py).

Templates: `{{ item.reference_answer }}` reads the dataset row (dots go deeper), `{{ sample.output_text }}`
the model's answer and `{{ sample.output_json.field }}` that answer parsed as JSON. A name that does not
resolve is OpenAI's `invalid_variable_error` for that answer (reward 0), not an exception.

`parse_grader(data)` validates a grader: `GraderInvalid` names the field (`grader.operation`).
`grade_batch(grader, outputs, items, context)` scores many answers at once (one subprocess for all of a
python grader's cases) and returns one `Grade` per answer: the reward, each sub-grader's reward, and
OpenAI's error flags (`metadata.errors` of `graders/run`).
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from feedback.errors import Invalid
from retrain import formula, similarity
from retrain.sandbox import SandboxFailure, SandboxLimits, run_python_grader

TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
NAMESPACES = ("item", "sample")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
ERROR_FLAGS = (
    "formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
    "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
    "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
)  # fmt: skip


class GraderInvalid(Invalid):
    code, param = "invalid_grader", "grader"


# -- shapes ----------------------------------------------------------------------------------------


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="Names the grader (and its sub-reward).")


def _check_templates(text: str) -> str:
    for name in TEMPLATE.findall(text):
        if name.split(".", 1)[0] not in NAMESPACES or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"template {{{{ {name} }}}} must name item.<field> or sample.<field>")
    return text


class _ComparesText(_Grader):
    input: str = Field(description="The text graded; may hold templates.")
    reference: str = Field(description="The text it is compared with; may hold templates.")

    @field_validator("input", "reference")
    @classmethod
    def _templates(cls, text: str) -> str:
        return _check_templates(text)


class StringCheckGrader(_ComparesText):
    type: Literal["string_check"]
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_ComparesText):
    type: Literal["text_similarity"]
    evaluation_metric: Literal[
        "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
        "rouge_l",
    ]  # fmt: skip

    @field_validator("evaluation_metric")
    @classmethod
    def _supported(cls, metric: str) -> str:
        if metric in similarity.UNSUPPORTED:
            raise ValueError(similarity.UNSUPPORTED[metric])
        return metric


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text"]
    text: str


class ScoreModelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[ContentPart]
    type: Literal["message"] | None = None

    def text(self) -> str:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return "".join(p if isinstance(p, str) else p.text for p in parts)

    @model_validator(mode="after")
    def _templates(self) -> ScoreModelMessage:
        _check_templates(self.text())
        return self


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_completions_tokens: int | None = Field(None, ge=1, le=4096)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    reasoning_effort: str | None = None  # accepted for OpenAI's SDK code; no served model reasons


class ScoreModelGrader(_Grader):
    type: Literal["score_model"]
    model: str = Field(min_length=1)
    input: list[ScoreModelMessage] = Field(min_length=1)
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or value[0] >= value[1]):
            raise ValueError("range must be two numbers [low, high] with low < high")
        return value


class PythonGrader(_Grader):
    type: Literal["python"]
    source: str = Field(min_length=1, max_length=256_000)
    image_tag: str | None = None  # OpenAI's runtime image; here the service's own Python runs it

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, source: str) -> str:
        try:
            tree = ast.parse(source)
        except SyntaxError as error:
            raise ValueError(f"not valid Python: {error.msg} (line {error.lineno})") from None
        if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
            raise ValueError("the source must define a function grade(sample, item) at its top level")
        return source


SimpleGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | PythonGrader, Field(discriminator="type")
]


class MultiGrader(_Grader):
    type: Literal["multi"]
    graders: dict[str, SimpleGrader] | SimpleGrader  # OpenAI's docs show a mapping; its SDK types one grader
    calculate_output: str = Field(min_length=1, max_length=2000)

    @field_validator("graders")
    @classmethod
    def _named(cls, graders: dict[str, Any] | Any) -> dict[str, Any]:
        named = graders if isinstance(graders, dict) else {graders.name: graders}
        if not named:
            raise ValueError("graders must name at least one grader")
        return named

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, text: str, info: ValidationInfo) -> str:
        names = set(info.data.get("graders") or ())  # empty when graders itself was invalid
        try:
            formula.parse(text, names)
        except formula.FormulaError as error:
            raise ValueError(str(error)) from None
        return text


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | PythonGrader | MultiGrader,
    Field(discriminator="type"),
]
_GRADER = TypeAdapter(Grader)
KINDS = ("string_check", "text_similarity", "score_model", "python", "multi")


def parse_grader(data: Any, param: str = "grader") -> Grader:
    """Validate a grader as sent (a dict); `GraderInvalid` names the first bad field."""
    if isinstance(data, BaseModel):
        data = data.model_dump(exclude_none=True)
    if not isinstance(data, dict) or data.get("type") not in KINDS:
        kind = data.get("type") if isinstance(data, dict) else None
        raise GraderInvalid(
            f"{param}.type must be one of {', '.join(KINDS)}, got {kind!r}"
            + (" (label_model graders are not supported: use score_model)" if kind == "label_model" else ""),
            param=f"{param}.type",
        )
    try:
        return _GRADER.validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        kinds = set(KINDS) | {"function-after", "constrained-str", "list", "str", "dict"}
        where = ".".join(str(p) for p in first["loc"] if str(p) not in kinds and not str(p).startswith("json-or"))
        where = f"{param}.{where}" if where else param
        message = first["msg"].removeprefix("Value error, ")
        raise GraderInvalid(f"{where}: {message}", param=where) from None


# -- grading ---------------------------------------------------------------------------------------


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
