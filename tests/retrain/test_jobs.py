"""Training runs as users start them: `ratchet train` end to end, and fine-tuning jobs on a real Ray.

The CLI runs as scripts run it (the console entry point in a subprocess) on a workspace whose base model
is the session's demo model; jobs run as Ray tasks on a local Ray (2 CPUs), each in a worker of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.demo import corpus

RATCHET = [sys.executable, "-c", "from ratchet.cli import main; main()"]


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*RATCHET, *args], capture_output=True, text=True, env=env, timeout=600)


def sft_lines(topics, phrasings: int = 2) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": corpus.canonical_answer(topic, "tldr")},
            ]
        }
        for topic in topics
        for prompt in corpus.prompts(topic)[:phrasings]
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def settings_for(home: Path, base_model: Path):
    from ratchet.settings import Settings

    return Settings(home=home, base_model=str(base_model))


def register_parent(settings) -> str:
    """A registered random-weight LoRA adapter to continue from (the parent in a lineage)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from feedback.registry import AdapterRegistry
    from feedback.store import FeedbackStore

    with FeedbackStore(settings.store_url) as store:
        registry = AdapterRegistry(store, settings.adapters_dir)
        _, name = registry.next_name("parent")
        torch.manual_seed(1)
        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        model = AutoModelForCausalLM.from_pretrained(settings.base_model_path)
        get_peft_model(model, config).save_pretrained(settings.adapters_dir / name)
        registry.register(name, method="sft", base_model=settings.base_model_id)
    return name


