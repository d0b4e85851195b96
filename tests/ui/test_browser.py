"""The web UI in a real browser (Chromium via Playwright) against the session's real served app.

Each test leaves `current` on the base model, no canary and no API key behind (the server is shared).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from feedback.models import Adapter, Comparison, Completion, Rating
from feedback.store import FeedbackStore

from helpers import register_test_adapter

pytestmark = [pytest.mark.e2e]
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold?</b>'


@pytest.fixture
def store(server):
    with FeedbackStore(server.settings.store_url) as store:
        yield store


@pytest.fixture
def chat_key(store):
    """A chat API key: while it exists, the chat routes need a key (the auth cache needs a moment to see it)."""
    from serving.auth import CACHE_SECONDS

    key_id, key = store.add_api_key("browser-test")
    time.sleep(CACHE_SECONDS + 0.5)
    try:
        yield key
    finally:
        store.revoke_api_key(key_id)
        time.sleep(CACHE_SECONDS + 0.5)


@pytest.fixture
def admin(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=120) as c:
        yield c
        status = c.get("/admin/status").json()
        if status["canary"]:
            c.post("/admin/canary/abort", json={"reason": "test cleanup"})
        if status["current"] not in (None, "base"):
            assert c.post("/admin/promote", json={"adapter": "base", "reason": "test cleanup"}).status_code == 200


def use_key(page, key: str) -> None:
    page.fill("#key", key)
    page.click("#save-key")


def ask(page, prompt: str):
    """Send `prompt` in the playground; returns the new answer's element once it has finished streaming."""
    answers = page.locator(".msg.assistant")
    before = answers.count()
    page.fill("#prompt", prompt)
    page.click("#send")
    answer = answers.nth(before)
    answer.locator(".completion-id").wait_for()
    return answer


def rating_of(store: FeedbackStore, completion_id: str) -> Rating:
    with store.session() as session:
        rows = session.query(Rating).filter(Rating.completion_id == completion_id).all()
    assert len(rows) == 1, rows
    return rows[0]


def test_a_person_chats_streams_rates_and_corrects_in_the_playground(server, page, store, chat_key, artifact):
    page.goto(server.url + "/")  # the root redirects to the playground
    assert page.url.endswith("/ui")
    page.locator("#status .error").wait_for()  # keys exist: /v1/models is refused until one is given
    assert "API key" in page.locator("#status").inner_text()
    use_key(page, chat_key)
    page.locator("#model option[value='base']").wait_for(state="attached")
    page.select_option("#model", "base")
    first = ask(page, server.prompt)
    assert first.locator(".answered-by").inner_text() == "base"
    assert first.locator(".text").inner_text().strip()
    first_id = first.locator(".completion-id").inner_text()
    first.locator("button.thumb[data-rating='1']").click()
    first.locator(".saved", has_text="saved (fb-").wait_for()

    second = ask(page, "And in one sentence?")  # a second turn of the same conversation
    second_id = second.locator(".completion-id").inner_text()
    second.locator("summary").click()
    second.locator("textarea.correction").fill("The answer I wanted.")
    second.locator("input.comment").fill("too long")
    second.locator("button.send-rating").click()
    second.locator(".saved", has_text="saved (fb-").wait_for()
    artifact("playground")

    user = page.evaluate("localStorage.getItem('ratchet.user')")
    liked, corrected = rating_of(store, first_id), rating_of(store, second_id)
    assert (liked.rating, liked.user) == (1, user)
    assert (corrected.rating, corrected.correction, corrected.comment) == (-1, "The answer I wanted.", "too long")
    completion = store.get_completion(second_id)
    assert [m["role"] for m in completion.messages] == ["user", "assistant", "user"]  # the whole conversation
    assert completion.api_key_id is not None  # asked with the chat key, not anonymously

    page.goto(server.url + "/ui/dashboard")  # the chat key is refused on the dashboard
    use_key(page, chat_key)
    page.locator("#status .error", has_text="may not use admin routes").wait_for()
    assert page.locator("#served").count() == 0
    artifact("dashboard-refused")


def test_an_arena_vote_is_blind_until_cast_and_stored_as_a_comparison(server, page, store, artifact):
    page.goto(server.url + "/ui/arena")
    page.locator(f"#model-a option[value='{server.adapter}']").wait_for(state="attached")
    # Pinned, not random: the session's server also holds adapters other tests broke on purpose (a tampered
    # file), and a random pair may draw one, which answers with an error and leaves nothing to vote on.
    page.select_option("#model-a", server.adapter)
    page.select_option("#model-b", "base")
    page.fill("#prompt", server.prompt)
    page.click("#ask")
    page.locator("#vote-a").wait_for()
    sides = page.locator(".side")
    assert sides.count() == 2 and page.locator(".side .answered-by").count() == 0  # no names before the vote
    assert all(sides.nth(i).locator(".text").inner_text().strip() for i in (0, 1))
    artifact("arena-blind")
    page.click("#vote-a")
    page.locator(".votes .saved", has_text="vote saved (cmp-").wait_for()
    artifact("arena-voted")
    ids = [page.locator(f"#side-{side} .completion-id").inner_text() for side in ("a", "b")]
    names = [page.locator(f"#side-{side} .answered-by").inner_text() for side in ("a", "b")]
    assert names == [server.adapter, "base"]  # revealed only now, and each side is who answered it
    with store.session() as session:
        vote = session.query(Comparison).filter(Comparison.completion_a == min(ids)).one()  # stored sorted
    assert (vote.completion_b, vote.winner) == (max(ids), ids[0])  # A won


