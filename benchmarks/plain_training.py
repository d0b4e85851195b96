"""The baseline of benchmarks/bench_training.py: the same training as ratchet's, written by hand with torch and
PEFT only (same data, LoRA config, schedule and loss), and the clock both systems are timed with."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from retrain.hyperparams import Hyperparameters

# -- the plain PEFT loop -----------------------------------------------------------------------------


def run_plain(
    method: str, model_dir: Path, rows: list[dict], hp: Hyperparameters, threads: int, checkpointing: bool = False
) -> dict:
    """Load, tokenize, train and save with torch + PEFT only; same data, schedule and loss as ratchet."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.trainers import lora_config, to_trl_rows

    clock = Clock()
    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(hp.seed)
    # 1) model, tokenizer and the same conversations TRL gets, tokenized with the chat template
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [_encode(tokenizer, row, hp.max_length) for row in to_trl_rows(method, rows)]
    # 2) the same LoRA adapter ratchet asks TRL for
    lora = lora_config(hp)
    if checkpointing:  # what TRL's Trainer does with gradient_checkpointing=True
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # 3) transformers' defaults: fused AdamW, no weight decay, linear decay to 0, clip at 1.0
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0, fused=True)
    steps_per_epoch = -(-len(examples) // hp.batch_size)
    total_steps = steps_per_epoch * hp.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps))
    generator = torch.Generator().manual_seed(hp.seed)
    loss_of = {"sft": _sft_loss, "dpo": _dpo_loss, "kto": _kto_loss}[method]
    tokens = 0
    # 4) the loop (KTO keeps the data order, as TRL's KTOTrainer must for its KL pairs)
    for _ in range(hp.epochs):
        n = len(examples)
        order = list(range(n)) if method == "kto" else torch.randperm(n, generator=generator).tolist()
        for first in range(0, n, hp.batch_size):
            batch = [examples[i] for i in order[first : first + hp.batch_size]]
            loss, batch_tokens = loss_of(model, batch, hp, pad_id)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += batch_tokens
            clock.step(tokens, loss.item())  # the Trainer reads the loss every step too (logging_steps=1)
    # 5) save the adapter, as ratchet does
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as out_dir:
        model.save_pretrained(out_dir, safe_serialization=True)
    return clock.result(time.perf_counter() - start)


def _encode(tokenizer, row: dict[str, Any], max_length: int) -> dict[str, Any]:
    """Token ids of a TRL conversational row: the prompt, and each answer (completion / chosen / rejected)."""

    def ids(messages: list[dict], **kwargs: Any) -> list[int]:
        return list(tokenizer.apply_chat_template(messages, return_dict=True, **kwargs)["input_ids"])

    prompt = ids(row["prompt"], add_generation_prompt=True)
    answers = {}
    for key in ("completion", "chosen", "rejected"):
        if key in row:
            full = ids(row["prompt"] + row[key])[:max_length]
            answers[key] = full[len(prompt) :]
    return {"prompt": prompt, **answers, "label": row.get("label")}


