"""Graders in-process (string_check, text_similarity, multi, templates) and the python sandbox for real."""

from __future__ import annotations

import pytest

from retrain.graders import GraderInvalid, parse_grader
from retrain.grading import GradingContext, grade_batch, render, sample_namespace
from retrain.sandbox import SandboxLimits, isolation

CONTEXT = GradingContext(judge_url="http://127.0.0.1:9/v1", limits=SandboxLimits(seconds=3, memory_mb=256))


def string_check(operation: str, reference: str = "{{ item.reference_answer }}") -> dict:
    return {"type": "string_check", "name": "check", "input": "{{ sample.output_text }}", "reference": reference,
            "operation": operation}  # fmt: skip


def rewards(grader: dict, outputs: list[str], items: list[dict]) -> list[float]:
    return [g.reward for g in grade_batch(parse_grader(grader), outputs, items, CONTEXT)]


@pytest.mark.parametrize(
    ("operation", "expected"),
    [("eq", [1.0, 0.0, 0.0]), ("ne", [0.0, 1.0, 1.0]), ("like", [1.0, 1.0, 0.0]), ("ilike", [1.0, 1.0, 1.0])],
)
def test_string_check_operations(operation, expected):
    outputs = ["TL;DR: x", "TL;DR: x and more", "tl;dr: x"]
    items = [{"reference_answer": "TL;DR: x"}] * 3
    assert rewards(string_check(operation), outputs, items) == expected


def test_templates_read_nested_item_fields_and_the_answer_as_json():
    space = {"item": {"ref": {"city": "Paris"}, "n": 3}, "sample": sample_namespace('{"city": "Paris"}')}
    assert render("{{item.ref.city}}={{ sample.output_json.city }} n={{item.n}}", space) == "Paris=Paris n=3"
    grade = grade_batch(parse_grader(string_check("eq", "{{ item.missing }}")), ["x"], [{}], CONTEXT)[0]
    assert grade.reward == 0.0 and grade.errors["invalid_variable_error"] is True


def test_text_similarity_metrics_rank_a_close_answer_above_a_far_one():
    reference = "the sun is a star at the centre of the solar system"
    for metric in ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"):
        grader = {"type": "text_similarity", "name": "sim", "input": "{{ sample.output_text }}",
                  "reference": reference, "evaluation_metric": metric}  # fmt: skip
        same, close, far = rewards(grader, [reference, reference + " we live in", "bananas are yellow"], [{}] * 3)
        assert same == pytest.approx(1.0) and 0.0 <= far < close < 1.0, metric


def test_multi_grader_combines_named_rewards_by_its_formula():
    grader = {
        "type": "multi", "name": "both", "calculate_output": "0.25 * marker + 0.75 * max(exact, 0.5) ^ 2",
        "graders": {"marker": string_check("like", "TL;DR:"), "exact": string_check("eq", "TL;DR: yes")},
    }  # fmt: skip
    (grade,) = grade_batch(parse_grader(grader), ["TL;DR: no"], [{}], CONTEXT)
    assert grade.sub_rewards == {"marker": 1.0, "exact": 0.0}
    assert grade.reward == pytest.approx(0.25 + 0.75 * 0.25)


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({**string_check("eq"), "operation": "regex"}, "grader.operation"),
        ({**string_check("eq"), "input": "{{ env.HOME }}"}, "grader.input"),
        ({**string_check("eq"), "extra": 1}, "grader.extra"),
        ({"type": "label_model", "name": "x"}, "grader.type"),
        ({"type": "text_similarity", "name": "s", "input": "a", "reference": "b", "evaluation_metric": "cosine"},
         "grader.evaluation_metric"),
        ({"type": "python", "name": "p", "source": "def grade(sample, item:\n  return 1"}, "grader.source"),
        ({"type": "python", "name": "p", "source": "def score(sample, item):\n  return 1"}, "grader.source"),
        ({"type": "score_model", "name": "s", "model": "current", "input": [], "range": [0, 1]}, "grader.input"),
        ({"type": "score_model", "name": "s", "model": "current", "range": [1, 0],
          "input": [{"role": "user", "content": "rate {{ sample.output_text }}"}]}, "grader.range"),
        ({"type": "multi", "name": "m", "graders": {"a": string_check("eq")}, "calculate_output": "a + b"},
         "grader.calculate_output"),
        ({"type": "multi", "name": "m", "graders": {"a": string_check("eq")}, "calculate_output": "__import__('os')"},
         "grader.calculate_output"),
    ],
)  # fmt: skip
def test_an_invalid_grader_names_its_field(grader, param):
    with pytest.raises(GraderInvalid) as raised:
        parse_grader(grader)
    assert raised.value.param == param
    assert str(raised.value).startswith(param)


PYTHON_GRADER = """
import json

def grade(sample, item):
    kind = item.get("kind")
    if kind == "loop":
        while True:
            pass
    if kind == "file":
        return len(open("/etc/hostname").read())
    if kind == "socket":
        import socket
        socket.create_connection(("127.0.0.1", 5432))
    if kind == "shell":
        import os
        os.system("touch /tmp/escaped")
    if kind == "memory":
        return len(bytearray(2 * 1024 ** 3))
    print("graders may print; it is not their answer")
    return 1.0 if sample["output_text"] == item["reference_answer"] else 0.25
"""


def python_grades(kinds: list[str]):
    grader = parse_grader({"type": "python", "name": "py", "source": PYTHON_GRADER})
    items = [{"kind": kind, "reference_answer": "yes"} for kind in kinds]
    return grade_batch(grader, ["yes"] * len(kinds), items, CONTEXT)


def test_python_grader_scores_in_a_subprocess():
    assert [g.reward for g in python_grades(["ok", "ok"])] == [1.0, 1.0]
    assert "subprocess" in isolation()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("file", "does not allow opening files"),
        ("socket", "does not allow importing 'socket'"),
        ("shell", "does not allow os.system"),
        ("memory", "MemoryError"),
    ],
)
def test_python_grader_cannot_read_files_open_sockets_run_commands_or_take_the_memory(kind, reason):
    ok, bad = python_grades(["ok", kind])
    assert ok.reward == 1.0 and ok.problem() is None
    assert bad.reward == 0.0 and bad.errors["python_grader_runtime_error"] is True
    assert reason in bad.problem()


def test_a_python_grader_that_never_returns_is_stopped_at_its_time_limit():
    grades = python_grades(["ok", "loop"])
    assert all(g.reward == 0.0 for g in grades)  # the batch as a whole ran out of time
    assert "ran past its time limit (3 s" in grades[1].problem()
