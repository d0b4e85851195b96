"""Reinforcement fine-tuning and OpenAI's grader endpoints on the real served app, through the `openai` SDK.

The reinforcement job trains for real (TRL's GRPO on the demo model, in the job runner's Ray task) with a
string_check grader that passes answers in the demo corpus's rare "TL;DR:" style; the share of passing
answers on held-out prompts, sampled through the chat API, must rise. Python graders that misbehave
fail their job with the sandbox's reason while the server goes on serving.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from retrain.demo import corpus
from retrain.graders import parse_grader
from retrain.grading import GradingContext, training_reward

from helpers import wait_until_finished

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MARKER = corpus.STYLE_MARKERS[corpus.TARGET_STYLE]
PASSES = {"type": "string_check", "name": "tldr", "input": "{{ sample.output_text }}",
          "reference": "{{ item.reference_answer }}", "operation": "like"}  # fmt: skip
SAMPLES_PER_PROMPT = 4
LOOPS = "def grade(sample, item):\n    while True:\n        pass\n"


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def rft_jsonl(prompts: list[str]) -> bytes:
    rows = [{"messages": [{"role": "user", "content": p}], "reference_answer": MARKER} for p in prompts]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def create_rft_job(client: OpenAI, grader: dict, prompts: list[str], **hyperparameters):
    upload = client.files.create(file=("rft.jsonl", rft_jsonl(prompts)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        training_file=upload.id,
        model="base",
        seed=0,
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyperparameters}},
    )


def pass_share(client: OpenAI, model: str, prompts: list[str]) -> float:
    passed = total = 0
    for index, prompt in enumerate(prompts):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=1.0, seed=index,
            n=SAMPLES_PER_PROMPT, max_tokens=64,
        )  # fmt: skip
        passed += sum(MARKER in choice.message.content for choice in answer.choices)
        total += len(answer.choices)
    return passed / total


def test_validate_returns_the_grader_and_an_invalid_grader_is_a_400_naming_its_field(client):
    assert client.fine_tuning.alpha.graders.validate(grader=PASSES).grader.operation == "like"
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.alpha.graders.validate(grader={**PASSES, "operation": "contains"})
    assert raised.value.body["param"] == "grader.operation"
    assert "'eq', 'ne', 'like' or 'ilike'" in raised.value.body["message"]


def test_graders_run_returns_the_reward_training_uses(client, server):
    python = {"type": "python", "name": "length", "source": "def grade(sample, item):\n"
              "    return min(1.0, len(sample['output_text']) / item['target'])\n"}  # fmt: skip
    multi = {"type": "multi", "name": "both", "graders": {"tldr": PASSES, "length": python},
             "calculate_output": "0.5 * tldr + 0.5 * length"}  # fmt: skip
    sample, item = "TL;DR: the sun is a star.", {"reference_answer": MARKER, "target": 50}
    context = GradingContext.from_settings(server.settings)
    for grader in (PASSES, python, multi):
        result = client.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item)
        (trained_on,) = training_reward(parse_grader(grader), context)([sample], [item])
        assert result.reward == pytest.approx(trained_on), grader["type"]
        assert not any(v for k, v in result.metadata.errors.model_dump().items() if isinstance(v, bool))
    assert result.reward == pytest.approx(0.5 + 0.5 * len(sample) / 50)
    assert result.sub_rewards == {"tldr": 1.0, "length": pytest.approx(len(sample) / 50)}


def test_a_python_grader_that_never_returns_is_stopped_and_the_server_keeps_serving(client, server):
    looping = {
        "type": "python",
        "name": "forever",
        "source": "def grade(sample, item):\n    while True:\n        pass\n",
    }
    result = client.fine_tuning.alpha.graders.run(grader=looping, model_sample="x", item={})
    assert result.reward == 0.0
    assert result.metadata.errors.python_grader_runtime_error is True
    assert "time limit" in result.metadata.errors.python_grader_runtime_error_details
    answer = client.chat.completions.create(model="base", messages=[{"role": "user", "content": server.prompt}])
    assert answer.choices[0].message.content


def test_a_reinforcement_job_raises_the_share_of_answers_that_pass_its_grader(client, server):
    train = [p for topic in corpus.TOPICS for p in corpus.prompts(topic)[:2]]
    heldout = [corpus.heldout_prompts(topic)[0] for topic in corpus.TOPICS]
    before = pass_share(client, "base", heldout)
    job = create_rft_job(client, PASSES, train)
    assert job.status == "queued" and job.method.type == "reinforcement"
    assert job.method.reinforcement.grader.name == "tldr"
    job = wait_until_finished(client, job.id)
    assert job.status == "succeeded", job.error
    after = pass_share(client, job.fine_tuned_model, heldout)
    print(f"\nreinforcement job: held-out answers passing the grader {before:.0%} -> {after:.0%}")
    assert after >= before + 0.3 and after >= 0.6
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
    assert {"reward", "reward_std", "kl", "loss"} <= set(metrics[0]) or {"reward", "loss"} <= set(metrics[-1])
    rewards = [m["reward"] for m in reversed(metrics) if m.get("split") == "train"]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5  # the reward curve rises
    run_dir = server.settings.runs_dir / job.id
    assert (run_dir / "loss.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (LOOPS, "time limit"),
        ("def grade(sample, item):\n    return len(open('/etc/hostname').read())\n", "does not allow opening files"),
        ("import socket\ndef grade(sample, item):\n    return 1.0\n", "does not allow importing 'socket'"),
    ],
    ids=["loops-forever", "reads-a-file", "opens-a-socket"],
)
def test_a_misbehaving_python_grader_fails_its_job_with_the_reason(client, server, source, reason):
    grader = {"type": "python", "name": "bad", "source": source}
    job = wait_until_finished(client, create_rft_job(client, grader, [server.prompt] * 2, n_epochs=1).id)
    assert job.status == "failed"
    assert job.error.code == "grader_failed" and reason in job.error.message, job.error
    assert job.fine_tuned_model is None
    answer = client.chat.completions.create(model="base", messages=[{"role": "user", "content": server.prompt}])
    assert answer.choices[0].message.content


def test_a_reinforcement_job_with_an_invalid_grader_is_a_400(client):
    upload = client.files.create(file=("rft.jsonl", rft_jsonl(["Tell me about the sun."])), purpose="fine-tune")
    bad = {**PASSES, "input": "{{ secrets.key }}"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(
            training_file=upload.id, model="base", method={"type": "reinforcement", "reinforcement": {"grader": bad}}
        )
    assert raised.value.body["param"] == "method.reinforcement.grader.input"
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(training_file=upload.id, model="base", method={"type": "reinforcement"})
    assert raised.value.body["param"] == "method.reinforcement"
