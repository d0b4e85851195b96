"""Real TRL training on the demo model (no mocks): SFT, DPO and KTO adapters, their files, metrics and
plots, and proof that each one learned (a check that fails when training did nothing).

The data is the demo corpus: one answer style ("tldr", the rarest) taught or preferred over "plain".
Runs are tiny (20-40 rows, max_length 128, one thread) so the whole file stays within seconds of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrain.demo import corpus
from retrain.hyperparams import (
    ConfigError,
    DPOHyperparameters,
    KTOHyperparameters,
    Resources,
    SFTHyperparameters,
    TrainConfig,
    auto_batch_size,
    auto_epochs,
    auto_learning_rate,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
TRAIN_TOPICS, HELDOUT_TOPICS = corpus.TOPICS[:10], corpus.TOPICS[10:16]
ONE_THREAD = Resources(device="cpu", torch_threads=1)


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def pairs(topics, phrasings: int = 2, heldout: bool = False) -> list[tuple[str, str]]:
    """(topic, prompt) pairs: training phrasings, or the held-out ones pretraining never saw."""
    pick = corpus.heldout_prompts if heldout else corpus.prompts
    return [(topic, prompt) for topic in topics for prompt in pick(topic)[:phrasings]]


def sft_rows(items) -> list[dict]:
    return [{"messages": user(p) + answer(corpus.canonical_answer(t, "tldr"))} for t, p in items]


def dpo_rows(items) -> list[dict]:
    return [
        {
            "input": {"messages": user(p)},
            "preferred_output": answer(corpus.canonical_answer(t, "tldr")),
            "non_preferred_output": answer(corpus.canonical_answer(t, "plain")),
        }
        for t, p in items
    ]


def kto_rows(items) -> list[dict]:
    rows = []
    for t, p in items:
        rows.append({"prompt": user(p), "completion": answer(corpus.canonical_answer(t, "tldr")), "label": True})
        rows.append({"prompt": user(p), "completion": answer(corpus.canonical_answer(t, "plain")), "label": False})
    return rows


class Scorer:
    """Greedy answers and answer log-probabilities of the base model, or of the base with an adapter."""

    def __init__(self, base_dir: Path) -> None:
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(1)
        self.base_dir = base_dir
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)

    def model(self, adapter_dir: Path | None = None):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.base_dir)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        return model.eval()

    def greedy(self, model, prompt: str) -> str:
        inputs = self.tokenizer.apply_chat_template(
            user(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**inputs, max_new_tokens=80, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def logprob(self, model, prompt: str, text: str) -> float:
        """Sum of the answer tokens' log-probabilities (the answer and its end-of-turn token)."""
        import torch

        prompt_ids = self.tokenizer.apply_chat_template(user(prompt), add_generation_prompt=True, return_dict=True)
        full_ids = self.tokenizer.apply_chat_template(user(prompt) + answer(text), return_dict=True)
        start, ids = len(prompt_ids["input_ids"]), torch.tensor([full_ids["input_ids"]])
        with torch.no_grad():
            logprobs = model(ids).logits.log_softmax(-1)[0, :-1]
        token_logprobs = logprobs.gather(-1, ids[0, 1:, None])[:, 0]
        return token_logprobs[start - 1 :].sum().item()

    def margin(self, model, items) -> float:
        """Mean log-probability margin of the tldr answer over the plain one."""
        return sum(
            self.logprob(model, p, corpus.canonical_answer(t, "tldr"))
            - self.logprob(model, p, corpus.canonical_answer(t, "plain"))
            for t, p in items
        ) / len(items)


