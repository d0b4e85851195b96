"""One decode step of the hf engine's model call, with and without its two CPU speed-ups, side by side.

    python benchmarks/bench_decode_step.py                  # the 30M random Llama and the demo model
    python benchmarks/bench_decode_step.py --models random-30m --rows 1,16,32

For each model and each row count (running sequences), the milliseconds of one decode step (a forward of
one new token per row over a KV cache of --context positions, float32, --threads torch threads) for:

- `transformers`  DynamicCache (concatenates the whole cache every step) and plain `nn.Linear`
- `slab`          the engine's in-place cache (`serving.engines.hf.batch.SlabLayer`)
- `slab+packed`   that, plus MKL-packed weights (`serving.engines.hf.packed_linear`) for --pack-rows rows

Variants are interleaved, repeated --repeats times, and the best time of each is kept. The ratios
(transformers / variant) are what to read: they are measured in the same run. Row 1 is what the naive
`generate` loop of bench_serving.py pays per token. Writes benchmarks/out/decode_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import OUT, demo_model, random_30m_model  # noqa: E402

VARIANTS = ("transformers", "slab", "slab+packed")


def load(model_dir: Path, variant: str, pack_rows: int) -> tuple:
    """The model, and how many of its Linear layers were packed (as the engine packs: where it is faster)."""
    from transformers import AutoModelForCausalLM

    from serving.engines.hf.packed_linear import pack_linears

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    packed = pack_linears(model, pack_rows) if variant == "slab+packed" else 0
    return model, packed


def step_ms(model, variant: str, rows: int, context: int, steps: int) -> float:
    from transformers import DynamicCache

    from serving.engines.hf.batch import new_cache

    cache = DynamicCache() if variant == "transformers" else new_cache()
    with torch.inference_mode():
        ids = torch.randint(5, model.config.vocab_size, (rows, context))
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="random-30m,demo")
    parser.add_argument("--rows", default="1,8,16,24,32")
    parser.add_argument("--context", type=int, default=24, help="prompt positions in the cache before decoding")
    parser.add_argument("--steps", type=int, default=48, help="decode steps timed per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pack-rows", type=int, default=32, help="the engine packs for max_batch_size rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = OUT / "models"
    root.mkdir(parents=True, exist_ok=True)
    paths = {"demo": demo_model(root)}
    if "random-30m" in args.models:
        paths["random-30m"] = random_30m_model(root, paths["demo"])
    row_counts = [int(r) for r in args.rows.split(",")]

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    results: dict = {}
    for name in args.models.split(","):
        loaded = {v: load(paths[name], v, args.pack_rows) for v in VARIANTS}
        models = {v: model for v, (model, _) in loaded.items()}
        packed = loaded["slab+packed"][1]
        linears = sum(isinstance(m, torch.nn.Linear) for m in models["slab"].modules())
        best: dict = {v: {r: float("inf") for r in row_counts} for v in VARIANTS}
        for variant in VARIANTS:  # warm-up: first calls allocate
            step_ms(models[variant], variant, row_counts[-1], args.context, 4)
        work = [(r, v) for _ in range(args.repeats) for r in row_counts for v in VARIANTS]
        for rows, variant in track(work, description=f"{name}: decode steps"):
            ms = step_ms(models[variant], variant, rows, args.context, args.steps)
            best[variant][rows] = min(best[variant][rows], ms)
        results[name] = {
            v: {str(r): {"ms": round(best[v][r], 2), "vs_transformers": round(best["transformers"][r] / best[v][r], 2)}
                for r in row_counts}
            for v in VARIANTS
        }  # fmt: skip
        results[name]["packed_layers"] = f"{packed} of {linears}"

    table = Table(title=f"decode step, ms (× transformers), {args.threads} threads, packed for {args.pack_rows} rows")
    table.add_column("model")
    table.add_column("variant")
    for r in row_counts:
        table.add_column(f"{r} rows", justify="right")
    for name, variants in results.items():
        print(f"{name}: packed {variants['packed_layers']} Linear layers (the ones where packing is faster)")
        for variant in VARIANTS:
            by_rows = variants[variant]
            cells = [f"{c['ms']:.1f} ({c['vs_transformers']:.2f}×)" for c in by_rows.values()]
            table.add_row(name, variant, *cells)
    Console(width=150).print(table)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    OUT.mkdir(exist_ok=True)
    record = {"benchmark": "bench_decode_step", "args": vars(args), "machine": machine, "results": results}
    (OUT / "decode_step.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