def _collate(sequences: list[tuple[list[int], list[int]]], pad_id: int):
    """(prompt, answer) id lists as right-padded input_ids, attention_mask and answer mask; and the tokens."""
    import torch

    width = max(len(p) + len(a) for p, a in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    answer = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (p, a) in enumerate(sequences):
        input_ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        attention[i, : len(p) + len(a)] = 1
        answer[i, len(p) : len(p) + len(a)] = 1
    return input_ids, attention, answer, int(attention.sum())


def _token_logps(model, input_ids, attention, answer):
    """Per-token log-probabilities of the next token, and the mask of answer positions (shifted by one)."""
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits[:, :-1]
    logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logps, answer[:, 1:].to(logps.dtype)


def _sft_loss(model, batch, hp, pad_id):
    input_ids, attention, answer, tokens = _collate([(e["prompt"], e["completion"]) for e in batch], pad_id)
    logps, mask = _token_logps(model, input_ids, attention, answer)
    return -(logps * mask).sum() / mask.sum().clamp(min=1), tokens


def _dpo_loss(model, batch, hp, pad_id):
    import torch
    import torch.nn.functional as F

    sequences = [(e["prompt"], e["chosen"]) for e in batch] + [(e["prompt"], e["rejected"]) for e in batch]
    input_ids, attention, answer, tokens = _collate(sequences, pad_id)
    logps, mask = _token_logps(model, input_ids, attention, answer)
    with torch.no_grad(), model.disable_adapter():
        ref_logps, _ = _token_logps(model, input_ids, attention, answer)
    policy, ref = (logps * mask).sum(-1), (ref_logps * mask).sum(-1)
    (chosen, rejected), (ref_chosen, ref_rejected) = policy.chunk(2), ref.chunk(2)
    loss = -F.logsigmoid(hp.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
    if hp.sft_weight > 0:  # ratchet's default DPO adds an SFT term on the chosen answer
        chosen_logps, chosen_mask = logps.chunk(2)[0], mask.chunk(2)[0]
        loss = loss + hp.sft_weight * -(chosen_logps * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
    return loss, tokens


def _kto_loss(model, batch, hp, pad_id):
    import torch

    answers = [e["completion"] for e in batch]
    matched = list(zip([e["prompt"] for e in batch], answers, strict=True))
    mismatched = list(zip([e["prompt"] for e in batch], answers[-1:] + answers[:-1], strict=True))  # TRL's KL pairs
    input_ids, attention, answer, tokens = _collate(matched, pad_id)
    kl_ids, kl_attention, kl_answer, _ = _collate(mismatched, pad_id)

    def sums(ids, att, ans):
        logps, mask = _token_logps(model, ids, att, ans)
        return (logps * mask).sum(-1)

    with torch.no_grad():
        kl_policy = sums(kl_ids, kl_attention, kl_answer)
    policy = sums(input_ids, attention, answer)
    with torch.no_grad(), model.disable_adapter():
        kl_ref = sums(kl_ids, kl_attention, kl_answer)
        ref = sums(input_ids, attention, answer)
    kl = (kl_policy - kl_ref).mean().clamp(min=0)
    ratios = policy - ref
    label = torch.tensor([bool(e["label"]) for e in batch])
    chosen = 1 - torch.sigmoid(hp.beta * (ratios[label] - kl))
    rejected = 1 - torch.sigmoid(hp.beta * (kl - ratios[~label]))
    losses = torch.cat((hp.desirable_weight * chosen, hp.undesirable_weight * rejected))
    return losses.nanmean(), tokens


# -- timing ------------------------------------------------------------------------------------------


class Clock:
    """perf_counter and process CPU time at the end of every step, with the tokens so far (and the loss, to
    check that the systems train the same thing); loop and wall rates from them."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int]] = []
        self.losses: list[float] = []

    def step(self, cumulative_tokens: int, loss: float) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), cumulative_tokens))
        self.losses.append(float(loss))

    def result(self, wall: float) -> dict:
        if len(self.marks) < 2:
            raise RuntimeError("fewer than 2 steps timed: raise --rows or --epochs")
        (t1, cpu1, tokens1), (tn, cpun, tokens_n) = self.marks[0], self.marks[-1]
        return {
            "steps": len(self.marks),
            "tokens": tokens_n,
            "loop_s": round(tn - t1, 4),
            "loop_tokens_per_s": round((tokens_n - tokens1) / (tn - t1), 1),
            "loop_cpu_s": round(cpun - cpu1, 4),
            "loop_tokens_per_cpu_s": round((tokens_n - tokens1) / (cpun - cpu1), 1),
            "wall_s": round(wall, 3),
            "wall_tokens_per_s": round(tokens_n / wall, 1),
            "mean_loss": round(statistics.fmean(self.losses), 4),
            "last_loss": round(self.losses[-1], 4),
        }
