"""PII scrubbers side by side on the labelled set of the tests (tests/feedback/pii_cases.json).

    python benchmarks/bench_pii.py

For each scrubber: how many of the set's emails, phone numbers and keys it removes, how many texts without
PII it changes (false positives), and its time per text. ratchet's own scrubber (feedback/pii.py) always
runs; scrubadub runs when it is installed (`pip install scrubadub`; not a dependency of ratchet). Writes
benchmarks/out/pii.json. The script times itself; nothing here asserts a score.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from feedback.pii import scrub_text  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
CASES = json.loads((ROOT / "tests" / "feedback" / "pii_cases.json").read_text())
REPEATS = 50


def score(scrub: Callable[[str], str]) -> dict:
    secrets = [(case["text"], secret) for case in CASES["pii"] for secret in case["secrets"]]
    removed = sum(secret not in scrub(text) for text, secret in secrets)
    changed = [text for text in CASES["clean"] if scrub(text) != text]
    texts = [case["text"] for case in CASES["pii"]] + CASES["clean"]
    start = time.perf_counter()
    for _ in range(REPEATS):
        for text in texts:
            scrub(text)
    per_text_us = (time.perf_counter() - start) / (REPEATS * len(texts)) * 1e6
    return {
        "removed": removed,
        "secrets": len(secrets),
        "clean_changed": len(changed),
        "clean": len(CASES["clean"]),
        "changed": changed,
        "us_per_text": round(per_text_us, 1),
    }


def main() -> None:
    scrubbers: dict[str, Callable[[str], str]] = {"ratchet (feedback/pii.py)": scrub_text}
    try:
        import scrubadub

        scrubbers[f"scrubadub {scrubadub.__version__}"] = scrubadub.Scrubber().clean
    except ImportError:
        print("scrubadub is not installed: only ratchet's scrubber runs", file=sys.stderr)
    results = {name: score(scrub) for name, scrub in scrubbers.items()}
    print("| scrubber | PII removed | clean texts changed | µs per text |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['removed']}/{r['secrets']} | {r['clean_changed']}/{r['clean']} | {r['us_per_text']} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pii.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
