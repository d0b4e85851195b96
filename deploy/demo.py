"""`ratchet demo`: simulated users with a hidden preference teach the demo model, with no human step.

1) init the workspace (the demo model is built on first use), start the server and the loop;
2) measure the preference rate and quality of `current` on fresh answers to held-out prompts;
3) simulated users chat and rate in small batches; while the loop trains or evaluates they wait (the demo
   measures how many ratings learning takes, not how fast users type), during a canary they keep rating
   (the canary needs live ratings);
4) at the rating budget or the time cap (`--minutes` covers all of it, init and the last measurement
   included) measure again, write a report with the preference rate over time and each promotion
   marked, and return the numbers of the summary line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ratchet.settings import Settings

# What the demo turns, for a small model and a few hundred ratings (a real service keeps the defaults).
DEMO_SETTINGS: dict[str, Any] = {
    "access_log": False,  # the progress lines are the demo's output
    "loop_every_ratings": 30,
    "loop_every_minutes": 0.0,
    "loop_poll_seconds": 0.5,
    "canary_fraction": 0.5,
    "canary_min_ratings": 10,
    "canary_max_ratings": 30,
    "canary_margin": 0.2,
    "eval_prompts": 30,
    "eval_samples": 4,
    "gate_min_pairs": 10,
}
BATCH = 10  # ratings between two looks at the loop
FINAL_RESERVE_SECONDS = 40.0  # kept for the last measurement and the report
MEASURE_SAMPLES = 100


@dataclass
class DemoResult:
    before: dict[str, float]
    after: dict[str, float]
    ratings: int
    promotions: int
    seconds: float
    report: Path | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        minutes, seconds = divmod(int(round(self.seconds)), 60)
        return (
            f"preference: {self.before['preference']:.0%} -> {self.after['preference']:.0%} after {self.ratings} "
            f"ratings, quality {self.before['quality']:.0%} -> {self.after['quality']:.0%}, {self.promotions} "
            f"promotions, {minutes}m{seconds}s"
        )


def _serving_name(status: dict[str, Any]) -> str:
    return status.get("current") or "base"


def demo_settings(settings: Settings) -> Settings:
    """The demo's rhythm over `settings`, except where a setting was given (a flag, the environment): that wins."""
    given = settings.model_fields_set
    return settings.model_copy(update={key: value for key, value in DEMO_SETTINGS.items() if key not in given})


def run_demo(
    settings: Settings,
    *,
    ratings: int,
    minutes: float,
    seed: int,
    noise: float = 0.0,
    careful: bool = True,
    say=print,
) -> DemoResult:
    from deploy import server
    from deploy.loop import ImprovementLoop
    from deploy.workspace import init_workspace, read_admin_key
    from eval.simulated_users import SimulatedUsers

    started = time.monotonic()
    deadline = started + minutes * 60
    settings = demo_settings(settings)
    # 1) workspace, server, loop
    init_workspace(settings)
    say(f"starting the server ({settings.engine} engine, base {settings.base_model_id}) ...")
    url = server.start(settings)
    admin_key = read_admin_key(settings)
    users = SimulatedUsers(url, admin_key, noise=noise, careful=careful, seed=seed)
    loop = ImprovementLoop(settings, url, admin_key)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,), name="ratchet-loop", daemon=True)
    try:
        # 2) before
        before = users.measure(_serving_name(loop.admin.status()), MEASURE_SAMPLES)
        say(f"before: preference {before['preference']:.0%}, quality {before['quality']:.0%}")
        thread.start()
        # 3) users rate in batches; they wait while a round trains or evaluates
        posted, timeline = 0, []
        while posted < ratings and time.monotonic() < deadline - FINAL_RESERVE_SECONDS:
            state = (loop.store.get_state("loop") or {}).get("state")
            if state in ("training", "evaluating"):
                time.sleep(0.5)
                continue
            start = len(users.history)
            posted += users.run(min(BATCH, ratings - posted), deadline=deadline - FINAL_RESERVE_SECONDS)
            window = users.history[start:]
            status = loop.admin.status()
            point = {
                "seconds": round(time.monotonic() - started, 1),
                "ratings": posted,
                "liked": sum(r.liked for r in window) / max(1, len(window)),
                "current": _serving_name(status),
                "canary": (status.get("canary") or {}).get("adapter"),
            }
            timeline.append(point)
            say(
                f"ratings {posted:4d}  liked {point['liked']:4.0%}  current {point['current']}  "
                f"canary {point['canary'] or '-'}  loop {status['loop'].get('state')}"
            )
        stop.set()
        # 4) after, on fresh samples of what is now served
        after = users.measure(_serving_name(loop.admin.status()), MEASURE_SAMPLES)
        promotions = int((loop.store.get_state("loop") or {}).get("promotions", 0))
        result = DemoResult(before, after, posted, promotions, time.monotonic() - started, timeline=timeline)
        result.report = write_demo_report(settings, result, loop.store)
        result.seconds = time.monotonic() - started
        return result
    finally:
        stop.set()
        thread.join(timeout=5)
        users.close()
        server.stop(settings)
        loop.close()


def write_demo_report(settings: Settings, result: DemoResult, store) -> Path:
    """`reports/demo-<time>/`: demo.md and preference.png (preference over ratings, promotions marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.promotion import decisions

    folder = settings.reports_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    xs = [p["ratings"] for p in result.timeline]
    ys = [p["liked"] for p in result.timeline]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(xs, ys, marker="o", markersize=3, label="answers users liked (each batch of ratings)")
    ax.scatter(
        [0, result.ratings],
        [result.before["preference"], result.after["preference"]],
        color="black",
        zorder=5,
        label="measured on fresh held-out prompts",
    )
    for before, after in zip(result.timeline, result.timeline[1:], strict=False):
        if before["current"] != after["current"]:
            ax.axvline(before["ratings"], color="green", linestyle="--", alpha=0.6)
            ax.annotate(
                f"promoted {after['current']}",
                (before["ratings"], 0.03),
                rotation=90,
                fontsize=7,
                color="green",
                xytext=(3, 0),
                textcoords="offset points",
            )
        if after["canary"]:
            ax.axvspan(before["ratings"], after["ratings"], color="orange", alpha=0.12, lw=0)
    ax.set_xlabel("ratings")
    ax.set_ylabel("preference rate")
    ax.set_ylim(0, 1)
    ax.set_title(result.summary())
    ax.legend(loc="center right", fontsize=8, title="shaded: a canary runs", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "preference.png", dpi=110)
    plt.close(fig)
    lines = [
        "# ratchet demo",
        "",
        f"`{result.summary()}`",
        "",
        "![preference over time](preference.png)",
        "",
        "| ratings | liked | current | canary |",
        "|---|---|---|---|",
        *[f"| {p['ratings']} | {p['liked']:.0%} | {p['current']} | {p['canary'] or '-'} |" for p in result.timeline],
        "",
        "## Decisions",
        "",
        *[
            f"- {d.get('action')} {d.get('adapter', '')}: {d.get('reason') or '; '.join(d.get('reasons', []))}"
            for d in decisions(store)
        ],
    ]
    (folder / "demo.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "demo.md"
