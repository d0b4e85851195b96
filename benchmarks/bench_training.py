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

from benchmarks.plain_training import Clock, run_plain  # noqa: E402
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

    clock = Clock()

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
