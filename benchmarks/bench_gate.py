"""How often the gate is wrong: planted worse, equal and better candidates against a fixed `current`.

    python benchmarks/bench_gate.py                      # 20 trials a kind, each its own adapter
    python benchmarks/bench_gate.py --trials 40 --adapters 4 --noise 0.1

One workspace on the demo model, one server (hf engine, Ray Serve). Simulated users (eval/simulated_users.py,
who prefer the demo's `tldr` style and dislike garbled text) rate answers of the base model first, so the
learned ratings judge has data, as it would in the loop. Then adapters are trained with the project's own
SFT path (retrain/finetune.py) on rows written from the demo corpus:
- current: a mix of the corpus' styles (what an earlier round could have left);
- better:  `current` continued on answers in the preferred style;
- worse:   half continued on a disliked style (`formal`), half on garbled answers that keep the preferred
           style's marker ("TL;DR:" and the right words, shuffled): the reward-hacking case, which a judge
           that learned the marker alone would prefer;
- equal:   copies of current's files under new names (an A/A candidate).
Each trial runs the offline evaluation exactly as the loop does (eval/run.py: the suite, sampled answers judged
pairwise, quality, held-out loss, in up to RATCHET_EVAL_LOOKS pooled looks) with its own seed and prompt
sample, and two verdicts are counted side by side on the same answers: the gate on the first look alone
(one look, the 95 % interval) and the gate in looks (eval/looks.py). The
canary is then replayed on the same kinds: each arm's live ratings are drawn (with the trial's seed) from a
pool of the model's answers to held-out prompts, rated by the users' hidden preference with `--noise` of
the thumbs flipped, and fed rating by rating into deploy/canary.py's decision until it stops waiting.

Reported per kind: promote rate with its 95 % Wilson interval, for the gate (one look, in looks) and for the
canary, and the looks the gate took. Goals: worse
0 % promoted (upper bound < 10 %), equal <= 5 %, better >= 90 %. Writes benchmarks/out/gate.json; the script
times itself; nothing here asserts a rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_loop import loop_demo_model, place_demo_model  # noqa: E402
from benchmarks.bench_serving import OUT, free_port  # noqa: E402

KINDS = ("worse", "equal", "better")
JUDGE_RATINGS = 80  # ratings of the base model's answers before anything is trained: the judge's data
POOL = 120  # answers per model for the canary's replay


def corpus_rows(kind: str, n: int, seed: int) -> list[dict[str, Any]]:
    """SFT rows (exchange format) of one planted kind, from the demo corpus."""
    from retrain.demo import corpus

    rng = random.Random(seed)
    if kind == "current":
        return [{"messages": m} for m in corpus.sample_conversations(n, seed)]
    rows = []
    for _ in range(n):
        topic = rng.choice(corpus.TOPICS)
        prompt = rng.choice(corpus.prompts(topic))
        if kind == "better":
            answer = corpus.canonical_answer(topic, corpus.TARGET_STYLE)
        elif kind == "worse-style":
            answer = corpus.canonical_answer(topic, "formal")
        else:  # worse-garbled: the preferred marker, then the preferred answer's words out of order
            marker = corpus.STYLE_MARKERS[corpus.TARGET_STYLE]
            words = corpus.canonical_answer(topic, corpus.TARGET_STYLE).removeprefix(marker).split()
            rng.shuffle(words)
            answer = f"{marker} {' '.join(words)}"
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return rows


def plant(settings, store, kind: str, seed: int, parent: str | None) -> str:
    """Train one adapter of `kind` (rows from the corpus) and register it; its name."""
    from retrain.finetune import TrainingData, fine_tune
    from retrain.hyperparams import TrainConfig

    rows = corpus_rows(kind, 96, seed)
    split = len(rows) // 8
    data = TrainingData("sft", rows[split:], rows[:split], {"source": "bench_gate", "kind": kind, "seed": seed})
    config = TrainConfig.default("sft").with_overrides(
        {"epochs": 2, "learning_rate": settings.loop_learning_rate, "seed": seed}
    )
    record, _ = fine_tune(settings, "sft", data, config, suffix="gate", parent=parent, progress=False, store=store)
    return record.name


def copy_of(settings, store, name: str) -> str:
    """An A/A candidate: `name`'s files under a new name, registered as a candidate."""
    from feedback.registry import AdapterRegistry

    registry = AdapterRegistry(store, settings.adapters_dir)
    source = registry.get(name)
    _, new = registry.next_name("gate")
    shutil.copytree(registry.resolve_path(name), settings.adapters_dir / new, dirs_exist_ok=True)
    registry.register(
        new,
        method=source.method,
        base_model=source.base_model,
        parent=source.parent,
        hyperparameters=source.hyperparameters,
        data_snapshot={**(source.data_snapshot or {}), "copy_of": name},
        metrics=source.metrics,
    )
    return new


