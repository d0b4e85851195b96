"""RATCHET_LOOP_GRADER: an OpenAI grader as the loop's rft reward, checked before anything starts."""

import json

import pytest

from deploy.loop import check_loop_settings
from ratchet.settings import Settings
from retrain.graders import GraderInvalid

MARKER = {"type": "string_check", "name": "tldr", "input": "{{ sample.output_text }}", "reference": "TL;DR:",
          "operation": "like"}  # fmt: skip


def test_the_grader_comes_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv("RATCHET_LOOP_GRADER", json.dumps(MARKER))
    settings = Settings()
    assert settings.loop_grader == MARKER
    check_loop_settings(settings)  # valid: no error
    assert Settings(loop_grader=None).loop_grader is None


def test_a_bad_loop_grader_names_the_setting_and_the_field():
    with pytest.raises(GraderInvalid) as bad:
        check_loop_settings(Settings(loop_grader={**MARKER, "operation": "contains"}))
    assert bad.value.param == "RATCHET_LOOP_GRADER.operation"
    with pytest.raises(GraderInvalid) as kind:
        check_loop_settings(Settings(loop_grader={"type": "label_model"}))
    assert kind.value.param == "RATCHET_LOOP_GRADER.type" and "score_model" in str(kind.value)


def test_ratchet_up_refuses_a_bad_loop_grader_before_it_touches_the_workspace(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    ratchet = Path(sys.executable).with_name("ratchet")
    env = {**os.environ, "RATCHET_LOOP_GRADER": json.dumps({**MARKER, "operation": "contains"})}
    done = subprocess.run([ratchet, "up", "--home", tmp_path / "ws"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1
    expected = "ratchet: RATCHET_LOOP_GRADER.operation: Input should be 'eq', 'ne', 'like' or 'ilike'"
    assert done.stderr.strip() == expected
    assert not (tmp_path / "ws").exists()