def random_lora_adapter(base_dir: Path, out_dir: Path, *, rank: int) -> Path:
    """A LoRA adapter with random, non-zero weights (a parent that differs from the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def scorer(demo_model_dir: Path) -> Scorer:
    return Scorer(demo_model_dir)


def assert_adapter_and_run(out_dir: Path, run_dir: Path, method: str, result) -> None:
    """The adapter is a plain PEFT dir (safetensors only); the run folder has the CSV and the plot."""
    assert (out_dir / "adapter_model.safetensors").is_file()
    assert json.loads((out_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not [p for p in out_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    assert not (out_dir / "ref").exists()  # TRL's frozen reference copy is never saved
    from retrain.runs import read_metrics

    rows = read_metrics(run_dir)
    assert [r for r in rows if r["split"] == "train"] and all("loss" in r for r in rows)
    assert len(rows) == len(result.history)
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.metrics["steps"] > 0 and result.metrics["trained_tokens"] > 0
    assert "auto" not in result.hyperparameters.values() and result.hyperparameters["method"] == method


# -- SFT -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_teaches_answers_the_model_did_not_give(demo_model_dir, scorer, tmp_path):
    from retrain.trainers import train

    items = pairs(TRAIN_TOPICS)  # 20 prompts, each taught its tldr answer
    targets = {p: corpus.canonical_answer(t, "tldr") for t, p in items}
    base = scorer.model()
    before = sum(scorer.greedy(base, p) == targets[p] for p in targets)
    before_logprob = sum(scorer.logprob(base, p, a) for p, a in targets.items()) / len(targets)
    assert before <= 4, "the base model already answers in the taught style: the test would prove nothing"

    seen = []
    result = train(
        "sft",
        base_model_path=demo_model_dir,
        train_rows=sft_rows(items),
        eval_rows=sft_rows(pairs(TRAIN_TOPICS[:3], heldout=True)),
        hyperparams=SFTHyperparameters(epochs=3, learning_rate=5e-3, batch_size=2, max_length=128),
        out_dir=tmp_path / "adapter",
        run_dir=tmp_path / "run",
        resources=ONE_THREAD,
        progress=False,
        on_metrics=seen.append,
    )

    tuned = scorer.model(tmp_path / "adapter")
    after = sum(scorer.greedy(tuned, p) == targets[p] for p in targets)
    after_logprob = sum(scorer.logprob(tuned, p, a) for p, a in targets.items()) / len(targets)
    print(
        f"SFT: greedy = target {before}/20 -> {after}/20; answer log-prob {before_logprob:.1f} -> {after_logprob:.1f}"
    )
    assert after >= 16
    assert after_logprob > before_logprob + 5
    assert_adapter_and_run(tmp_path / "adapter", tmp_path / "run", "sft", result)
    assert seen == result.history
    evals = [row for row in result.history if row["split"] == "eval"]
    assert len(evals) >= 2 and evals[-1]["loss"] < evals[0]["loss"]
    assert "train_mean_token_accuracy" in result.metrics and "eval_loss" in result.metrics


# -- DPO and KTO -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_training_raises_the_preferred_margin_on_heldout_prompts(method, demo_model_dir, scorer, tmp_path):
    from retrain.trainers import train

    heldout = pairs(HELDOUT_TOPICS, phrasings=1, heldout=True)  # topics and phrasings it never trains on
    before = scorer.margin(scorer.model(), heldout)
    rows = dpo_rows(pairs(TRAIN_TOPICS)) if method == "dpo" else kto_rows(pairs(TRAIN_TOPICS))
    hyperparams = (
        DPOHyperparameters(epochs=3, batch_size=4, max_length=128)
        if method == "dpo"
        else KTOHyperparameters(epochs=2, batch_size=4, max_length=128)
    )
    result = train(
        method,
        base_model_path=demo_model_dir,
        train_rows=rows,
        hyperparams=hyperparams,
        out_dir=tmp_path / "adapter",
        run_dir=tmp_path / "run",
        resources=ONE_THREAD,
        progress=False,
    )
    after = scorer.margin(scorer.model(tmp_path / "adapter"), heldout)
    print(f"{method}: held-out log-prob margin tldr - plain {before:.2f} -> {after:.2f}")
    assert after > before + 1.0
    assert_adapter_and_run(tmp_path / "adapter", tmp_path / "run", method, result)
    assert result.metrics["train_rewards/margins"] > 0


@pytest.mark.slow
def test_continuing_from_a_parent_keeps_its_shape_and_uses_it_as_reference(demo_model_dir, tmp_path):
    from safetensors.torch import load_file

    from retrain.trainers import train

    parent = random_lora_adapter(demo_model_dir, tmp_path / "parent", rank=4)
    result = train(
        "dpo",
        base_model_path=demo_model_dir,
        train_rows=dpo_rows(pairs(TRAIN_TOPICS[:2])),
        hyperparams=DPOHyperparameters(epochs=1, batch_size=2, max_length=128, lora_r=16),
        out_dir=tmp_path / "child",
        parent_adapter_dir=parent,
        resources=ONE_THREAD,
        progress=False,
    )
    assert json.loads((tmp_path / "child" / "adapter_config.json").read_text())["r"] == 4
    assert result.hyperparameters["lora_r"] == 4  # the record tells the truth, not the ignored flag
    # the reference is the parent: DPO starts with zero reward margin, and the weights moved from it
    assert result.history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    before, after = (
        load_file(parent / "adapter_model.safetensors"),
        load_file(tmp_path / "child" / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys()
    assert any(not before[k].equal(after[k]) for k in before)
    assert not (tmp_path / "child" / "ref").exists()


def test_sft_rows_become_answer_only_pairs_and_honour_openai_weights():
    from retrain.trainers import to_trl_rows

    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Bees?"},
            {"role": "assistant", "content": "They make honey.", "name": "bot"},
        ]
    }
    (pair,) = to_trl_rows("sft", [row, {**row, "weight": 0}])
    assert [m["content"] for m in pair["prompt"]] == ["Be brief.", "Hi", "Hello", "Bees?"]
    assert pair["completion"] == [{"role": "assistant", "content": "They make honey."}]


# -- hyperparameters and configs (no training) --------------------------------------------------------


def test_auto_hyperparameters_follow_the_data_and_model_size():
    assert [auto_epochs(n) for n in (1, 10, 20, 40, 1000, 20_000)] == [25, 10, 5, 3, 3, 1]
    assert [auto_batch_size(n) for n in (5, 20, 100, 400, 100_000)] == [1, 2, 8, 32, 32]
    assert auto_learning_rate(650_000) == 2e-3 and auto_learning_rate(7_000_000_000) == 2e-4
    resolved = DPOHyperparameters().resolve(n_train=20, n_parameters=650_000)
    assert (resolved.epochs, resolved.batch_size, resolved.learning_rate) == (5, 2, 1e-3)
    assert KTOHyperparameters().resolve(n_train=3, n_parameters=650_000).batch_size == 2
    assert SFTHyperparameters(epochs=7).resolve(20, 650_000).epochs == 7


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_say_how_to_run_them(path):
    config = load_config(path)
    assert path.name.startswith(config.method)
    text = path.read_text()
    assert text.startswith("#") and f"ratchet train {config.method}" in text
    assert config.resources.device == ("cpu" if "_cpu" in path.name else "cuda")


def test_sft_lora_config_defaults_are_strong_enough_for_the_demo_model():
    hp = SFTHyperparameters()
    assert hp.target_modules == "all-linear" and (hp.lora_r, hp.lora_alpha) == (8, 16)
    assert hp.resolve(30, 650_000).learning_rate >= 2e-3
    assert all(field.description for field in SFTHyperparameters.model_fields.values())
    assert all(field.description for field in KTOHyperparameters.model_fields.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"epochs": "many"}, "epochs: Input should be a valid integer"),
        ({"learning_rate": "-1"}, "learning_rate: Input should be greater than 0"),
        ({"lora_r": 0}, "lora_r: Input should be greater than or equal to 1"),
        ({"beta": 0}, "beta: Input should be greater than 0"),
    ],
)
def test_out_of_range_hyperparameters_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.default("dpo").with_overrides(overrides)


def test_kto_refuses_a_batch_of_one_and_configs_refuse_the_wrong_method(tmp_path):
    with pytest.raises(ConfigError, match="KTO needs a batch_size of at least 2"):
        TrainConfig.default("kto").with_overrides({"batch_size": 1})
    with pytest.raises(ConfigError, match="is a sft config: use it with `ratchet train sft`"):
        load_config(CONFIGS / "sft_lora_cpu.yaml", "dpo")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sft\nhyperparameters:\n  lora_rank: 8\n")
    with pytest.raises(ConfigError, match="lora_rank: Extra inputs are not permitted"):
        load_config(bad)