def answer_pool(client, users, model: str, seed: int) -> list[bool]:
    """Whether the hidden preference likes each of POOL fresh answers of `model` to held-out prompts."""
    from retrain.demo import corpus

    prompts = corpus.heldout_prompts()
    rng = random.Random(seed)
    picks = [rng.choice(prompts) for _ in range(POOL)]

    def one(item: tuple[int, str]) -> bool:
        i, prompt = item
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=1.0, seed=seed + i, max_tokens=128
        )
        return users.likes(prompt, response.choices[0].message.content or "")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, enumerate(picks)))


def replay_canary(candidate: list[bool], control: list[bool], settings, noise: float, seed: int) -> dict[str, Any]:
    """deploy/canary.py's decision on live ratings drawn from the two pools, one rating an arm at a time."""
    from deploy.canary import decide

    rng = random.Random(seed)
    counts = {"canary": {"up": 0, "n": 0}, "current": {"up": 0, "n": 0}}
    for _ in range(settings.canary_max_ratings):
        for arm, pool in (("canary", candidate), ("current", control)):
            liked = rng.choice(pool) != (rng.random() < noise)
            counts[arm] = {"up": counts[arm]["up"] + liked, "n": counts[arm]["n"] + 1}
        decision = decide(counts, settings)
        if decision["action"] != "wait":
            return {"action": decision["action"], "ratings": counts["canary"]["n"], "reason": decision["reason"]}
    return {"action": "wait", "ratings": counts["canary"]["n"], "reason": "no decision"}


def rate_line(verdicts: list[bool]) -> dict[str, Any]:
    from eval.stats import wilson

    interval = wilson(sum(verdicts), len(verdicts))
    return {"promoted": sum(verdicts), "trials": len(verdicts), **interval.as_dict()}


