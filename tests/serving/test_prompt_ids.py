"""The served prompt's token ids are exactly what `apply_chat_template(tokenize=True)` gives, for the demo
model's template and for templates that do and do not write the BOS token themselves."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from serving.runtime import chat_prompt_ids

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me about tea."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. What can I do?"},
        {"role": "user", "content": "  spaces, tabs\tand a newline\n, émoji 🍵 and <tags>  "},
    ],
    [{"role": "user", "content": ""}],
]
WITH_BOS = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}<assistant>"
WITHOUT_BOS = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}### assistant:"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    return AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.mark.parametrize("template", [None, WITH_BOS, WITHOUT_BOS], ids=["demo", "with-bos", "without-bos"])
def test_prompt_ids_match_apply_chat_template(tokenizer, template) -> None:
    if template is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = template
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert chat_prompt_ids(tokenizer, messages) == list(expected["input_ids"])
    if template == WITH_BOS and tokenizer.bos_token_id is not None:  # the BOS is there once, not twice
        ids = chat_prompt_ids(tokenizer, CONVERSATIONS[0])
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
