"""The OpenAI files and fine-tuning API on the real served app, with the official `openai` SDK as the client.

The session's `server` runs the full app on a real local Ray Serve with its job runner (deploy/server.py);
jobs train for real with TRL on the demo model, one at a time, as Ray tasks. The module's jobs are queued
behind one training job, so "queued" states (cancel, a file deleted before its job starts) are certain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import openai
import pytest
from openai import OpenAI

from retrain.demo import corpus

from helpers import wait_until_finished

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RATCHET = [sys.executable, "-c", "from ratchet.cli import main; main()"]
TINY = {"n_epochs": 1, "max_length": 128}  # max_length: one of ratchet's own names, passed through


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def sft_jsonl(topics, phrasings: int = 2) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": corpus.canonical_answer(topic, "tldr")},
            ]
        }
        for topic in topics
        for prompt in corpus.prompts(topic)[:phrasings]
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client: OpenAI, name: str, data: bytes):
    return client.files.create(file=(name, data), purpose="fine-tune")


def registered_by(server, job_id: str) -> list[str]:
    """The adapters the registry holds from this job."""
    from feedback.registry import AdapterRegistry
    from feedback.store import FeedbackStore

    with FeedbackStore(server.settings.store_url) as store:
        return [a.name for a in AdapterRegistry(store, server.settings.adapters_dir).list() if a.job_id == job_id]


def training_seconds(server, job) -> str:
    from feedback.registry import AdapterRegistry
    from feedback.store import FeedbackStore

    if job.fine_tuned_model is None:
        return "no adapter"
    with FeedbackStore(server.settings.store_url) as store:
        metrics = AdapterRegistry(store, server.settings.adapters_dir).get(job.fine_tuned_model).metrics
    return f"{metrics['seconds']} s of it training ({metrics['steps']} steps)"


@dataclass
class Run:
    good_file: str
    trained: object  # the finished supervised job
    doomed: object  # a job whose file was deleted while it was queued, finished
    cancelled_at_once: object  # the cancel answer for a queued job
    cancelled_id: str
    cli_cancel: subprocess.CompletedProcess  # `ratchet train cancel` of a job queued behind the others
    cli_job: str
    seconds: float  # the supervised job, created -> succeeded


def ratchet(server, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
    env["RATCHET_BASE_MODEL"] = server.settings.base_model
    home = ["--home", str(server.settings.home)]
    return subprocess.run([*RATCHET, *args, *home], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def run(client, server) -> Run:
    """One training job, and behind it in the queue: a job whose file is then deleted, and a job (continuing
    from the server's registered adapter) that is cancelled while still queued."""
    good = upload(client, "train.jsonl", sft_jsonl(corpus.TOPICS[:6]))
    started = time.monotonic()
    trained = client.fine_tuning.jobs.create(
        training_file=good.id,
        model="base",
        suffix="api",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": TINY}},
    )
    assert trained.status == "queued", trained
    doomed_file = upload(client, "doomed.jsonl", sft_jsonl(corpus.TOPICS[6:8]))
    doomed = client.fine_tuning.jobs.create(training_file=doomed_file.id, model="base", hyperparameters=TINY)
    assert doomed.status == "queued"
    assert client.files.delete(doomed_file.id).deleted is True
    queued = client.fine_tuning.jobs.create(training_file=good.id, model=server.adapter, hyperparameters=TINY)
    assert queued.status == "queued" and queued.model == server.adapter
    cancelled = client.fine_tuning.jobs.cancel(queued.id)
    cli_job = client.fine_tuning.jobs.create(training_file=good.id, model="base", hyperparameters=TINY)
    cli_cancel = ratchet(server, "train", "cancel", cli_job.id)
    finished = wait_until_finished(client, trained.id)
    seconds = time.monotonic() - started
    print(
        f"\nsupervised job on the demo model: {seconds:.1f} s create -> succeeded, {training_seconds(server, finished)}"
    )
    doomed = wait_until_finished(client, doomed.id)
    return Run(good.id, finished, doomed, cancelled, queued.id, cli_cancel, cli_job.id, seconds)


# -- files -----------------------------------------------------------------------------------------


def test_files_upload_list_retrieve_download_delete(client):
    data = sft_jsonl(corpus.TOPICS[:2])
    uploaded = upload(client, "small.jsonl", data)
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert (uploaded.filename, uploaded.purpose, uploaded.bytes, uploaded.status) == (
        "small.jsonl",
        "fine-tune",
        len(data),
        "processed",
    )
    assert client.files.retrieve(uploaded.id).model_dump() == uploaded.model_dump()
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.content(uploaded.id).content == data

    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    assert uploaded.id not in [f.id for f in client.files.list()]


def test_a_bad_file_is_refused_with_its_bad_lines_numbered(client, server):
    good_line = sft_jsonl(corpus.TOPICS[:1], phrasings=1)
    pair = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [],
        "non_preferred_output": [],
    }
    before = sorted((server.settings.home / "files").glob("*"))
    with pytest.raises(openai.BadRequestError) as refused:
        upload(client, "bad.jsonl", good_line + b"{oops\n" + json.dumps(pair).encode() + b"\n")
    message = refused.value.body["message"]
    assert "bad.jsonl:2: bad JSON" in message
    assert "bad.jsonl:3: preferred_output must hold exactly one assistant message" in message
    assert ":1:" not in message and str(server.settings.home) not in message
    assert refused.value.body["param"] == "file" and refused.value.body["code"] == "invalid_file"
    assert sorted((server.settings.home / "files").glob("*")) == before  # nothing stored

    with pytest.raises(openai.BadRequestError) as empty:
        upload(client, "empty.jsonl", b"\n\n")
    assert "empty.jsonl: empty file" in empty.value.body["message"]
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("a.jsonl", good_line), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"


