"""Reinforcement fine-tuning on the demo model: the reward curve of a run, and what each grader kind costs.

    python benchmarks/bench_rft.py [--model DIR] [--threads 2] [--seed 0]

1) A GRPO run (retrain.trainers.train("rft"), ratchet's default RFT hyperparameters) on the demo corpus's
   training prompts (20 topics x 2 phrasings) with a string_check grader that passes answers containing
   the rare style's marker "TL;DR:", evaluated on one held-out phrasing per topic; GRPO's own evaluation
   samples num_generations answers per held-out prompt at temperature 1. Prints the held-out reward at
   the start and the end, steps and seconds; writes the run's metrics.csv and loss.png (the reward
   curve) under benchmarks/out/rft/.
2) Grading cost: 32 answers graded by each grader kind (string_check, text_similarity rouge_l and bleu,
   python, multi), median of 5 batches; the python grader pays for its sandboxed subprocess per batch.
Writes benchmarks/out/rft.json. The script times itself; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serving import OUT  # noqa: E402

MARKER_GRADER = {"type": "string_check", "name": "tldr", "input": "{{ sample.output_text }}",
                 "reference": "{{ item.reference_answer }}", "operation": "like"}  # fmt: skip
PYTHON_GRADER = {"type": "python", "name": "length", "source": "def grade(sample, item):\n"
                 "    return min(1.0, len(sample['output_text'].split()) / 30)\n"}  # fmt: skip


def graders() -> dict[str, dict]:
    similarity = {"type": "text_similarity", "name": "sim", "input": "{{ sample.output_text }}",
                  "reference": "{{ item.canonical }}"}  # fmt: skip
    return {
        "string_check": MARKER_GRADER,
        "text_similarity rouge_l": {**similarity, "evaluation_metric": "rouge_l"},
        "text_similarity bleu": {**similarity, "evaluation_metric": "bleu"},
        "python": PYTHON_GRADER,
        "multi (string_check + python)": {"type": "multi", "name": "both", "calculate_output": "0.7 * a + 0.3 * b",
                                          "graders": {"a": MARKER_GRADER, "b": PYTHON_GRADER}},
    }  # fmt: skip


def grading_cost(corpus) -> dict[str, float]:
    from retrain.graders import parse_grader
    from retrain.grading import GradingContext, grade_batch

    topics = corpus.TOPICS[:8]
    answers = [corpus.canonical_answer(t, style) for t in topics for style in corpus.STYLES[:4]]
    items = [{"reference_answer": "TL;DR:", "canonical": corpus.canonical_answer(t, "tldr")} for t in topics] * 4
    context = GradingContext(judge_url="http://127.0.0.1:9/v1")
    costs = {}
    for name, spec in graders().items():
        grader = parse_grader(spec)
        grade_batch(grader, answers, items, context)  # imports and caches out of the timing
        times = []
        for _ in range(5):
            started = time.perf_counter()
            grade_batch(grader, answers, items, context)
            times.append(time.perf_counter() - started)
        costs[name] = statistics.median(times) * 1000
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a built demo model dir (default: build one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from retrain.demo import corpus
    from retrain.demo.build import build_demo_model, read_build_info
    from retrain.graders import parse_grader
    from retrain.grading import GradingContext, training_reward
    from retrain.hyperparams import Resources, RFTHyperparameters
    from retrain.runs import read_metrics
    from retrain.trainers import train

    OUT.mkdir(parents=True, exist_ok=True)
    model = args.model or OUT / "models" / "demo-tiny-v1"
    if read_build_info(model) is None:
        build_demo_model(model, seed=0, steps=600, progress=True)

    def rows(prompts: list[str]) -> list[dict]:
        return [{"messages": [{"role": "user", "content": p}], "reference_answer": "TL;DR:"} for p in prompts]

    train_rows = rows([p for topic in corpus.TOPICS for p in corpus.prompts(topic)[:2]])
    heldout_rows = rows([corpus.heldout_prompts(topic)[0] for topic in corpus.TOPICS])
    reward = training_reward(parse_grader(MARKER_GRADER), GradingContext(judge_url="http://127.0.0.1:9/v1"))
    run_dir = OUT / "rft"
    result = train(
        "rft",
        base_model_path=model,
        train_rows=train_rows,
        eval_rows=heldout_rows,
        hyperparams=RFTHyperparameters(seed=args.seed),
        out_dir=run_dir / "adapter",
        run_dir=run_dir,
        resources=Resources(torch_threads=args.threads),
        reward=reward,
    )
    evals = [row for row in read_metrics(run_dir) if row["split"] == "eval"]
    summary = {
        "heldout_reward_start": result.metrics.get("eval_reward_start"),
        "heldout_reward_end": evals[-1]["reward"] if evals else None,
        "steps": result.metrics["steps"],
        "seconds": result.metrics["seconds"],
        "hyperparameters": result.hyperparameters,
        "plot": str(run_dir / "loss.png"),
        "grading_ms_per_32_answers": grading_cost(corpus),
    }
    print(
        f"RFT on the demo model: held-out reward {summary['heldout_reward_start']:.2f} -> "
        f"{summary['heldout_reward_end']:.2f} in {summary['steps']} steps, {summary['seconds']:.0f} s "
        f"({args.threads} threads); reward curve: {summary['plot']}"
    )
    print("grading 32 answers (median of 5):")
    for name, ms in summary["grading_ms_per_32_answers"].items():
        print(f"  {name:32s} {ms:8.1f} ms")
    (OUT / "rft.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
