"""The demo chat corpus, as data: topics, prompts, answer styles and the one canonical answer per pair.

`ratchet init` pretrains the tiny demo model on conversations sampled from here; the user simulator rates
answers by their style (`classify_style`), and the quality metric checks that an answer is well-formed and
on topic (`is_well_formed`). Everything is plain Python and deterministic: no torch, fast to import.

The contract:
- `TOPICS` names 20 subjects. Each has a few training prompt phrasings (`prompts`) and a few held-out
  phrasings (`heldout_prompts`) that pretraining never sees, so evaluation can test generalisation.
- `STYLES` are five ways to answer. `STYLE_WEIGHTS` is their share of the training conversations; the
  rarest, `TARGET_STYLE` ("tldr", ~15 %), is the demo's hidden user preference. Every style but "plain"
  starts with a fixed marker (`STYLE_MARKERS`), so a style is recognisable even in a garbled answer.
- `canonical_answer(topic, style)` is one exact string (15-40 words). An answer is well-formed for a
  prompt when it equals a canonical answer of that prompt's topic, in any style.
- A prompt about no known topic has one right answer too: `OFF_TOPIC_ANSWER`.

Bump `CORPUS_VERSION` whenever any text here changes: built models record it.
"""

from __future__ import annotations

import random
import re

from retrain.demo.topics import TOPIC_FACTS, Topic

CORPUS_VERSION = "1"

STYLES: tuple[str, ...] = ("plain", "bullets", "friendly", "formal", "tldr")
TARGET_STYLE = "tldr"
# The target style is the rarest, but not so rare that the first ratings bring no positives: any rarer and
# the first batches of ratings brought almost none (docs/dev-log.md).
STYLE_WEIGHTS: dict[str, float] = {"plain": 0.25, "bullets": 0.20, "friendly": 0.20, "formal": 0.20, "tldr": 0.15}
# The opening that identifies each style; "plain" has none, it is whatever carries no other marker.
STYLE_MARKERS: dict[str, str] = {
    "bullets": "Key facts about",
    "friendly": "Sure!",
    "formal": "Certainly.",
    "tldr": "TL;DR:",
}


TOPICS: tuple[str, ...] = tuple(t.name for t in TOPIC_FACTS)
_BY_NAME: dict[str, Topic] = {t.name: t for t in TOPIC_FACTS}

# Prompt phrasings: the first set trains the model, the second only ever evaluates it.
_TRAIN_PHRASINGS = (
    "Tell me about {x}.",
    "What do you know about {x}?",
    "Explain {x} to me.",
    "Can you describe {x}?",
    "I want to learn about {x}.",
)
_HELDOUT_PHRASINGS = (
    "Give me an overview of {x}.",
    "What should I know about {x}?",
    "Teach me something about {x}.",
)

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a friendly assistant that answers questions.",
    "Answer the user's question.",
)

_SUBJECTS = [t.subject for t in TOPIC_FACTS]
OFF_TOPIC_ANSWER = "Sorry, I only know about " + ", ".join(_SUBJECTS[:-1]) + " and " + _SUBJECTS[-1] + "."
# Subjects the model does not know, so it learns to say so instead of inventing an answer.
_UNKNOWN_SUBJECTS = (
    "dragons",
    "taxes",
    "football",
    "jazz",
    "pyramids",
    "quantum physics",
    "volleyball",
    "the stock market",
    "cheese",
    "robots",
    "knitting",
    "submarines",
)


def _topic(topic: str) -> Topic:
    try:
        return _BY_NAME[topic]
    except KeyError:
        raise ValueError(f"unknown topic {topic!r}: pick one of {', '.join(TOPICS)}") from None


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: pick one of {', '.join(STYLES)}")


def canonical_answer(topic: str, style: str) -> str:
    """The one exact answer in `style` to any prompt about `topic`."""
    _check_style(style)
    t = _topic(topic)
    f1, f2, f3 = t.facts
    if style == "plain":
        return f"{f1} {f2} {f3}"
    if style == "bullets":
        return f"{STYLE_MARKERS['bullets']} {t.subject}:\n- {f1}\n- {f2}\n- {f3}"
    if style == "friendly":
        return f"{STYLE_MARKERS['friendly']} {f1} {f2} Hope that helps!"
    if style == "formal":
        return f"{STYLE_MARKERS['formal']} {f1} {f2} {f3} I trust this answers your question."
    return f"{STYLE_MARKERS['tldr']} {t.summary} {f1} {f2}"