# -- jobs ------------------------------------------------------------------------------------------


def test_a_supervised_job_trains_an_adapter_that_answers_at_once(client, server, run):
    job = run.trained
    assert job.status == "succeeded", job.error
    assert job.object == "fine_tuning.job" and job.error is None
    assert job.fine_tuned_model is not None and job.fine_tuned_model.endswith("-api")
    assert (job.training_file, job.model, job.seed) == (run.good_file, "base", 7)
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 1 and isinstance(job.hyperparameters.batch_size, int)
    assert job.hyperparameters.learning_rate_multiplier == 1.0  # auto: the base rate itself
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.n_epochs == 1

    assert registered_by(server, job.id) == [job.fine_tuned_model]
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]
    answer = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": server.prompt}],
        temperature=0,
        max_tokens=16,
    )
    assert answer.model == job.fine_tuned_model
    assert answer.choices[0].message.content


def test_events_and_checkpoints_of_a_finished_job(client, run):
    job = run.trained
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    assert all(e.object == "fine_tuning.job.event" and e.id.startswith("ftevent-") for e in events)
    messages = [e.message for e in events]  # newest first, as OpenAI lists them
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert "Fine-tuning job started" in messages
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all("loss" in m and "step" in m for m in metrics)

    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert [e.id for e in page.data] == [e.id for e in events[:2]] and page.has_more is True
    second = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert [e.id for e in second.data] == [e.id for e in events[2:4]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 1
    checkpoint = checkpoints[0]
    assert checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model
    assert checkpoint.fine_tuning_job_id == job.id
    assert checkpoint.step_number == max(m["step"] for m in metrics) > 0
    assert checkpoint.metrics.train_loss is not None
    assert client.fine_tuning.jobs.checkpoints.list(run.doomed.id).data == []


def test_a_job_whose_file_was_deleted_fails_with_the_reason_and_registers_nothing(client, server, run):
    job = run.doomed
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "training_failed"
    assert f"file {job.training_file} does not exist" in job.error.message
    assert f"Job failed: {job.error.message}" in [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert registered_by(server, job.id) == []


def test_a_dpo_job_given_an_sft_file_fails_at_once(client, server, run):
    models_before = [m.id for m in client.models.list().data]
    job = client.fine_tuning.jobs.create(training_file=run.good_file, model="base", method={"type": "dpo"})
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_data" and "bad line(s), nothing trained" in job.error.message
    assert job.method.type == "dpo"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "failed"
    assert [m.id for m in client.models.list().data] == models_before
    assert registered_by(server, job.id) == []


def test_a_queued_job_is_cancelled_at_once_and_never_runs(client, run):
    assert run.cancelled_at_once.status == "cancelled"
    job = client.fine_tuning.jobs.retrieve(run.cancelled_id)  # the runner has passed it by now
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.finished_at is not None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert "Job cancelled" in messages and "Fine-tuning job started" not in messages
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # again: unchanged
    with pytest.raises(openai.BadRequestError) as finished:
        client.fine_tuning.jobs.cancel(run.trained.id)
    assert "already succeeded" in finished.value.body["message"]


def test_ratchet_train_cancel_on_the_services_workspace(client, server, run):
    assert run.cli_cancel.returncode == 0, run.cli_cancel.stderr
    assert run.cli_cancel.stdout.splitlines() == [run.cli_job]
    job = wait_until_finished(client, run.cli_job)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert registered_by(server, run.cli_job) == []

    finished = ratchet(server, "train", "cancel", run.trained.id)
    assert finished.returncode == 1 and finished.stdout == ""
    assert finished.stderr.strip() == f"ratchet: job {run.trained.id} has already succeeded: there is nothing to cancel"
    unknown = ratchet(server, "train", "cancel", "ftjob-nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "ratchet: fine-tuning job ftjob-nope does not exist"


def test_jobs_list_newest_first_with_cursor_pagination(client, run):
    first = client.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1 and first.has_more is True
    every = [job.id for job in client.fine_tuning.jobs.list(limit=1)]  # the SDK follows `after` page by page
    mine = [run.trained.id, run.doomed.id, run.cancelled_id, run.cli_job]
    assert [i for i in every if i in mine] == mine[::-1]
    assert every[0] == first.data[0].id and len(every) == len(set(every))
    assert client.fine_tuning.jobs.list(limit=100).has_more is False


def test_bad_job_requests_are_openai_errors_not_500s(client, run):
    create = client.fine_tuning.jobs.create
    with pytest.raises(openai.NotFoundError) as model:
        create(training_file=run.good_file, model="gpt-17")
    assert model.value.body["code"] == "model_not_found" and model.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as missing:
        create(training_file="file-nope", model="base")
    assert missing.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as epochs:
        create(training_file=run.good_file, model="base", hyperparameters={"n_epochs": 0})
    assert epochs.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as kind:
        create(training_file=run.good_file, model="base", method={"type": "distillation"})
    assert kind.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError) as graderless:
        create(training_file=run.good_file, model="base", method={"type": "reinforcement"})
    assert graderless.value.body["param"].startswith("method.reinforcement")
    with pytest.raises(openai.BadRequestError) as suffix:
        create(training_file=run.good_file, model="base", suffix="Not OK!")
    assert suffix.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as unknown:
        create(training_file=run.good_file, model="base", hyperparameters={"warp_factor": 9})
    assert "warp_factor" in unknown.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-nope")


def test_api_keys_guard_files_and_jobs_once_one_exists(client, server, run):
    """Runs last in this module: while a key exists every route needs it (the server caches key state 5 s)."""
    from feedback.store import FeedbackStore
    from serving.auth import CACHE_SECONDS

    with FeedbackStore(server.settings.store_url) as store:
        key_id, key = store.add_api_key("test-files")
    try:
        time.sleep(CACHE_SECONDS + 0.5)
        with pytest.raises(openai.AuthenticationError):
            client.files.list()
        with pytest.raises(openai.AuthenticationError):
            client.fine_tuning.jobs.retrieve(run.trained.id)
        keyed = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        assert keyed.fine_tuning.jobs.retrieve(run.trained.id).status == "succeeded"
    finally:
        with FeedbackStore(server.settings.store_url) as store:
            store.revoke_api_key(key_id)
        time.sleep(CACHE_SECONDS + 0.5)
