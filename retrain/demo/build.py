"""Build the tiny demo chat model from the corpus: `build_demo_model(out_dir)`.

No model hub is reachable here, so `ratchet init` makes its own base model: a byte-level BPE tokenizer
trained on the corpus, a ChatML chat template, and a 0.66M-parameter Llama pretrained briefly (600 steps
by default) on conversations sampled from `retrain.demo.corpus`. The result is an ordinary Hugging Face model
directory (safetensors, `chat_template.jinja`, `generation_config.json` that stops at `<|im_end|>`) that
`AutoModelForCausalLM` / `AutoTokenizer` and vLLM load like any other.

Guarantees:
- Deterministic for a seed (data order, tokenizer, initial weights) on a given machine and thread count.
- head_dim is 32 (vLLM's CPU attention supports no smaller), the context is 1024 tokens.
- Atomic: the model is built in a temp dir beside `out_dir` and renamed into place at the end; a
  complete build holds `ratchet-demo.json` (`read_build_info`), a killed one leaves nothing at `out_dir`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from retrain.demo import corpus

BUILD_INFO_FILE = "ratchet-demo.json"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VOCAB_SIZE = 1024
BATCH_SIZE = 32
PEAK_LR = 3e-3
# The `generation` block marks the assistant's tokens, so TRL's assistant_only_loss and
# `return_assistant_tokens_mask` work with this template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def read_build_info(model_dir: Path) -> dict | None:
    """The build record of a complete demo model at `model_dir` (seed, steps, final loss, corpus
    version), or None when there is none."""
    try:
        return json.loads((Path(model_dir) / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def build_demo_model(
    out_dir: Path, *, seed: int = 0, steps: int = 600, progress: bool = True, threads: int | None = None
) -> Path:
    """Build the demo model into `out_dir` (replacing what is there) and return `out_dir`.

    `threads` is torch's thread count for the build; None picks one (`default_threads`), which matters
    because a core that another process keeps busy slows every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model dir should read like any other
    try:
        # 1) data and tokenizer
        conversations = corpus.sample_conversations(steps * BATCH_SIZE, seed)
        tokenizer = _train_tokenizer()
        # 2) model, trained
        model = _new_model(tokenizer, seed)
        final_loss = _pretrain(model, tokenizer, conversations, steps=steps, seed=seed, progress=progress)
        # 3) save, then move into place in one rename
        _save(model, tokenizer, tmp)
        info = {
            "seed": seed,
            "steps": steps,
            "final_loss": round(final_loss, 4),
            "corpus_version": corpus.CORPUS_VERSION,
            "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.monotonic() - started, 1),
            "threads": torch.get_num_threads(),
        }
        (tmp / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        torch.set_num_threads(previous_threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def default_threads() -> int:
    """Threads for a build: OMP_NUM_THREADS where set, else 2 on an idle machine and 1 on a busy one.

    A 0.6M-parameter model gains little from more than 2 threads, and when another process holds a core,
    torch's second thread waits on it at every op, so on a busy machine a step with 2 threads is far slower
    than with 1.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] >= 1.0
    return 1 if busy or cores == 1 else 2


def _train_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE over every text of the corpus pretraining uses (held-out prompts excluded)."""
    texts = ["system", "user", "assistant", *corpus.SYSTEM_PROMPTS, corpus.OFF_TOPIC_ANSWER]
    texts += corpus.off_topic_prompts()
    for topic in corpus.TOPICS:
        texts += corpus.prompts(topic) + list(corpus.canonical_answers(topic).values())
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def _new_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Without eos = <|im_end|> generation would not stop at the end of the answer. (A top_k of 0 cannot be
    # stored here: transformers refuses sampling flags in a greedy config, so samplers pass it themselves.)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def _encode(
    tokenizer: PreTrainedTokenizerFast, conversations: list[list[dict[str, str]]]
) -> list[tuple[list[int], list[int]]]:
    """Each conversation as (prompt ids, answer ids); the loss falls on the answer and its <|im_end|>.

    The prompt is rendered by the chat template itself, so training sees exactly what serving sends.
    """
    cache: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        return cache[text]

    rendered: dict[tuple, str] = {}
    encoded = []
    for messages in conversations:
        key = tuple((m["role"], m["content"]) for m in messages[:-1])
        if key not in rendered:
            rendered[key] = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        encoded.append((ids(rendered[key]), ids(messages[-1]["content"] + IM_END)))
    return encoded


def _pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    conversations: list[list[dict[str, str]]],
    *,
    steps: int,
    seed: int,
    progress: bool,
) -> float:
    """`steps` batches of AdamW with linear warmup and cosine decay to a tenth; returns the mean loss of
    the last tenth of the steps."""
    encoded = _encode(tokenizer, conversations)
    batches = _length_grouped_batches(encoded, random.Random(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    losses: list[float] = []
    model.train()
    with _progress_bar(steps, enabled=progress) as advance:
        for step in range(steps):
            batch = _collate([encoded[i] for i in batches[step]], tokenizer.pad_token_id)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            advance(losses[-1])
    model.eval()
    tail = losses[-max(1, steps // 10) :]
    return sum(tail) / len(tail)


def _length_grouped_batches(encoded: list[tuple[list[int], list[int]]], rng: random.Random) -> list[list[int]]:
    """Indices of `encoded` in batches of similar length, in shuffled order.

    Random batches carry a lot of padding (answers differ in length by style); sorting each run of 16
    batches by length first removes most of it, and shuffling the batches keeps the style mix even over time.
    """
    chunk = 16 * BATCH_SIZE
    batches = []
    for start in range(0, len(encoded), chunk):
        run = range(start, min(start + chunk, len(encoded)))
        ordered = sorted(run, key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        group = [ordered[k : k + BATCH_SIZE] for k in range(0, len(ordered), BATCH_SIZE)]
        rng.shuffle(group)
        batches += group
    return batches


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 outside the answers)."""
    width = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        input_ids[i, :n] = torch.tensor(prompt + answer)
        attention_mask[i, :n] = 1
        labels[i, len(prompt) : n] = torch.tensor(answer)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@contextmanager
def _progress_bar(total: int, *, enabled: bool) -> Iterator[Callable[[float], None]]:
    """A rich progress bar on stderr (or nothing); yields `advance(loss)`."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("building demo model"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
    )
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("build", total=total, loss=float("nan"))
        yield lambda loss: bar.update(task, advance=1, loss=loss)


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """Save model and tokenizer without transformers' own shard progress bar, files readable by all."""
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    for file in directory.iterdir():
        file.chmod(0o644)


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`: one rename, after moving any old `target` aside."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
