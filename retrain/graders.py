"""Graders as data: OpenAI's five grader shapes, validated, with errors that name the field.

The shapes are those of the `openai` SDK's `types.graders`:
- `string_check`: `input` against `reference` by `operation`: eq, ne, like (contains), ilike (contains,
  ignoring case); 1.0 or 0.0.
- `text_similarity`: `evaluation_metric` fuzzy_match, bleu, gleu, rouge_1 ... rouge_5, rouge_l, in [0, 1]
  (retrain/similarity.py). cosine and meteor are refused here, with the reason.
- `score_model`: asks an OpenAI-compatible chat model (`model`) the templated `input` messages and reads
  the first number of its answer, which must lie in `range` (default [0, 1]).
- `python`: `source` defines `grade(sample, item) -> float`, run in a sandbox (retrain/sandbox.py).
- `multi`: named `graders` combined by `calculate_output` (retrain/formula.py).

Templates: `{{ item.reference_answer }}` reads the dataset row (dots go deeper), `{{ sample.output_text }}`
the model's answer and `{{ sample.output_json.field }}` that answer parsed as JSON. Only those two
namespaces exist; any other name is refused here.

`parse_grader(data)` validates a grader: `GraderInvalid` names the first bad field (`grader.operation`).
Running graders is retrain/grading.py.
"""

from __future__ import annotations

import ast
import re
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

TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
NAMESPACES = ("item", "sample")


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
