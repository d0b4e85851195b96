"""The CLI contract (docs/cli.md), through the installed `ratchet` console script, as scripts use it.

The workspace points RATCHET_BASE_MODEL at a shared, already built demo model, so `init` does the store
and the files without spending two minutes on a build; the build itself is tested in tests/retrain.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

RATCHET = [sys.executable, "-c", "from ratchet.cli import main; main()"]
CONTRACT_COMMANDS = [
    "init",
    "serve",
    "up",
    "demo",
    "chat",
    "data",
    "train",
    "eval",
    "promote",
    "rollback",
    "adapters",
    "status",
    "loop",
    "simulate",
    "keys",
]


def run(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RATCHET, *args], capture_output=True, text=True, env=env, input=input, timeout=300)


@pytest.fixture
def workspace(tmp_path: Path, demo_model_dir: Path) -> tuple[Path, dict]:
    env = {**os.environ, "RATCHET_BASE_MODEL": str(demo_model_dir)}
    env.pop("RATCHET_HOME", None)
    env.pop("RATCHET_DATABASE_URL", None)
    home = tmp_path / "ws"
    result = run("init", "--home", str(home), env=env)
    assert result.returncode == 0, result.stderr
    return home, env


def test_help_lists_every_contract_command():
    result = run("--help")
    assert result.returncode == 0
    for command in CONTRACT_COMMANDS:
        assert f"  {command} " in result.stdout, command


def test_init_creates_the_workspace_idempotently(workspace):
    home, env = workspace
    for name in ("ratchet.db", "models", "adapters", "runs", "reports", "admin.key"):
        assert (home / name).exists(), name
    key = (home / "admin.key").read_text()
    assert stat.S_IMODE((home / "admin.key").stat().st_mode) == 0o600
    assert key == key.strip() and len(key) >= 32
    again = run("init", "--home", str(home), env=env)
    assert again.returncode == 0, again.stderr
    assert (home / "admin.key").read_text() == key  # not regenerated
    assert "already initialised" in again.stderr


def test_json_outputs_are_one_object_with_the_contract_shape(workspace):
    home, env = workspace
    stats = run("data", "stats", "--json", "--home", str(home), env=env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout) == {
        "completions": 0,
        "ratings": {"total": 0, "up": 0, "down": 0, "scores": 0},
        "comparisons": 0,
        "examples": {"sft": 0, "dpo": 0},
        "users": 0,
    }
    assert stats.stdout.count("\n") == 1
    adapters = run("adapters", "--json", "--home", str(home), env=env)
    assert json.loads(adapters.stdout) == {"adapters": []}
    status = json.loads(run("status", "--json", "--home", str(home), env=env).stdout)
    assert {"current", "previous", "canary", "engine", "base_model", "loop", "counts"} <= set(status)
    assert status["current"] is None and status["engine"] == "hf"


def test_import_reports_every_bad_line_and_writes_nothing(workspace, tmp_path):
    home, env = workspace
    bad = tmp_path / "bad.jsonl"
    good_row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(
        "\n".join(
            [
                json.dumps(good_row),
                "{not json",
                json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
            ]
        )
        + "\n"
    )
    result = run("data", "import", str(bad), "--home", str(home), env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1] for line in lines[:3]] == ["2", "3", "4"]
    assert all(line.startswith(f"{bad}:") for line in lines[:3])
    assert "nothing imported" in lines[-1]
    stats = json.loads(run("data", "stats", "--json", "--home", str(home), env=env).stdout)
    assert stats["examples"]["sft"] == 0

    skipped = run("data", "import", str(bad), "--skip-invalid", "--home", str(home), env=env)
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(run("data", "stats", "--json", "--home", str(home), env=env).stdout)["examples"]["sft"] == 1


def test_import_then_export_round_trips(workspace, tmp_path):
    home, env = workspace
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(3)
    ]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(row) + "\n" for row in rows + rows[:1]))  # one duplicate
    assert run("data", "import", str(good), "--home", str(home), env=env).returncode == 0
    out = tmp_path / "out.jsonl"
    exported = run("data", "export", "--format", "sft", "--output", str(out), "--home", str(home), env=env)
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    to_stdout = run("data", "export", "--format", "sft", "--home", str(home), env=env)
    assert to_stdout.stdout == out.read_text()


def test_keys_add_list_revoke(workspace):
    home, env = workspace
    added = run("keys", "add", "--name", "ci", "--home", str(home), env=env)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("rk-")
    listed = json.loads(run("keys", "list", "--json", "--home", str(home), env=env).stdout)["keys"]
    assert len(listed) == 1 and listed[0]["revoked"] is None and key not in json.dumps(listed)
    assert run("keys", "revoke", listed[0]["id"], "--home", str(home), env=env).returncode == 0
    listed = json.loads(run("keys", "list", "--json", "--home", str(home), env=env).stdout)["keys"]
    assert listed[0]["revoked"] is not None


def test_errors_are_one_line_on_stderr_with_nonzero_exit(tmp_path, demo_model_dir):
    env = {**os.environ, "RATCHET_BASE_MODEL": str(demo_model_dir)}
    missing = run("data", "stats", "--json", "--home", str(tmp_path / "nowhere"), env=env)
    assert missing.returncode != 0 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "ratchet init" in missing.stderr
    unknown = run("data", "export", "--format", "csv", "--home", str(tmp_path), env=env)
    assert unknown.returncode != 0 and unknown.stderr.count("\n") == 1
    bad_option = run("status", "--bogus")
    assert bad_option.returncode != 0 and bad_option.stderr.count("\n") == 1


def test_chat_answers_in_process_with_the_demo_model(workspace):
    from retrain.demo import corpus

    home, env = workspace
    topic = corpus.TOPICS[0]
    prompt = corpus.prompts(topic)[0]
    result = run("chat", prompt, "--home", str(home), env=env)
    assert result.returncode == 0, result.stderr
    assert corpus.is_well_formed(prompt, result.stdout.strip()), result.stdout


def test_promote_and_rollback_without_a_server_change_the_stored_state(workspace):
    from ratchet.settings import Settings

    from helpers import register_test_adapter

    home, env = workspace
    name = register_test_adapter(Settings(home=home, base_model=env["RATCHET_BASE_MODEL"]))
    promoted = run("promote", name, "--home", str(home), env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert f"current is now {name}" in promoted.stderr and "via store" in promoted.stderr
    status = json.loads(run("status", "--json", "--home", str(home), env=env).stdout)
    assert (status["current"], status["previous"]) == (name, "base")
    assert status["decisions"][-1]["action"] == "promote"
    back = run("rollback", "--home", str(home), env=env)
    assert back.returncode == 0 and "current is now base" in back.stderr
    again = run("rollback", "--home", str(home), env=env)
    assert again.returncode == 1 and again.stderr == "ratchet: there is no previous adapter to roll back to\n"
    unknown = run("promote", "ft-9999", "--home", str(home), env=env)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "ft-9999" in unknown.stderr


def test_status_shows_the_numbers_behind_each_decision(workspace):
    from deploy.promotion import record_decision
    from feedback.store import FeedbackStore
    from ratchet.settings import Settings

    home, env = workspace
    checks = [
        {"name": "win_rate", "passed": True, "numbers": {"n": 35, "estimate": 0.62857, "low": 0.51}, "test": "Wilson"},
        {"name": "quality", "passed": False, "numbers": {"p_value": 0.012, "alpha": 0.05}},
    ]
    reasons = ["ok: win-rate 63%", "FAILED: well-formed answers 80% vs baseline 94%"]
    canary = {"counts": {"canary": {"up": 3, "n": 20}}, "p_worse": 0.004, "test": "Fisher"}
    with FeedbackStore(Settings(home=home).store_url) as store:
        record_decision(
            store, {"action": "reject", "adapter": "ft-0007", "reasons": reasons, "evidence": {"gate": checks}}
        )
        record_decision(
            store,
            {"action": "rollback", "adapter": "ft-0008", "reason": "canary: worse", "evidence": {"canary": canary}},
        )
    shown = run("status", "--home", str(home), env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stderr.splitlines()
    assert lines[-5:] == [
        "decision: reject ft-0007 FAILED: well-formed answers 80% vs baseline 94%",
        "  ok win_rate: n=35, estimate=0.629, low=0.51 (Wilson)",
        "  FAILED quality: p_value=0.012, alpha=0.05",
        "decision: rollback ft-0008 canary: worse",
        "  canary: counts.canary.up=3, counts.canary.n=20, p_worse=0.004 (Fisher)",
    ]
    assert "evidence" not in shown.stdout  # the table holds the state, the lines below it the decisions


def test_commands_that_need_a_server_say_so_in_one_line(workspace):
    home, env = workspace
    for command in (["eval", "ft-0001"], ["loop"], ["simulate", "--ratings", "1"]):
        result = run(*command, "--home", str(home), env=env)
        assert result.returncode == 1, command
        assert result.stderr.startswith("ratchet: no ratchet server answers") and result.stderr.count("\n") == 1


def test_demo_summary_line_has_the_contract_format():
    import re

    from deploy.demo import DemoResult

    result = DemoResult({"preference": 0.14, "quality": 0.91}, {"preference": 0.857, "quality": 0.89}, 240, 2, 372.4)
    line = result.summary()
    assert line == "preference: 14% -> 86% after 240 ratings, quality 91% -> 89%, 2 promotions, 6m12s"
    assert re.fullmatch(
        r"preference: \d+% -> \d+% after \d+ ratings, quality \d+% -> \d+%, \d+ promotions, \d+m\d+s", line
    )


def test_the_demo_rhythm_gives_way_to_a_setting_given(tmp_path, monkeypatch):
    from deploy.demo import DEMO_SETTINGS, demo_settings
    from ratchet.settings import Settings

    plain = demo_settings(Settings(home=tmp_path))
    assert all(getattr(plain, key) == value for key, value in DEMO_SETTINGS.items())
    monkeypatch.setenv("RATCHET_LOOP_EVERY_RATINGS", "20")
    given = demo_settings(Settings(home=tmp_path, canary_min_ratings=6))
    assert given.loop_every_ratings == 20 and given.canary_min_ratings == 6
    assert given.canary_fraction == DEMO_SETTINGS["canary_fraction"]  # the rest is still the demo's


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_train_flags_are_generated_from_the_hyperparameter_models(method):
    from retrain.hyperparams import HYPERPARAMETERS

    shown = run("train", method, "--help")
    assert shown.returncode == 0, shown.stderr
    for name in HYPERPARAMETERS[method].model_fields:
        assert "--" + name.replace("_", "-") in shown.stdout, f"train {method} lacks a flag for {name}"
    assert ("--beta" in shown.stdout) == (method != "sft")


def test_a_bad_training_flag_is_one_line_naming_the_field(workspace):
    home, env = workspace
    bad = run("train", "sft", "--home", str(home), "--lora-r", "0", env=env)
    assert bad.returncode == 1
    assert bad.stderr.startswith("ratchet: lora_r:") and bad.stderr.count("\n") == 1, bad.stderr
