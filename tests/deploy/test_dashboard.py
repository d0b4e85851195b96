"""The dashboard's aggregates (deploy/dashboard.py) on both stores, and its admin routes on the served app."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from deploy import dashboard
from feedback.models import Adapter, Completion, Rating
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore

HOUR = 3600.0
NOW = 1_800_001_800.0  # a fixed clock, half-way through an hour: the last bucket is that hour


def _completion(store: FeedbackStore, cid: str, adapter: str, answer: str = "an answer", prompt: str = "a question"):
    store.record_completions([
        Completion(id=cid, model="current", adapter=adapter, base_model="demo", route="current",
                   messages=[{"role": "user", "content": prompt}],
                   choices=[{"index": 0, "text": answer, "finish_reason": "stop"}])
    ])  # fmt: skip


def _rate(store: FeedbackStore, cid: str, at: float, user: str, **judgement) -> None:
    row, _ = store.rate(cid, 0, user=user, **judgement)
    with store.session() as session:
        session.execute(update(Rating).where(Rating.id == row.id).values(created=at))


@pytest.fixture
def store(db_url):
    with FeedbackStore(db_url) as store:
        yield store


def test_ratings_are_counted_per_hour_and_per_adapter_in_sql(store):
    _completion(store, "chatcmpl-a", "base")
    _completion(store, "chatcmpl-b", "ft-0001")
    _rate(store, "chatcmpl-a", NOW - 10, "u1", rating=1)  # the current hour
    _rate(store, "chatcmpl-a", NOW - HOUR - 10, "u2", rating=-1)  # the hour before
    _rate(store, "chatcmpl-b", NOW - 20, "u1", score=5)
    _rate(store, "chatcmpl-b", NOW - 20, "u3", score=3)  # a 3 is a rating, though neither liked nor disliked
    _rate(store, "chatcmpl-b", NOW - 5 * HOUR, "u4", rating=1)  # outside a 3-hour window
    counts = dashboard.ratings_per_hour(store, hours=3, now=NOW)
    assert counts["hours"] == [(int(NOW // HOUR) - 2 + i) * 3600 for i in range(3)]
    assert counts["series"] == {"base": [0, 1, 1], "ft-0001": [0, 0, 2]}


def test_liked_share_per_adapter_has_its_wilson_interval(store):
    _completion(store, "chatcmpl-a", "base")
    _completion(store, "chatcmpl-b", "ft-0001")
    for i, thumb in enumerate([1, -1, -1, -1]):
        _rate(store, "chatcmpl-a", NOW, f"u{i}", rating=thumb)
    for i, score in enumerate([5, 4, 3, 1]):
        _rate(store, "chatcmpl-b", NOW + 1, f"u{i}", score=score)
    shares = {row["adapter"]: row for row in dashboard.liked_shares(store)}
    assert (shares["base"]["up"], shares["base"]["n"], shares["base"]["estimate"]) == (1, 4, 0.25)
    assert (shares["ft-0001"]["up"], shares["ft-0001"]["n"]) == (2, 3)  # the 3 is not judged
    assert shares["base"]["low"] < 0.25 < shares["base"]["high"]


def test_the_rating_page_pages_newest_first_and_keeps_answers_verbatim_but_short(store):
    html = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    _completion(store, "chatcmpl-a", "base", answer=html + "x" * 1000)
    for i in range(5):
        _rate(store, "chatcmpl-a", NOW + i, f"u{i}", rating=1, comment=f"c{i}")
    first = dashboard.rating_page(store, limit=3)
    assert [r["comment"] for r in first["data"]] == ["c4", "c3", "c2"] and first["has_more"]
    rest = dashboard.rating_page(store, limit=3, before=first["data"][-1]["created"])
    assert [r["comment"] for r in rest["data"]] == ["c1", "c0"] and not rest["has_more"]
    answer = first["data"][0]["answer"]
    assert answer.startswith(html) and len(answer) == dashboard.TEXT_CHARS  # escaping is the page's job
    assert first["data"][0]["prompt"] == "a question" and first["data"][0]["adapter"] == "base"


def test_the_adapter_timeline_pages_by_number_and_counts_snapshot_ids(store, tmp_path):
    registry = AdapterRegistry(store, tmp_path / "adapters")
    with store.session() as session:
        for number in range(1, 6):
            snapshot = {"ids": [f"rating:{i}" for i in range(number)], "counts": {"train": number}}
            name = f"ft-{number:04d}"
            session.add(Adapter(name=name, number=number, base_model="demo", method="sft", path=name, sha256="0" * 64,
                                data_snapshot=snapshot))  # fmt: skip
    runs = tmp_path / "runs"
    (runs / "ft-0005").mkdir(parents=True)
    (runs / "ft-0005" / "loss.png").write_bytes(b"\x89PNG")
    page = dashboard.adapter_page(registry, runs, limit=2)
    assert [a["name"] for a in page["data"]] == ["ft-0005", "ft-0004"] and page["has_more"]
    assert page["data"][0]["data_snapshot"] == {"ids": 5, "counts": {"train": 5}}
    assert page["data"][0]["report_files"] == ["loss.png"] and page["data"][1]["report_files"] == []
    last = dashboard.adapter_page(registry, runs, limit=10, before=page["data"][-1]["number"])
    assert [a["name"] for a in last["data"]] == ["ft-0003", "ft-0002", "ft-0001"] and not last["has_more"]
    assert dashboard.report_file(registry, runs, "ft-0005", "loss.png") == runs / "ft-0005" / "loss.png"
    with pytest.raises(dashboard.NotFound, match="has no report.md"):
        dashboard.report_file(registry, runs, "ft-0005", "report.md")
    with pytest.raises(dashboard.NotFound, match="no report file"):
        dashboard.report_file(registry, runs, "ft-0005", "../../admin.key")


def test_a_long_training_curve_is_thinned_but_keeps_its_last_step_and_every_eval_row():
    rows = [{"split": "train", "step": s, "loss": 1 / s} for s in range(1, 1002)]
    rows += [{"split": "eval", "step": s, "loss": 0.5} for s in (500, 1000)]
    thin = dashboard.thin(rows, 100)
    train = [r["step"] for r in thin if r["split"] == "train"]
    assert len(train) <= 102 and train[0] == 1 and train[-1] == 1001
    assert [r["step"] for r in thin if r["split"] == "eval"] == [500, 1000]


# -- the routes, on the session's served app -----------------------------------------------------------


@pytest.mark.e2e
def test_the_dashboard_routes_answer_with_aggregates_and_need_the_admin_key(server):
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for path in ("/admin/stats", "/admin/adapters", "/admin/ratings", "/admin/jobs/ftjob-x/metrics"):
            refused = http.get(path)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", path
        stats = http.get("/admin/stats", params={"hours": 6}, headers=headers).json()
        assert len(stats["ratings_per_hour"]["hours"]) == 6 and isinstance(stats["decisions"], list)
        adapters = http.get("/admin/adapters", params={"limit": 100}, headers=headers).json()
        assert server.adapter in [a["name"] for a in adapters["data"]]
        missing = http.get(f"/admin/adapters/{server.adapter}/files/report.md", headers=headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
        unknown = http.get("/admin/jobs/ftjob-nope/metrics", headers=headers)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
        assert http.get("/admin/stats", params={"hours": 0}, headers=headers).status_code == 400


@pytest.mark.e2e
def test_the_pages_are_served_with_a_policy_that_runs_only_their_own_scripts(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        root = http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui"
        for path in ("/ui", "/ui/arena", "/ui/dashboard"):
            page = http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
            assert "frame-ancestors 'none'" in policy
        script = http.get("/ui/assets/ui.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        for bad in ("/ui/assets/nope.js", "/ui/assets/..%2F..%2Fpyproject.toml", "/ui/assets/playground.html"):
            assert http.get(bad).status_code == 404, bad
