"""The regression suite: case checks, file validation with FILE:LINE errors, the demo's suite."""

from __future__ import annotations

import json

import pytest

from eval.regression import SuiteError, demo_cases, load_suite, parse_case, write_demo_suite


def test_checks_any_of_regex_contains():
    assert parse_case({"prompt": "p", "any_of": ["Yes."]}, "x").passes("  Yes. ")
    assert not parse_case({"prompt": "p", "any_of": ["Yes."]}, "x").passes("Yes, maybe.")
    assert parse_case({"prompt": "p", "regex": r"\d+ days"}, "x").passes("within 30 days")
    assert parse_case({"prompt": "p", "contains": "THANK"}, "x").passes("thank you")
    assert not parse_case({"prompt": "p", "contains": "thank"}, "x").passes("no")


def test_bad_cases_are_line_exact(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"prompt": "ok", "any_of": ["x"]})
        + "\n"
        + json.dumps({"prompt": "two", "any_of": ["x"], "regex": "y"})
        + "\n"
    )
    with pytest.raises(SuiteError, match=r"a\.jsonl:2: a case needs exactly one of"):
        load_suite(tmp_path)
    (tmp_path / "a.jsonl").write_text("{not json\n")
    with pytest.raises(SuiteError, match=r"a\.jsonl:1: not JSON"):
        load_suite(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "p", "regex": "("}) + "\n")
    with pytest.raises(SuiteError, match="regex does not compile"):
        load_suite(tmp_path)


def test_demo_suite_accepts_canonical_answers_only(tmp_path):
    from retrain.demo import corpus

    write_demo_suite(tmp_path)
    cases = load_suite(tmp_path)
    assert len(cases) == len(demo_cases()) == len(corpus.heldout_prompts())
    case = cases[0]
    topic = corpus.topic_of(case.prompt)
    assert case.passes(corpus.canonical_answer(topic, "tldr"))
    assert not case.passes(corpus.canonical_answer(topic, "tldr") + " extra")
    other = next(t for t in corpus.TOPICS if t != topic)
    assert not case.passes(corpus.canonical_answer(other, "plain"))