@pytest.fixture
def workspace(tmp_path: Path, demo_model_dir: Path) -> tuple[Path, dict]:
    env = {**os.environ, "RATCHET_BASE_MODEL": str(demo_model_dir), "OMP_NUM_THREADS": "1"}
    env.pop("RATCHET_HOME", None)
    env.pop("RATCHET_DATABASE_URL", None)
    home = tmp_path / "ws"
    result = run("init", "--home", str(home), env=env)
    assert result.returncode == 0, result.stderr
    return home, env


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_sft_from_a_file_registers_an_adapter_with_its_lineage(workspace, tmp_path, demo_model_dir):
    home, env = workspace
    parent = register_parent(settings_for(home, demo_model_dir))
    data = write_jsonl(tmp_path / "train.jsonl", sft_lines(corpus.TOPICS[:5]))
    valid = write_jsonl(tmp_path / "valid.jsonl", sft_lines(corpus.TOPICS[5:7], phrasings=1))

    result = run(
        "train", "sft", "--home", str(home), "--file", str(data), "--validation-file", str(valid),
        "--parent", parent, "--suffix", "cli", "--epochs", "1", "--batch-size", "4", "--max-length", "128",
        env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ft-0002-cli"]  # the name, last (and only) on stdout
    assert "10 training row(s), 2 held out" in result.stderr
    listed = run("adapters", "--json", "--home", str(home), env=env)
    assert listed.returncode == 0, listed.stderr
    adapters = {a["name"]: a for a in json.loads(listed.stdout)["adapters"]}
    adapter = adapters["ft-0002-cli"]
    assert (adapter["method"], adapter["parent"], adapter["status"]) == ("sft", parent, "candidate")
    assert adapter["base_model"] == "demo-tiny-v1"
    assert adapter["hyperparameters"]["epochs"] == 1 and adapter["hyperparameters"]["learning_rate"] == 2e-3
    assert adapter["data_snapshot"]["counts"] == {"train": 10, "heldout": 2}
    assert adapter["data_snapshot"]["files"]["training"] == "train.jsonl"
    assert {"train_loss", "eval_loss", "steps", "trained_tokens", "run_dir"} <= adapter["metrics"].keys()
    run_dir = Path(adapter["metrics"]["run_dir"])
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "loss.png").is_file()
    assert sorted(p.name for p in (home / "adapters" / "ft-0002-cli").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_train_errors_are_one_line_and_name_the_fix(workspace, tmp_path):
    home, env = workspace
    empty = run("train", "sft", "--home", str(home), env=env)
    assert empty.returncode == 1
    assert empty.stderr.strip().splitlines()[-1] == (
        "ratchet: no training data in the store: rate some answers (thumbs up, scores of 4-5, corrections) "
        "or use --file"
    )
    assert empty.stdout == ""

    lines = sft_lines(corpus.TOPICS[:1], phrasings=1)
    pair = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [],
        "non_preferred_output": [],
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n{oops\n" + json.dumps(pair) + "\n")
    result = run("train", "sft", "--home", str(home), "--file", str(bad), env=env)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith(f"{bad}:2: bad JSON")
    assert errors[1].startswith(f"{bad}:3: preferred_output must hold exactly one assistant message")
    assert errors[-1] == f"ratchet: {bad}: 2 bad line(s), nothing trained"

    dpo_file = write_jsonl(tmp_path / "sft.jsonl", lines)
    wrong = run("train", "dpo", "--home", str(home), "--file", str(dpo_file), env=env)
    assert f"{dpo_file}:1: a SFT row, but dpo training takes DPO rows" in wrong.stderr

    flag = run("train", "kto", "--home", str(home), "--file", str(dpo_file), "--batch-size", "1", env=env)
    assert flag.returncode == 1
    assert flag.stderr.strip() == (
        "ratchet: batch_size: KTO needs a batch_size of at least 2 (its KL estimate pairs examples in a batch) "
        "(got '1')"
    )
    parent = run("train", "sft", "--home", str(home), "--file", str(dpo_file), "--parent", "ft-0042", env=env)
    assert parent.returncode == 1 and "ft-0042" in parent.stderr and "is not registered" in parent.stderr
    assert not list((home / "adapters").iterdir())  # nothing reserved, nothing registered


# -- jobs ------------------------------------------------------------------------------------------


@pytest.fixture
def job_workspace(tmp_path: Path, demo_model_dir: Path):
    """A workspace whose store holds 12 imported SFT examples, and its open store."""
    from deploy.workspace import init_workspace
    from feedback.ingest import import_jsonl
    from feedback.store import FeedbackStore

    settings = settings_for(tmp_path / "ws", demo_model_dir)
    init_workspace(settings, progress=False)
    store = FeedbackStore(settings.store_url)
    report = import_jsonl(store.engine, write_jsonl(tmp_path / "rows.jsonl", sft_lines(corpus.TOPICS[:6])))
    assert report.committed
    yield settings, store
    store.close()


@pytest.fixture
def local_ray():
    """Ray for the job runner: the session's own when the shared server already started it (shutting that
    down would take the server with it), else a local one of this test's own."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_job_runner_trains_queued_jobs_as_ray_tasks_and_records_how_they_end(job_workspace, local_ray, tmp_path):
    from feedback.models import File
    from feedback.registry import AdapterRegistry
    from retrain.hyperparams import Resources
    from retrain.job_runner import JobRunner
    from retrain.jobs import create_job, get_job, list_events

    settings, store = job_workspace
    # a file job whose file disappears after validation: it fails inside its task, before any training
    (settings.home / "files").mkdir()
    write_jsonl(settings.home / "files" / "gone.jsonl", sft_lines(corpus.TOPICS[:2]))
    with store.session() as session:
        session.add(File(id="file-gone", filename="gone.jsonl", purpose="fine-tune", path="files/gone.jsonl"))
    doomed = create_job(store, settings, method="sft", training_file="file-gone")
    assert doomed.status == "queued"
    (settings.home / "files" / "gone.jsonl").unlink()
    good = create_job(store, settings, method="sft", suffix="job", hyperparameters={"epochs": 1, "max_length": 128})
    assert good.status == "queued"

    runner = JobRunner(settings, resources=Resources(device="cpu", torch_threads=1, nice=5), poll_seconds=0.2)
    try:
        assert runner.run_once() == doomed.id
        assert runner.run_once() == good.id
        assert runner.run_once() is None
    finally:
        runner.stop()

    failed = get_job(store, doomed.id)
    assert failed.status == "failed" and failed.fine_tuned_model is None
    assert failed.error["code"] == "invalid_training_data" and "no such file" in failed.error["message"]
    done = get_job(store, good.id)
    assert done.status == "succeeded" and done.fine_tuned_model == "ft-0001-job"
    assert done.hyperparameters["epochs"] == 1 and isinstance(done.hyperparameters["batch_size"], int)
    adapter = AdapterRegistry(store, settings.adapters_dir).get("ft-0001-job")
    assert adapter.job_id == good.id and adapter.data_snapshot["source"] == "store"
    assert (settings.runs_dir / good.id / "metrics.csv").is_file()
    events, _ = list_events(store, good.id, limit=1000)
    messages = [e.message for e in reversed(events)]
    assert messages[0] == f"Created fine-tuning job: {good.id}"
    assert "Job queued" in messages and "Fine-tuning job started" in messages
    assert messages[-1] == "The job has successfully completed"
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all("loss" in m and "step" in m for m in metrics)


def test_jobs_validate_at_once_cancel_and_recover_after_a_restart(job_workspace):
    from retrain.jobs import add_event, cancel_job, create_job, get_job, recover_interrupted, set_status

    settings, store = job_workspace
    missing = create_job(store, settings, method="dpo")  # the store holds SFT rows only
    assert missing.status == "failed" and "no preference pairs in the store" in missing.error["message"]

    queued = create_job(store, settings, method="sft")
    assert cancel_job(store, queued.id).status == "cancelled"
    assert cancel_job(store, queued.id).status == "cancelled"  # finished jobs stay as they are

    crashed = create_job(store, settings, method="sft")
    set_status(store, crashed.id, "running", "Fine-tuning job started")
    (settings.adapters_dir / "ft-0007").mkdir(parents=True)
    (settings.adapters_dir / "ft-0007" / "adapter_model.safetensors").write_bytes(b"half")
    add_event(store, crashed.id, "Training ft-0007", type="reserved", data={"adapter": "ft-0007"})

    assert recover_interrupted(store, settings) == [crashed.id]
    job = get_job(store, crashed.id)
    assert job.status == "failed" and job.error["code"] == "interrupted"
    assert "restarted" in job.error["message"]
    assert not (settings.adapters_dir / "ft-0007").exists()


@pytest.mark.slow
def test_a_job_cancelled_while_training_stops_and_registers_nothing(job_workspace):
    from retrain.hyperparams import Resources
    from retrain.job_runner import run_job
    from retrain.jobs import cancel_job, create_job

    settings, store = job_workspace
    job = create_job(store, settings, method="sft", hyperparameters={"epochs": 1, "max_length": 128})
    cancel_job(store, job.id)  # as if a user cancelled it while it ran: it stops at its first step
    outcome = run_job(settings, job.id, Resources(device="cpu", torch_threads=1))
    assert outcome == {"cancelled": True}
    assert not [p for p in settings.adapters_dir.iterdir() if p.name.startswith("ft-")]
