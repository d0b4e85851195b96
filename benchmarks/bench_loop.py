"""The loop's sample efficiency: how many ratings simulated users need before ratchet serves what they prefer.

    python benchmarks/bench_loop.py                          # seed 0, without and with 10 % flipped ratings
    python benchmarks/bench_loop.py --seeds 0,1,2 --noise 0,0.1 --ratings 300
    python benchmarks/bench_loop.py --methods sft,rft --noise 0   # filtered SFT beside reinforcement (GRPO)
    python benchmarks/bench_loop.py --methods sft,sft:agree,dpo,kto --noise 0.1,0.2   # noisy thumbs
    python benchmarks/bench_loop.py --noise 0 --every 30,20 --seeds 0,1,2   # the loop's rhythm

Each run is a whole `ratchet demo` (deploy/demo.py: server, loop, simulated users who prefer the demo's rare
`tldr` style) in a fresh workspace sharing one demo model. Reported per run: the preference rate before and
after (100 fresh answers to held-out prompts each), quality before and after, promotions, the ratings posted
when the model serving `current` (no canary) first had 80 % of a batch liked, wall time, and the gate's
rejections (how many the judge's win-rate passed: a candidate that learned the judge, not the users). `--methods`
sets RATCHET_LOOP_METHOD per run (auto = filtered SFT on this data; rft = GRPO rewarded by the ratings judge); a
method with `:agree` also sets RATCHET_TRAIN_DROP_DISPUTED (thumbs the other ratings contradict are left out of
training, feedback/agreement.py), one without sets it off. `--raters loose` rates the style marker only (garbled
text carrying it is liked: reward hacking the gate must stop). Writes benchmarks/out/loop.json. The script
times itself; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serving import OUT, free_port  # noqa: E402


def ratings_to(timeline: list[dict], level: float) -> int | None:
    """Ratings posted when a batch answered by a promoted adapter alone (no canary) was `level` liked."""
    for point in timeline:
        if point["current"] != "base" and not point["canary"] and point["liked"] >= level:
            return point["ratings"]
    return None


def gate_tally(store_url: str) -> dict[str, int]:
    """The loop's rejected candidates, and those the judge's win-rate passed but a check that does not ask the
    judge (quality, regression suite, held-out loss) failed: reward hacking the gate caught."""
    from deploy.promotion import decisions
    from feedback.store import FeedbackStore

    with FeedbackStore(store_url) as store:
        loop = [d for d in decisions(store) if d.get("source") == "loop"]
    rejected = [d for d in loop if d["action"] == "reject"]
    fooled = [d for d in rejected if any(reason.startswith("ok: win-rate") for reason in d["reasons"])]
    failed = [f"{d.get('stage')}: {d.get('error')}" for d in loop if d["action"] == "failed"]
    return {"rejected": len(rejected), "judge_fooled": len(fooled), "failed": failed}


def loop_demo_model(given: Path | None) -> Path:
    """The demo model the loop's benchmarks serve: `given`, or one built once under benchmarks/out (600 steps)."""
    from retrain.demo.build import build_demo_model, read_build_info

    OUT.mkdir(parents=True, exist_ok=True)
    model = given or OUT / "models" / "demo-tiny-v1"
    if read_build_info(model) is None:
        build_demo_model(model, seed=0, steps=600, progress=True)
    return model


def place_demo_model(model: Path, home: str | Path) -> None:
    """Copy the demo model into a fresh workspace, where `ratchet init` would have built it."""
    shutil.copytree(model, Path(home) / "models" / "demo-tiny-v1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--noise", default="0,0.1", help="shares of ratings flipped, one run each")
    parser.add_argument(
        "--methods", default="auto", help="loop methods, one run each (auto, sft, dpo, kto, rft; NAME:agree filters)"
    )
    parser.add_argument(
        "--raters", default="careful", help="careful (rate garbled text down), loose (judge the style marker only)"
    )
    parser.add_argument(
        "--every", default="30", help="RATCHET_LOOP_EVERY_RATINGS, one run each (30 is the demo's rhythm)"
    )
    parser.add_argument("--ratings", type=int, default=240)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", type=Path, help="a built demo model dir (default: build one, 600 steps)")
    parser.add_argument("--out", type=Path, default=OUT / "loop.json", help="where the runs are written")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from deploy.demo import run_demo
    from ratchet.settings import Settings

    model = loop_demo_model(args.model)
    runs = []
    plan = [
        (seed, noise, method, raters, every)
        for seed in [int(s) for s in args.seeds.split(",")]
        for noise in [float(n) for n in args.noise.split(",")]
        for raters in args.raters.split(",")
        for method in args.methods.split(",")
        for every in [int(n) for n in args.every.split(",")]
    ]
    for seed, noise, method, raters, every in plan:
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-loop-") as home:
            place_demo_model(model, home)
            name, _, option = method.partition(":")
            settings = Settings(
                home=Path(home),
                port=free_port(),
                loop_method=name,
                train_drop_disputed=option == "agree",
                loop_every_ratings=every,
            )
            result = run_demo(
                settings,
                ratings=args.ratings,
                minutes=args.minutes,
                seed=seed,
                noise=noise,
                careful=raters == "careful",
                say=lambda *_: None,
            )
            gate = gate_tally(settings.store_url)
        run = {
            "method": method,
            "seed": seed,
            "noise": noise,
            "raters": raters,
            "every": every,
            "summary": result.summary(),
            "before": result.before,
            "after": result.after,
            "ratings": result.ratings,
            "promotions": result.promotions,
            "ratings_to_80": ratings_to(result.timeline, 0.8),
            **gate,
            "seconds": round(result.seconds, 1),
        }
        runs.append(run)
        print(
            f"{method} seed {seed} noise {noise:.0%} {raters} raters, every {every}: {run['summary']}; "
            f"80 % liked after {run['ratings_to_80']} ratings; gate: {gate['rejected']} rejected, "
            f"{gate['judge_fooled']} of them with the judge's win-rate passing"
            + (f"; {len(gate['failed'])} rounds FAILED, first: {gate['failed'][0]}" if gate["failed"] else ""),
            flush=True,
        )
        args.out.write_text(json.dumps({"runs": runs}, indent=2))  # after each run: a long plan


if __name__ == "__main__":
    main()