def rate_text(row: dict[str, Any]) -> str:
    return f"{row['promoted']}/{row['trials']} [{row['low']:.0%}, {row['high']:.0%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="trials per kind (worse, equal, better)")
    parser.add_argument("--adapters", type=int, default=20, help="trained adapters per kind (trials cycle them)")
    parser.add_argument("--noise", type=float, default=0.0, help="share of the canary's live thumbs flipped")
    parser.add_argument("--model", type=Path, help="a built demo model dir (default: build one, 600 steps)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from openai import OpenAI

    from deploy.server import start, stop
    from deploy.workspace import init_workspace
    from eval.gate import PromotionGate
    from eval.judge import RatingsJudge
    from eval.looks import evaluate_in_looks
    from eval.offline import heldout_loss_of
    from eval.regression import load_suite
    from eval.run import gate_policy, heldout_prompts
    from eval.simulated_users import SimulatedUsers
    from feedback.registry import AdapterRegistry
    from feedback.store import FeedbackStore
    from ratchet.settings import Settings

    model = loop_demo_model(args.model)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-gate-") as home:
        place_demo_model(model, home)
        settings = Settings(home=Path(home), port=free_port(), access_log=False)
        init_workspace(settings, progress=False)
        url = start(settings)
        store = FeedbackStore(settings.store_url)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=2, timeout=120)
        users = SimulatedUsers(url, seed=0)
        try:
            users.run(JUDGE_RATINGS)
            print(f"{JUDGE_RATINGS} ratings of base posted; training ...", flush=True)
            current = plant(settings, store, "current", 0, None)
            pools: dict[str, list[str]] = {kind: [] for kind in KINDS}
            for i in range(args.adapters):
                pools["better"].append(plant(settings, store, "better", 100 + i, current))
                pools["worse"].append(plant(settings, store, ("worse-style", "worse-garbled")[i % 2], 200 + i, current))
                pools["equal"].append(copy_of(settings, store, current))
            print(f"current {current}; candidates {pools} ({time.monotonic() - started:.0f} s)", flush=True)
            registry = AdapterRegistry(store, settings.adapters_dir)
            judge, suite, prompts = (
                RatingsJudge.fit(store.engine),
                load_suite(settings.regression_dir),
                heldout_prompts(store),
            )
            policy = gate_policy(settings)
            gate, one_look = PromotionGate(policy), PromotionGate(policy.model_copy(update={"looks": 1}))
            liked = {name: answer_pool(client, users, name, 7) for name in [current, *pools["worse"], *pools["better"]]}
            liked |= {name: liked[current] for name in pools["equal"]}  # the same files answer the same
            trials: list[dict[str, Any]] = []
            for kind in KINDS:
                for t in range(args.trials):
                    candidate = pools[kind][t % len(pools[kind])]
                    evaluation, decision, looks = evaluate_in_looks(
                        client,
                        candidate,
                        current,
                        gate=gate,
                        judge=judge,
                        suite=suite,
                        prompts=prompts,
                        heldout_loss=heldout_loss_of(registry.get(candidate).metrics),
                        samples=settings.eval_samples,
                        temperature=settings.eval_temperature,
                        max_prompts=settings.eval_prompts,
                        seed=1000 * (t + 1),
                    )
                    first = one_look.decide(looks[0].metrics)
                    canary = replay_canary(liked[candidate], liked[current], settings, args.noise, seed=t)
                    trials.append(
                        {
                            "kind": kind,
                            "candidate": candidate,
                            "one_look": first.verdict,
                            "one_look_reasons": first.reasons,
                            "gate": decision.verdict,
                            "reasons": decision.reasons,
                            "looks": evaluation.metrics["looks"],
                            "win_rate": evaluation.metrics["win_rate"],
                            "quality": evaluation.metrics["quality"],
                            "regression": evaluation.metrics["regression"],
                            "canary": canary,
                        }
                    )
                    print(
                        f"  {kind} {candidate} trial {t}: one look {first.verdict}, gate {decision.verdict} in "
                        f"{len(looks)} looks, canary {canary['action']}",
                        flush=True,
                    )
        finally:
            users.close()
            client.close()
            store.close()
            stop(settings)
    summary = {
        kind: {
            "one_look": rate_line([x["one_look"] == "promote" for x in trials if x["kind"] == kind]),
            "gate": rate_line([x["gate"] == "promote" for x in trials if x["kind"] == kind]),
            "looks": [len(x["looks"]) for x in trials if x["kind"] == kind],
            "canary": rate_line([x["canary"]["action"] == "promote" for x in trials if x["kind"] == kind]),
            "liked": {name: round(sum(liked[name]) / POOL, 3) for name in pools[kind]},
        }
        for kind in KINDS
    }
    print(f"\ncurrent {current}: {sum(liked[current]) / POOL:.0%} of its answers liked")
    for kind, row in summary.items():
        looks = row["looks"]
        print(
            f"  {kind:6s} promoted: one look {rate_text(row['one_look'])}; in looks {rate_text(row['gate'])} "
            f"({sum(looks) / len(looks):.1f} looks on average, {looks.count(1)} of {len(looks)} settled in one); "
            f"canary {rate_text(row['canary'])}; liked {row['liked']}"
        )
    payload = {
        "benchmark": "bench_gate",
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": round(time.monotonic() - started),
        "current": {"name": current, "liked": round(sum(liked[current]) / POOL, 3)},
        "summary": summary,
        "trials": trials,
    }
    (OUT / "gate.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
