"""The web UI, measured in a real browser: the dashboard's load with many ratings stored, and the playground's
time to first token beside the API's, in one run. Also makes the docs' screenshots.

    python benchmarks/bench_ui.py                                  # 10,000 ratings, 8 rounds
    python benchmarks/bench_ui.py --screenshots docs/images --base-model .ratchet/models/demo-tiny-v1
                                                                   # and the docs' screenshots (`ratchet init`'s model)

A real ratchet server (hf engine, demo model, Ray Serve) on a fresh workspace. Simulated users rate answers
and the loop runs one round (so the dashboard has a job, a gate verdict and a decision to show); then
`--ratings` ratings spread over the last 48 hours are written straight into the store. Measured:

  dashboard load   from navigation to every section rendered (Chromium, a fresh context each round), and the
                   bytes of JSON the page fetched for it: aggregates, not rows
  first token      playground: from the Send click to the first streamed text in the page; API: the openai
                   SDK's stream to its first content delta; interleaved rounds, the same prompt and model

Needs the dev install (playwright) and Debian's chromium. Writes benchmarks/out/ui.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serving import OUT, demo_model, free_port  # noqa: E402

CHROMIUM = os.environ.get("RATCHET_TEST_CHROMIUM", "/usr/bin/chromium")
PROMPT = "Tell me about tea."

# In the page: set the prompt, click Send, resolve with the ms until the new answer shows its first text.
FIRST_TEXT_JS = """async (prompt) => {
  const n = document.querySelectorAll('.msg.assistant').length;
  document.querySelector('#prompt').value = prompt;
  const started = performance.now();
  document.querySelector('#send').click();
  return await new Promise((resolve) => {
    const check = () => {
      const answer = document.querySelectorAll('.msg.assistant')[n];
      if (answer && answer.querySelector('.text').textContent.length) {
        observer.disconnect();
        resolve(performance.now() - started);
      }
    };
    const observer = new MutationObserver(check);
    observer.observe(document.querySelector('#transcript'), { subtree: true, childList: true, characterData: true });
    check();
  });
}"""


def fill_store(store_url: str, ratings: int, adapters: list[str], seed: int = 0) -> None:
    """`ratings` completions and ratings, spread over 48 hours and the given adapters, in large batches."""
    from feedback.models import Completion, Rating
    from feedback.store import FeedbackStore

    rng, now = random.Random(seed), time.time()
    with FeedbackStore(store_url) as store:
        for start in range(0, ratings, 1000):
            batch = range(start, min(ratings, start + 1000))
            completions, rows = [], []
            for i in batch:
                at, adapter = now - rng.uniform(0, 48 * 3600), rng.choice(adapters)
                cid = f"chatcmpl-bench-{i:06d}"
                completions.append(Completion(id=cid, created=at, model="current", adapter=adapter, base_model="demo",
                                              route="current", messages=[{"role": "user", "content": PROMPT}],
                                              choices=[{"index": 0, "text": f"answer {i}", "finish_reason": "stop"}]))
                liked = rng.random() < (0.3 if adapter == "base" else 0.6)
                rows.append(Rating(id=f"fb-bench-{i:06d}", completion_id=cid, user=f"bench-{i % 300}",
                                   rating=1 if liked else -1, created=at + 5, updated=at + 5))  # fmt: skip
            store.record_completions(completions)
            with store.session() as session:
                session.add_all(rows)


def one_loop_round(settings, url: str, admin_key: str) -> dict:
    from deploy.loop import ImprovementLoop
    from eval.simulated_users import SimulatedUsers

    users = SimulatedUsers(url, admin_key, seed=3)
    try:
        users.run(60)
    finally:
        users.close()
    settings = settings.model_copy(update={"loop_every_ratings": 1, "canary_fraction": 0.3})
    loop = ImprovementLoop(settings, url, admin_key)
    try:
        return loop.tick() or {}
    finally:
        loop.close()


def dashboard_load(browser, url: str, admin_key: str) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('ratchet.admin-key', {json.dumps(admin_key)})")
    page = context.new_page()
    fetched: list[int] = []
    page.on("response", lambda r: fetched.append(int(r.headers.get("content-length") or 0))
            if r.url.startswith((url + "/admin", url + "/v1/")) else None)  # fmt: skip
    started = time.perf_counter()
    page.goto(url + "/ui/dashboard")
    page.locator("#feedback").wait_for(timeout=120_000)
    seconds = time.perf_counter() - started
    page.wait_for_timeout(200)
    context.close()
    return {"seconds": seconds, "json_bytes": sum(fetched)}


def first_tokens(browser, url: str, rounds: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url + "/ui")
    page.locator("#model option[value='base']").wait_for(state="attached")
    page.select_option("#model", "base")
    page.fill("#max-tokens", "32")
    ui, api = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=32, stream=True)  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                api.append(time.perf_counter() - started)
                break
        for _ in stream:  # drain, as the page does
            pass
        page.click("text=New chat")
        ui.append(page.evaluate(FIRST_TEXT_JS, PROMPT) / 1000)
        page.locator(".msg.assistant .completion-id").last.wait_for()
    context.close()
    client.close()
    return {"ui_s": statistics.median(ui), "api_s": statistics.median(api), "ui_all": ui, "api_all": api}


def screenshots(browser, url: str, admin_key: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    context.add_init_script(f"sessionStorage.setItem('ratchet.admin-key', {json.dumps(admin_key)})")
    page = context.new_page()
    page.goto(url + "/ui")
    page.locator("#model option", has_text="current").wait_for(state="attached")
    for prompt, thumb in (("Tell me about penguins.", "1"), ("Explain the moon to me.", "-1")):
        page.fill("#prompt", prompt)
        page.click("#send")
        answer = page.locator(".msg.assistant").last
        answer.locator(".completion-id").wait_for()
        answer.locator(f"button.thumb[data-rating='{thumb}']").click()
        answer.locator(".saved").wait_for()
    page.locator(".msg.assistant summary").last.click()
    page.locator("textarea.correction").last.fill("The Moon is Earth's only natural satellite.")
    page.screenshot(path=str(folder / "ui-playground.png"))
    page.goto(url + "/ui/dashboard")
    page.locator("#feedback").wait_for()
    page.screenshot(path=str(folder / "ui-dashboard.png"), full_page=True)
    context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--screenshots", type=Path, default=None, help="write ui-playground.png, ui-dashboard.png here")
    parser.add_argument("--base-model", type=Path, default=None, help="a model dir (default: a benchmark demo model)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from playwright.sync_api import sync_playwright

    from deploy.server import start, stop
    from deploy.workspace import init_workspace, read_admin_key
    from ratchet.settings import Settings

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = args.base_model or demo_model(OUT / "models")
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-ui-") as home:
        settings = Settings(home=Path(home) / "ws", base_model=str(model_dir), port=free_port(), access_log=False)
        init_workspace(settings, progress=False)
        url = start(settings)
        admin_key = read_admin_key(settings)
        try:
            decision = one_loop_round(settings, url, admin_key)
            why = decision.get("reason") or decision.get("error", "")
            print(f"loop round: {decision.get('action')} {decision.get('adapter', '')} {why}", file=sys.stderr)
            adapters = ["base", *([decision["adapter"]] if decision.get("adapter") else [])]
            fill_store(settings.store_url, args.ratings, adapters)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                loads = [dashboard_load(browser, url, admin_key) for _ in range(args.rounds)]
                tokens = first_tokens(browser, url, args.rounds)
                if args.screenshots:
                    screenshots(browser, url, admin_key, args.screenshots)
                browser.close()
        finally:
            stop(settings)
    result = {
        "ratings_stored": args.ratings,
        "dashboard_load_s": {"median": round(statistics.median(x["seconds"] for x in loads), 3),
                             "max": round(max(x["seconds"] for x in loads), 3)},
        "dashboard_json_kb": round(statistics.median(x["json_bytes"] for x in loads) / 1024, 1),
        "first_token_s": {"playground": round(tokens["ui_s"], 3), "api": round(tokens["api_s"], 3),
                          "ratio": round(tokens["ui_s"] / tokens["api_s"], 2)},
        "rounds": args.rounds,
    }  # fmt: skip
    (OUT / "ui.json").write_text(json.dumps({**result, "first_token_all": tokens}, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
