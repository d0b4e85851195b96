"""Training throughput (tokens/s) per method: ratchet's trainer vs a plain PEFT loop, side by side in one run.

    python benchmarks/bench_training.py [--rows 96] [--epochs 2] [--batch-size 8] [--repeats 3] [--threads 1]
    python benchmarks/bench_training.py --methods sft --model DIR

For each method (SFT, DPO, KTO) the same rows from the demo corpus (retrain/demo/corpus.py: canonical
answers; SFT teaches the "tldr" answer, DPO prefers it over "plain", KTO labels tldr desirable and plain
not) are trained by each system below, taking turns at going first in each repeat so that drift in the
machine's load hits all alike:
- ratchet: `retrain.trainers.train(...)`, the public entry point (TRL SFTTrainer / DPOTrainer / KTOTrainer
  on a fresh LoRA adapter, `ref_model=None`), with ratchet's default hyperparameters for the method;
- plain:   a hand-written torch loop over PEFT with the same base model, LoRA config (r, alpha, dropout,
  target modules), rows tokenized with the same chat template, epochs, batch size, learning rate,
  optimizer (fused AdamW, no weight decay), linear decay, gradient clipping at 1.0, and the same loss:
  answer-token cross-entropy for SFT; for DPO the sigmoid loss plus ratchet's SFT term on the chosen
  answer; for KTO the KTO loss with TRL's KL estimate (completions rotated by one inside a batch). The
  reference of DPO / KTO is the adapter-disabled base on both sides;
- plain+ckpt: the same plain loop with gradient checkpointing on, as TRL's configs default to
  (`gradient_checkpointing=True`, use_reentrant=False) and ratchet leaves it: it tells how much of the
  gap is that recomputation and how much is the rest of the Trainer.

Tokens are counted the same way for every system, as TRL's `num_tokens` does: non-padding tokens of the
training sequences (prompt + answer; chosen and rejected both for DPO; for KTO the matched sequences only,
not the KL ones, although both sides also run those). Three rates per run:
- loop:  tokens of steps 2..N / time from the end of step 1 to the end of step N (the training loop in
  steady state: no model load, no dataset preparation, no first-step warm-up);
- loop per CPU-second: the same tokens / the process CPU time over those steps (one thread, so this is
  the work done, far less sensitive than the clock to other processes on a shared machine);
- wall:  all tokens / the whole call, model load, tokenization, trainer set-up and adapter save included.
Threads: one torch thread by default, as ratchet's training jobs run (they also run at nice 10, which
changes only how they share the CPU with other processes, so it is left out here).

Prints a table (medians over repeats, ratio spread) and writes benchmarks/out/training.json. The script
times itself; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from retrain.demo import corpus  # noqa: E402
from retrain.hyperparams import HYPERPARAMETERS, METHODS, Hyperparameters, Resources  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DEMO_STEPS = 300


# -- model and data ----------------------------------------------------------------------------------


def demo_model(root: Path) -> Path:
    """The demo model built with `DEMO_STEPS` pretraining steps, cached under benchmarks/out/models/."""
    from retrain.demo.build import build_demo_model, read_build_info

    path = root / f"demo-tiny-v1-{DEMO_STEPS}"
    info = read_build_info(path)
    if info is None or info.get("steps") != DEMO_STEPS:
        print(f"building the demo model ({DEMO_STEPS} steps) into {path} ...", file=sys.stderr, flush=True)
        build_demo_model(path, seed=0, steps=DEMO_STEPS, progress=False)
    return path


def make_rows(method: str, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` exchange-format rows of `method` (what `train()` takes), the same list for the same seed."""
    prompts = [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        for topic in corpus.TOPICS
        for prompt in corpus.prompts(topic)
        for system in (None, *corpus.SYSTEM_PROMPTS)
    ]
    topics = [topic for topic in corpus.TOPICS for _ in corpus.prompts(topic) for _ in range(4)]
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    rows = []
    for i in range(n):
        j = order[i % len(order)]
        prompt, topic = prompts[j], topics[j]
        good = [{"role": "assistant", "content": corpus.canonical_answer(topic, corpus.TARGET_STYLE)}]
        bad = [{"role": "assistant", "content": corpus.canonical_answer(topic, "plain")}]
        if method == "sft":
            rows.append({"messages": prompt + good})
        elif method == "dpo":
            rows.append({"input": {"messages": prompt}, "preferred_output": good, "non_preferred_output": bad})
        else:  # alternate labels so every KTO batch holds both kinds
            rows.append({"prompt": prompt, "completion": good if i % 2 == 0 else bad, "label": i % 2 == 0})
    return rows