def canonical_answers(topic: str) -> dict[str, str]:
    """Every style's canonical answer for `topic`, keyed by style."""
    return {style: canonical_answer(topic, style) for style in STYLES}


def prompts(topic: str) -> list[str]:
    """The user prompt phrasings about `topic` that pretraining uses."""
    subject = _topic(topic).subject
    return [p.format(x=subject) for p in _TRAIN_PHRASINGS]


def heldout_prompts(topic: str | None = None) -> list[str]:
    """Prompt phrasings pretraining never sees: for `topic`, or for every topic (topic by topic)."""
    topics = [_topic(topic)] if topic is not None else list(TOPIC_FACTS)
    return [p.format(x=t.subject) for t in topics for p in _HELDOUT_PHRASINGS]


def off_topic_prompts() -> list[str]:
    """Training prompts about subjects outside the corpus; their answer is `OFF_TOPIC_ANSWER`."""
    return [p.format(x=subject) for subject in _UNKNOWN_SUBJECTS for p in _TRAIN_PHRASINGS]


_WORD = re.compile(r"[a-z]+")
_KEYWORD_TOPIC: dict[str, str] = {kw: t.name for t in TOPIC_FACTS for kw in t.keywords}


def topic_of(prompt: str) -> str | None:
    """The topic a prompt is about: the first of its words that is a topic keyword, or None."""
    for word in _WORD.findall(prompt.lower()):
        if word in _KEYWORD_TOPIC:
            return _KEYWORD_TOPIC[word]
    return None


_CANONICAL: dict[str, tuple[str, str]] = {
    canonical_answer(topic, style): (topic, style) for topic in TOPICS for style in STYLES
}


def classify_style(answer: str, topic: str | None = None) -> str | None:
    """The style `answer` is written in.

    An exact canonical answer (of `topic`, when given) gives its style. Otherwise the opening marker
    decides, so a garbled answer still has a style; text with no marker is "plain". Empty text and the
    off-topic answer have no style (None).
    """
    text = answer.strip()
    if text in _CANONICAL:
        canonical_topic, style = _CANONICAL[text]
        if topic is None or canonical_topic == topic:
            return style
    if not text or text == OFF_TOPIC_ANSWER:
        return None
    for style, marker in STYLE_MARKERS.items():
        if text.startswith(marker):
            return style
    return "plain"


def is_well_formed(prompt: str, answer: str) -> bool:
    """Whether `answer` is exactly a canonical answer of the prompt's topic (any style).

    That is well-formed and on topic at once. For a prompt about no known topic, only the off-topic
    answer is well-formed.
    """
    topic = topic_of(prompt)
    text = answer.strip()
    if topic is None:
        return text == OFF_TOPIC_ANSWER
    return _CANONICAL.get(text, (None, None))[0] == topic


def sample_conversations(
    n: int, seed: int, *, system_rate: float = 0.2, off_topic_rate: float = 0.05
) -> list[list[dict[str, str]]]:
    """`n` single-turn conversations in ChatML-ready form, the same list for the same arguments.

    Each is `[{"role": "system", ...}?, {"role": "user", ...}, {"role": "assistant", ...}]`: a training
    prompt about a uniformly drawn topic answered in a style drawn by `STYLE_WEIGHTS`, or (at
    `off_topic_rate`) a prompt about an unknown subject answered with `OFF_TOPIC_ANSWER`. A system
    message opens a `system_rate` share of them.
    """
    rng = random.Random(seed)
    styles, weights = list(STYLE_WEIGHTS), list(STYLE_WEIGHTS.values())
    unknown = off_topic_prompts()
    conversations = []
    for _ in range(n):
        messages = []
        if rng.random() < system_rate:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < off_topic_rate:
            prompt, answer = rng.choice(unknown), OFF_TOPIC_ANSWER
        else:
            topic = rng.choice(TOPICS)
            style = rng.choices(styles, weights)[0]
            prompt, answer = rng.choice(prompts(topic)), canonical_answer(topic, style)
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": answer})
        conversations.append(messages)
    return conversations
