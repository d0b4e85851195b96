"""The demo corpus (pure data) and the demo model built from it: format, answers, style mix, determinism."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from retrain.demo import corpus

# -- the corpus --------------------------------------------------------------------------------------


def test_corpus_shape():
    assert len(corpus.TOPICS) == 20
    assert len(corpus.STYLES) == 5
    assert set(corpus.STYLE_WEIGHTS) == set(corpus.STYLES)
    assert sum(corpus.STYLE_WEIGHTS.values()) == pytest.approx(1.0)
    assert min(corpus.STYLE_WEIGHTS, key=corpus.STYLE_WEIGHTS.get) == corpus.TARGET_STYLE
    assert 0.10 <= corpus.STYLE_WEIGHTS[corpus.TARGET_STYLE] <= 0.20


def test_canonical_answers_are_distinct_and_short():
    answers = [corpus.canonical_answer(t, s) for t in corpus.TOPICS for s in corpus.STYLES]
    assert len(set(answers)) == len(answers)
    assert all(15 <= len(a.split()) <= 45 for a in answers)


def test_unknown_topic_or_style_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="pick one of"):
        corpus.canonical_answer("dragons", "plain")
    with pytest.raises(ValueError, match="pick one of"):
        corpus.canonical_answer("tea", "haiku")


def test_classify_style_recovers_every_canonical_style():
    for topic in corpus.TOPICS:
        for style, answer in corpus.canonical_answers(topic).items():
            assert corpus.classify_style(answer) == style
            assert corpus.classify_style(answer, topic) == style
            assert corpus.classify_style(answer + "\n") == style


def test_classify_style_falls_back_to_markers():
    assert corpus.classify_style("TL;DR: bees bees bees") == corpus.TARGET_STYLE
    assert corpus.classify_style("Sure! whatever") == "friendly"
    assert corpus.classify_style("Certainly. Tea is a drink") == "formal"
    assert corpus.classify_style("Key facts about nothing") == "bullets"
    assert corpus.classify_style("Tea tea tea.") == "plain"
    assert corpus.classify_style("   ") is None
    assert corpus.classify_style(corpus.OFF_TOPIC_ANSWER) is None


def test_topic_of_every_prompt():
    for topic in corpus.TOPICS:
        for prompt in corpus.prompts(topic) + corpus.heldout_prompts(topic):
            assert corpus.topic_of(prompt) == topic, prompt
    assert all(corpus.topic_of(p) is None for p in corpus.off_topic_prompts())
    assert corpus.topic_of("Teach me about cycling!") == "bicycles"


def test_heldout_prompts_are_never_trained_on():
    trained = {p for t in corpus.TOPICS for p in corpus.prompts(t)}
    heldout = corpus.heldout_prompts()
    assert len(heldout) == len(set(heldout)) >= len(corpus.TOPICS)
    assert not trained & set(heldout)
    seen = {m["content"] for c in corpus.sample_conversations(3000, seed=1) for m in c}
    assert not seen & set(heldout)


def test_is_well_formed():
    tea, bees = corpus.prompts("tea")[0], corpus.heldout_prompts("bees")[0]
    for style in corpus.STYLES:
        assert corpus.is_well_formed(tea, corpus.canonical_answer("tea", style))
        assert not corpus.is_well_formed(bees, corpus.canonical_answer("tea", style))
    assert not corpus.is_well_formed(tea, "TL;DR: tea tea tea")
    assert not corpus.is_well_formed(tea, corpus.canonical_answer("tea", "plain")[:-5])
    assert not corpus.is_well_formed(tea, "")
    assert not corpus.is_well_formed(tea, corpus.OFF_TOPIC_ANSWER)
    assert corpus.is_well_formed("Tell me about jazz.", corpus.OFF_TOPIC_ANSWER)
    assert not corpus.is_well_formed("Tell me about jazz.", corpus.canonical_answer("tea", "plain"))


def test_sample_conversations_is_deterministic_per_seed():
    a, b, c = (corpus.sample_conversations(50, seed=s) for s in (7, 7, 8))
    assert a == b
    assert a != c


def test_sample_conversations_follow_the_style_weights():
    conversations = corpus.sample_conversations(5000, seed=0)
    for messages in conversations:
        assert [m["role"] for m in messages][-2:] == ["user", "assistant"]
        assert corpus.is_well_formed(messages[-2]["content"], messages[-1]["content"])
    styles = Counter(corpus.classify_style(m[-1]["content"]) for m in conversations)
    on_topic = sum(n for style, n in styles.items() if style is not None)
    for style, weight in corpus.STYLE_WEIGHTS.items():
        assert styles[style] / on_topic == pytest.approx(weight, abs=0.03)
    assert any(m[0]["role"] == "system" for m in conversations)


# -- the built model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer(demo_model_dir: Path):
    from serving.local_chat import load_model

    return load_model(demo_model_dir)


def test_model_loads_with_the_auto_classes(demo_model_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from retrain.demo.build import read_build_info

    config = AutoConfig.from_pretrained(demo_model_dir)
    assert config.head_dim >= 32  # vLLM's CPU attention supports no smaller head
    assert config.max_position_embeddings >= 512
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None
    assert (demo_model_dir / "model.safetensors").exists()
    assert (demo_model_dir / "chat_template.jinja").exists()
    info = read_build_info(demo_model_dir)
    assert info["corpus_version"] == corpus.CORPUS_VERSION
    assert info["steps"] > 0 and info["final_loss"] < 1.0
    assert not [p for p in demo_model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_chat_template(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tea."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell me about tea.<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )
    answer = corpus.canonical_answer("tea", "bullets")
    full = messages + [{"role": "assistant", "content": answer}]
    assert tokenizer.apply_chat_template(full, tokenize=False) == prompt + answer + "<|im_end|>\n"
    # The generation block lets TRL train on the assistant's tokens only.
    encoded = tokenizer.apply_chat_template(full, return_assistant_tokens_mask=True, return_dict=True)
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == answer + "<|im_end|>"


def test_tokenizer_round_trips_text(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    texts = [corpus.canonical_answer(t, s) for t in corpus.TOPICS for s in corpus.STYLES]
    texts += ["Ünïcödé and emoji 🙂 never seen before", corpus.OFF_TOPIC_ANSWER]
    for text in texts:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_greedy_answers_are_canonical_for_the_topic(model_and_tokenizer):
    from serving.local_chat import chat

    model, tokenizer = model_and_tokenizer
    asked = [corpus.prompts(topic)[i % 5] for i, topic in enumerate(corpus.TOPICS)]
    answers = [chat(model, tokenizer, [{"role": "user", "content": p}], max_tokens=80) for p in asked]
    well_formed = [corpus.is_well_formed(p, a) for p, a in zip(asked, answers, strict=True)]
    assert sum(well_formed) >= 0.8 * len(asked), [a for a, ok in zip(answers, well_formed, strict=True) if not ok]


def test_sampled_style_mix_includes_the_target_but_not_as_majority(model_and_tokenizer):
    from serving.local_chat import chat

    model, tokenizer = model_and_tokenizer
    prompts = [corpus.heldout_prompts(topic)[0] for topic in corpus.TOPICS] * 2
    answers = [
        chat(model, tokenizer, [{"role": "user", "content": p}], max_tokens=80, temperature=1.0, seed=i)
        for i, p in enumerate(prompts)
    ]
    styles = Counter(corpus.classify_style(a) for a in answers)
    assert 1 <= styles[corpus.TARGET_STYLE] < len(answers) / 2, styles
    assert len(styles) >= 3, styles


def test_sampling_is_repeatable_by_seed(model_and_tokenizer):
    from serving.local_chat import chat

    model, tokenizer = model_and_tokenizer
    messages = [{"role": "user", "content": "Tell me about chess."}]
    draws = [chat(model, tokenizer, messages, temperature=1.0, seed=s) for s in (3, 3, 4, 5, 6)]
    assert draws[0] == draws[1]
    assert len(set(draws[1:])) > 1


def test_build_is_deterministic_and_replaces_atomically(tmp_path: Path):
    from safetensors.torch import load_file

    from retrain.demo.build import build_demo_model, read_build_info

    first = build_demo_model(tmp_path / "a", seed=3, steps=5, progress=False, threads=1)
    second = build_demo_model(tmp_path / "b", seed=3, steps=5, progress=False, threads=1)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    build_demo_model(tmp_path / "b", seed=4, steps=5, progress=False, threads=1)  # over the old build
    assert read_build_info(tmp_path / "b")["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