def hyperparameters(method: str, args: argparse.Namespace, n_rows: int, n_parameters: int) -> Hyperparameters:
    """ratchet's defaults for `method` with the benchmark's epochs and batch size; every "auto" resolved."""
    hp = HYPERPARAMETERS[method](epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    return hp.resolve(n_rows, n_parameters)


# -- ratchet's trainer -------------------------------------------------------------------------------


def run_ratchet(method: str, model_dir: Path, rows: list[dict], hp: Hyperparameters, threads: int) -> dict:
    from retrain.trainers import train

    clock = _Clock()

    def on_metrics(row: dict[str, Any]) -> None:
        if row.get("split") == "train" and "num_tokens" in row:
            clock.step(int(row["num_tokens"]), row["loss"])

    with tempfile.TemporaryDirectory(prefix="bench-ratchet-") as out_dir:
        start = time.perf_counter()
        train(
            method,
            base_model_path=model_dir,
            train_rows=rows,
            hyperparams=hp,
            out_dir=out_dir,
            resources=Resources(device="cpu", torch_threads=threads),
            progress=False,
            on_metrics=on_metrics,
        )
        wall = time.perf_counter() - start
    return clock.result(wall)


# -- the plain PEFT loop -----------------------------------------------------------------------------


def run_plain(
    method: str, model_dir: Path, rows: list[dict], hp: Hyperparameters, threads: int, checkpointing: bool = False
) -> dict:
    """Load, tokenize, train and save with torch + PEFT only; same data, schedule and loss as ratchet."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.trainers import lora_config, to_trl_rows

    clock = _Clock()
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


class _Clock:
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


# -- main --------------------------------------------------------------------------------------------

SYSTEMS: dict[str, Callable[..., dict]] = {
    "ratchet": run_ratchet,
    "plain": run_plain,
    "plain+ckpt": functools.partial(run_plain, checkpointing=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: sft,dpo,kto")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: " + ",".join(SYSTEMS))
    parser.add_argument("--rows", type=int, default=96, help="training rows per method (DPO: pairs)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each system per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (ratchet trains with 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="a model dir (default: the demo model)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}: pick from {', '.join(METHODS)}")
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown system(s) {', '.join(sorted(unknown))}: pick from {', '.join(SYSTEMS)}")

    # 0) the model, and the heavy imports done once, outside every timed call
    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or demo_model(OUT / "models")
    started = time.perf_counter()
    import datasets  # noqa: F401
    import peft
    import torch
    import trl
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    imports_s = time.perf_counter() - started
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    n_parameters = AutoModelForCausalLM.from_pretrained(model_dir).num_parameters()
    # 1) one untimed tiny run of each system, so the first timed one pays no first-call costs
    warm_rows = make_rows("sft", 2 * args.batch_size, args.seed)
    warm_hp = hyperparameters("sft", argparse.Namespace(**{**vars(args), "epochs": 1}), len(warm_rows), n_parameters)
    for system in systems:
        SYSTEMS[system]("sft", model_dir, warm_rows, warm_hp, args.threads)

    # 2) each method, the systems taking turns at going first so that drift in the load hits all alike
    results: dict[str, dict] = {}
    for method in methods:
        rows = make_rows(method, args.rows, args.seed)
        hp = hyperparameters(method, args, len(rows), n_parameters)
        runs: dict[str, list[dict]] = {system: [] for system in systems}
        for repeat in range(args.repeats):
            shift = repeat % len(systems)
            for system in systems[shift:] + systems[:shift]:
                print(f"[{method}] {system} run {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                runs[system].append(SYSTEMS[system](method, model_dir, rows, hp, args.threads))
                gc.collect()
        results[method] = summarise(runs) | {"hyperparameters": hp.record(), "runs": runs}

    report(results, systems, args)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }
    (OUT / "training.json").write_text(
        json.dumps(
            {
                "benchmark": "bench_training",
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "model": str(model_dir),
                "model_parameters": n_parameters,
                "imports_s": round(imports_s, 2),
                "machine": machine,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {OUT / 'training.json'}", file=sys.stderr)


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per system, and ratchet's rate over each other system's, repeat by repeat (they ran side by
    side), as a median and the range."""
    median = {
        system: {key: statistics.median(run[key] for run in system_runs) for key in system_runs[0]}
        for system, system_runs in runs.items()
    }
    ratios: dict[str, dict] = {}
    for other in runs.keys() - {"ratchet"} if "ratchet" in runs else ():
        pairs = list(zip(runs["ratchet"], runs[other], strict=True))
        ratios[other] = {"same_tokens": all(r["tokens"] == o["tokens"] for r, o in pairs)}
        for rate in ("loop_tokens_per_s", "loop_tokens_per_cpu_s", "wall_tokens_per_s"):
            each = [r[rate] / o[rate] for r, o in pairs]
            ratios[other][rate] = {"median": round(statistics.median(each), 3), "each": [round(x, 3) for x in each]}
    return {"median": median, "ratchet_over": ratios}


def report(results: dict, systems: list[str], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"training throughput, median of {args.repeats}: {args.rows} rows x {args.epochs} epochs, batch "
            f"{args.batch_size}, {args.threads} thread(s); ratchet / system per repeat, median (range)"
        )
    )
    columns = ("method", "system", "tokens", "loop tok/s", "loop tok/CPU-s", "wall s", "mean loss")
    for column in (*columns, "ratchet / this, loop", "ratchet / this, CPU"):
        table.add_column(column, justify="left" if column in ("method", "system") else "right")
    for method, result in results.items():
        for system in systems:
            run = result["median"][system]
            ratios = result["ratchet_over"].get(system)
            cells = ["", ""]
            if ratios is not None:
                cells = [_ratio(ratios[rate]) for rate in ("loop_tokens_per_s", "loop_tokens_per_cpu_s")]
                if not ratios["same_tokens"]:
                    cells[0] += " (tokens differ!)"
            table.add_row(
                method,
                system,
                f"{run['tokens']:,.0f}",
                f"{run['loop_tokens_per_s']:,.0f}",
                f"{run['loop_tokens_per_cpu_s']:,.0f}",
                f"{run['wall_s']:.1f}",
                f"{run['mean_loss']:.4f}",
                *cells,
            )
        table.add_section()
    Console(width=max(150, Console().width)).print(table)


def _ratio(ratio: dict) -> str:
    return f"{ratio['median']:.2f}x ({min(ratio['each']):.2f}-{max(ratio['each']):.2f})"


if __name__ == "__main__":
    main()
