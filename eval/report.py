"""The evaluation report: Markdown and HTML side by side, with plots, in `<reports>/<eval id>/`.

report.md      the verdict, each check with its reason, the numbers, example answer pairs
report.html    the same, for a browser
win_rate.png   win-rate with its 95 % interval, and the quality / regression shares of both models
loss.png       the candidate's training curves (copied from its run folder, when there)
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from eval.gate import Decision, numbers_text
from eval.offline import Evaluation


def plot_evaluation(evaluation: Evaluation, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = evaluation.metrics
    win, quality, suite = m["win_rate"], m["quality"], m["regression"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    estimate = win["estimate"]
    left.errorbar([estimate], [0], xerr=[[estimate - win["low"]], [win["high"] - estimate]], fmt="o", capsize=8)
    left.axvline(0.5, color="grey", linestyle="--", label="no better than the baseline")
    left.set_xlim(0, 1)
    left.set_yticks([])
    left.set_xlabel(f"win-rate of {evaluation.candidate} over {evaluation.baseline} (95 % CI, n={win['n']})")
    left.legend(loc="upper left", fontsize=8)
    labels = ["well-formed (sampled)", "regression suite (greedy)"]
    cases = max(1, suite["cases"])
    candidate = [quality["candidate"] or 0.0, suite["candidate_passed"] / cases]
    baseline = [quality["baseline"] or 0.0, suite["baseline_passed"] / cases]
    xs = range(len(labels))
    right.bar([x - 0.2 for x in xs], baseline, width=0.4, label=evaluation.baseline, color="#9aa5b1")
    right.bar([x + 0.2 for x in xs], candidate, width=0.4, label=evaluation.candidate, color="#2f80ed")
    right.set_xticks(list(xs), labels)
    right.set_ylim(0, 1.05)
    right.set_ylabel("share")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(evaluation: Evaluation, decision: Decision, images: list[str]) -> str:
    m = evaluation.metrics
    win, quality, loss = m["win_rate"], m["quality"], m.get("heldout_loss") or {}
    lines = [
        f"# {evaluation.candidate} vs {evaluation.baseline}: {decision.verdict.upper()}",
        "",
        *[f"- {reason}" for reason in decision.reasons],
        "",
        "| measure | candidate | baseline |",
        "|---|---|---|",
        f"| win-rate (judge: {m['judge'].get('judge')}) | {win['estimate']:.0%} [{win['low']:.2f}, {win['high']:.2f}] "
        f"n={win['n']} ({win['wins']} wins, {win['losses']} losses, {win['ties']} ties) | |",
        f"| well-formed sampled answers | {_share(quality['candidate'])} | {_share(quality['baseline'])} |",
        f"| regression suite | {m['regression']['candidate_passed']}/{m['regression']['cases']} | "
        f"{m['regression']['baseline_passed']}/{m['regression']['cases']} |",
        f"| held-out loss (run start -> end) | {_num(loss.get('after'))} | {_num(loss.get('before'))} |",
        "",
        *[f"![{Path(image).stem}]({image})" for image in images],
        "",
        "## The gate's numbers",
        "",
        _looks_text(m),
        "",
        "| check | passed | numbers | test |",
        "|---|---|---|---|",
        *[
            f"| {c['name']} | {'yes' if c['passed'] else 'NO'} | {numbers_text(c['numbers'])} | {c.get('test', '')} |"
            for c in decision.checks
        ],
        "",
        "## Example pairs",
        "",
    ]
    for example in evaluation.examples:
        verdict = {1.0: "candidate", 0.0: "baseline", 0.5: "tie"}[example["verdict"]]
        lines += [
            f"**{example['prompt']}** (judge prefers: {verdict})",
            "",
            f"- candidate: {example['candidate']}",
            f"- baseline: {example['baseline']}",
            "",
        ]
    return "\n".join(lines)


def _looks_text(metrics: dict) -> str:
    """How many looks the gate took and what each saw (eval/looks.py); one look for older evaluations."""
    looks = metrics.get("looks") or []
    if len(looks) <= 1:
        return "Decided on one look."
    steps = "; ".join(
        f"look {x['look']}: {x['verdict']}{'' if x['settled'] else ' (unsettled)'}, {x['pairs']} pairs" for x in looks
    )
    return f"Decided on {len(looks)} looks, their answers pooled ({steps})."


def _html(evaluation: Evaluation, decision: Decision, images: list[str]) -> str:
    m = evaluation.metrics
    esc = html.escape
    colour = "#1a7f37" if decision.verdict == "promote" else "#cf222e"
    reasons = "".join(f"<li>{esc(r)}</li>" for r in decision.reasons)
    pairs = "".join(
        f"<tr><td>{esc(e['prompt'])}</td><td>{esc(e['candidate'])}</td><td>{esc(e['baseline'])}</td>"
        f"<td>{ {1.0: 'candidate', 0.0: 'baseline', 0.5: 'tie'}[e['verdict']] }</td></tr>"
        for e in evaluation.examples
    )
    imgs = "".join(f'<img src="{esc(i)}" style="max-width:100%">' for i in images)
    checks = "".join(
        f"<tr><td>{esc(c['name'])}</td><td>{'yes' if c['passed'] else 'NO'}</td>"
        f"<td>{esc(numbers_text(c['numbers']))}</td><td>{esc(c.get('test', ''))}</td></tr>"
        for c in decision.checks
    )
    win = m["win_rate"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(evaluation.candidate)} evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}}
td,th{{border:1px solid #ddd;padding:4px 8px;vertical-align:top}}table{{border-collapse:collapse}}</style></head><body>
<h1>{esc(evaluation.candidate)} vs {esc(evaluation.baseline)}:
<span style="color:{colour}">{esc(decision.verdict.upper())}</span></h1>
<ul>{reasons}</ul>
<p>Win-rate {win["estimate"]:.0%} (95 % CI {win["low"]:.2f}-{win["high"]:.2f}, n={win["n"]}),
well-formed {_share(m["quality"]["candidate"])} vs {_share(m["quality"]["baseline"])}.</p>
{imgs}
<h2>The gate's numbers</h2><p>{esc(_looks_text(m))}</p>
<table><tr><th>check</th><th>passed</th><th>numbers</th><th>test</th></tr>{checks}</table>
<h2>Example pairs</h2><table><tr><th>prompt</th><th>candidate</th><th>baseline</th><th>judge</th></tr>{pairs}</table>
</body></html>"""


def write_report(evaluation: Evaluation, decision: Decision, folder: Path | str, *, run_dir: str | None = None) -> Path:
    """Write the report into `folder`; returns the Markdown file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = [plot_evaluation(evaluation, folder / "win_rate.png").name]
    loss_plot = Path(run_dir) / "loss.png" if run_dir else None
    if loss_plot is not None and loss_plot.is_file():
        shutil.copyfile(loss_plot, folder / "loss.png")
        images.append("loss.png")
    (folder / "report.html").write_text(_html(evaluation, decision, images), encoding="utf-8")
    markdown = folder / "report.md"
    markdown.write_text(_markdown(evaluation, decision, images), encoding="utf-8")
    return markdown


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