def test_the_dashboard_promotes_an_adapter_and_shows_model_output_as_text(server, page, store, admin, artifact):
    store.record_completions([
        Completion(id="chatcmpl-ui-xss", model="base", adapter="base", base_model=server.settings.base_model_id,
                   route="direct", messages=[{"role": "user", "content": "say html"}],
                   choices=[{"index": 0, "text": XSS, "finish_reason": "stop"}])
    ])  # fmt: skip
    store.rate("chatcmpl-ui-xss", 0, rating=-1, user="browser-test", comment="<i>not italic</i>")
    page.goto(server.url + "/ui/dashboard")
    page.locator("#status .error", has_text="admin key").wait_for()  # nothing is shown without the key
    assert page.locator("#served").count() == 0
    use_key(page, server.admin_key)
    page.locator("#served #current").wait_for()
    assert page.locator("#current").inner_text() in ("base", server.adapter)
    answer = page.locator("#ratings td.answer", has_text="window.__xss").first
    assert answer.inner_text() == XSS  # the markup is shown as text ...
    assert page.locator("#ratings img, #ratings script, #ratings b").count() == 0  # ... and never became elements
    assert page.evaluate("window.__xss") is None
    with store.session() as session:
        newest = session.query(Adapter).order_by(Adapter.number.desc()).first().name
    assert page.locator("#adapters tbody tr").first.get_attribute("data-adapter") == newest  # newest first
    artifact("dashboard")

    page.select_option("#promote-adapter", server.adapter)
    page.once("dialog", lambda dialog: dialog.accept())  # the confirmation
    page.click("#promote")
    page.locator("#current", has_text=server.adapter).wait_for()
    assert admin.get("/admin/status").json()["current"] == server.adapter
    page.once("dialog", lambda dialog: dialog.dismiss())  # a dismissed confirmation changes nothing
    page.click("#rollback")
    page.wait_for_timeout(500)
    assert admin.get("/admin/status").json()["current"] == server.adapter
    artifact("dashboard-promoted")


def test_the_dashboard_shows_a_canary_and_its_test_and_stops_it(server, page, admin, artifact):
    canary = register_test_adapter(server.settings, seed=7)
    started = admin.post("/admin/canary", json={"adapter": canary, "fraction": 0.5})
    assert started.status_code == 200, started.text
    page.goto(server.url + "/ui/dashboard")
    use_key(page, server.admin_key)
    page.locator("#canary", has_text=canary).wait_for()
    served = page.locator("#served").inner_text()
    assert "50%" in served and "0/0 liked" in served and "ratings an arm needed" in served  # the test waits
    artifact("dashboard-canary")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#stop-canary")
    page.locator("#stop-canary").wait_for(state="detached")
    status = admin.get("/admin/status").json()
    assert status["canary"] is None
    assert admin.get("/admin/adapters", params={"limit": 5}).json()["data"][0]["status"] == "rejected"


def test_the_dashboard_shows_an_adapters_loss_plot_fetched_with_the_admin_key(server, page):
    run = server.settings.runs_dir / server.adapter  # where training leaves an adapter's loss.png
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[2] / "docs" / "img" / "rft-reward.png", run / "loss.png")
    page.goto(server.url + "/ui/dashboard")
    use_key(page, server.admin_key)
    page.locator("#adapters tbody tr").first.wait_for()
    row = page.locator(f"#adapters tr[data-adapter='{server.adapter}']")
    while not row.count():  # the session's adapter is the oldest: page back to it
        page.click("#older-adapters")
        page.wait_for_timeout(300)
    row.locator("button", has_text="report").click()
    image = page.locator("#adapter-files img")
    image.wait_for()
    assert image.get_attribute("src").startswith("blob:")  # fetched with the header, never a key in a URL
    assert page.evaluate("document.querySelector('#adapter-files img').naturalWidth") > 0


def test_the_dashboard_shows_the_numbers_behind_each_decision(server, page, admin, artifact):
    adapter = register_test_adapter(server.settings, seed=8)
    gate = [
        {"name": "win_rate", "passed": True, "numbers": {"n": 35, "estimate": 0.62857, "low": 0.51}, "test": "Wilson"},
        {"name": "quality", "passed": True, "numbers": {"p_value": 0.41, "alpha": 0.05}},
    ]
    canary = {"counts": {"canary": {"up": 3, "n": 20}}, "p_worse": 0.004, "test": "Fisher's exact test"}
    started = admin.post("/admin/canary", json={"adapter": adapter, "fraction": 0.5, "evidence": {"gate": gate}})
    assert started.status_code == 200, started.text
    stopped = admin.post("/admin/canary/abort", json={"reason": "canary: worse", "evidence": {"canary": canary}})
    assert stopped.status_code == 200, stopped.text
    page.goto(server.url + "/ui/dashboard")
    use_key(page, server.admin_key)
    rows = page.locator("#decisions tr")
    rows.nth(1).wait_for()
    newest, before = rows.nth(1).inner_text(), rows.nth(2).inner_text()  # newest first
    assert "rollback" in newest and "canary: counts.canary.up=3, counts.canary.n=20, p_worse=0.004" in newest
    assert "ok win_rate: n=35, estimate=0.629, low=0.51" in before and "ok quality: p_value=0.41" in before
    assert rows.nth(1).locator(".evidence .check").first.get_attribute("title") == "Fisher's exact test"
    # the rejected adapter's record keeps the canary's numbers too
    record = page.locator(f"#adapters tr[data-adapter='{adapter}']")
    assert "counts.canary.up=3" in record.inner_text()
    artifact("dashboard-evidence")
