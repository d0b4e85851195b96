"""kill -9 of the whole server mid-stream of ratings: every rating that got a 2xx is in the store afterwards.

A real `ratchet serve` runs in a subprocess with a workspace, a port and a Ray of its own (RAY_TMPDIR points
its Ray at a private temp dir, so every process it starts carries that path and can be found). Threads chat
to get completions, then stream ratings (re-rates included) and comparisons at it. After ACKS_BEFORE_KILL
acknowledgements every process of the server (its process group, every descendant, every process carrying
its Ray temp dir: raylet, GCS, workers, the replica) is frozen with SIGSTOP and then SIGKILLed, and the test
checks that none survives. The server is restarted on the same workspace; then:

- every acknowledged rating and comparison is stored, under its id, for its completion, choice and user;
- the store is consistent: no rating or comparison without its completion, one row per user and choice
  (re-rates upsert), and each row holds the user's last acknowledged verdict, or the one still in flight
  when the kill landed;
- the restarted server serves the old completions (a rating of one is an upsert, answered 200);
- neither the API key, the admin key, the judge's key nor the database password reached a log (Ray's
  session logs, the server's output).

Runs on SQLite (the default) and on PostgreSQL (RATCHET_DATABASE_URL).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from feedback.models import Comparison, Completion, Rating
from feedback.store import FeedbackStore

from helpers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).parents[2]
RATCHET = [sys.executable, "-c", "from ratchet.cli import main; main()"]
COMPLETIONS = 12  # chats before the stream, two choices each
RATING_THREADS, USERS_PER_THREAD = 3, 4
ACKS_BEFORE_KILL = 150
START_TIMEOUT = 150.0


@dataclass
class Stream:
    """What one rating thread sent: acks by request key, and what was in flight when the server died."""

    acked: dict[tuple, list[dict]] = field(default_factory=dict)  # (kind, target, user) -> acked bodies, in order
    ids: dict[str, tuple] = field(default_factory=dict)  # acked id -> (kind, target, user)
    in_flight: dict[tuple, dict] = field(default_factory=dict)  # key -> the body sent after its last ack
    refused: int = 0  # non-2xx answers (429 and the like): not acks
    failed: int = 0  # no answer: the kill landed


def _server_env(home: Path, ray_tmp: Path, database_url: str, demo_model_dir: Path, secrets: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATCHET_", "RAY_"))}
    env.update(
        RATCHET_BASE_MODEL=str(demo_model_dir),
        RATCHET_DATABASE_URL=database_url,
        RATCHET_NUM_CPUS="2",
        RATCHET_REPLICA_CPUS="1",
        RATCHET_TORCH_THREADS="1",
        RATCHET_API_KEYS=secrets["api_key"],
        RATCHET_JUDGE_API_KEY=secrets["judge_key"],
        RAY_TMPDIR=str(ray_tmp),
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return env


def _start(home: Path, port: int, env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*RATCHET, "serve", "--home", str(home), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group and session: killpg reaches what it forks
        )


def _wait_healthy(url: str, server: subprocess.Popen, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT:
        assert server.poll() is None, f"ratchet serve exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not healthy after {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


def _marked(marker: str) -> list[psutil.Process]:
    """Every live process whose command line or environment names `marker` (the server's Ray temp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker in " ".join(proc.info["cmdline"] or []) or proc.environ().get("RAY_TMPDIR") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _tree(server: subprocess.Popen, marker: str) -> dict[int, psutil.Process]:
    procs = {p.pid: p for p in _marked(marker)}
    try:
        root = psutil.Process(server.pid)
        procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
    except psutil.NoSuchProcess:
        pass
    return procs


def _signal_all(procs, signum: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signum)


def kill_everything(server: subprocess.Popen, marker: str) -> tuple[int, list[str]]:
    """Freeze every process of the server (SIGSTOP: none can fork or write after this instant), SIGKILL them
    all, and wait. Returns how many were killed and a description of any that survived."""
    victims: dict[int, psutil.Process] = {}
    for _ in range(3):  # freeze until a scan finds nobody new (a process forked mid-scan is caught next round)
        found = _tree(server, marker)
        new = [p for pid, p in found.items() if pid not in victims]
        if not new:
            break
        _signal_all(new, signal.SIGSTOP)
        victims.update(found)
    _signal_all(victims.values(), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    psutil.wait_procs(list(victims.values()), timeout=30)
    survivors = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in _marked(marker)]
    return len(victims), survivors


def _chat(url: str, headers: dict, prompt: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for i in range(COMPLETIONS):
            body = {"model": "base", "messages": [{"role": "user", "content": prompt}], "max_tokens": 6, "n": 2}
            reply = client.post("/v1/chat/completions", json={**body, "seed": i, "user": f"asker-{i}"})
            assert reply.status_code == 200, reply.text
            ids.append(reply.json()["id"])
    return ids


def _rate(url: str, headers: dict, completions: list[str], thread: int, stream: Stream, stop: threading.Event):
    """Post ratings (and, from thread 0, comparisons) until `stop` or until the server stops answering."""
    rng = random.Random(thread)
    users = [f"kill-{thread}-{j}" for j in range(USERS_PER_THREAD)]
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30, connect=5)) as client:
        while not stop.is_set():
            user = rng.choice(users)
            if thread == 0 and rng.random() < 0.25:
                a, b = sorted(rng.sample(completions, 2))
                body = {"completion_ids": [a, b], "winner": rng.choice([a, b, "tie"]), "user": user}
                route, key = "/v1/comparisons", ("comparison", (a, b), user)
            else:
                completion, choice = rng.choice(completions), rng.randrange(2)
                body = {"completion_id": completion, "choice_index": choice, "rating": rng.choice([1, -1])}
                body["user"] = user
                if rng.random() < 0.2:
                    body["correction"] = f"a better answer {rng.randrange(1000)}"
                route, key = "/v1/feedback", ("rating", (completion, choice), user)
            stream.in_flight[key] = body
            try:
                reply = client.post(route, json=body)
            except httpx.HTTPError:
                stream.failed += 1
                return  # the server is gone: this request's outcome is unknown (it stays in flight)
            if reply.status_code in (200, 201):
                stream.acked.setdefault(key, []).append(body)
                stream.ids[reply.json()["id"]] = key
                del stream.in_flight[key]
            else:
                stream.refused += 1
                del stream.in_flight[key]


def test_every_acknowledged_rating_survives_kill_9_of_every_process(empty_db_url, demo_model_dir, tmp_path):
    from retrain.demo import corpus

    started = time.monotonic()
    home, log, port = tmp_path / "ws", tmp_path / "serve.log", free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    secrets = {"api_key": "sk-kill-" + uuid.uuid4().hex, "judge_key": "jk-kill-" + uuid.uuid4().hex}
    database_url = empty_db_url
    if database_url.startswith("postgresql"):  # a password in the URL, as in production (trust auth ignores it)
        secrets["db_password"] = "pw-kill-" + uuid.uuid4().hex
        user, at, rest = database_url.partition("@")
        database_url = f"{user}:{secrets['db_password']}{at}{rest}"
    env = _server_env(home, ray_tmp, database_url, demo_model_dir, secrets)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secrets['api_key']}"}
    server = _start(home, port, env, log)
    try:
        # 1) serve, chat, and stream ratings until enough are acknowledged
        first_start = _wait_healthy(url, server, log)
        completions = _chat(url, headers, corpus.prompts(corpus.TOPICS[0])[0])
        admin_key = (home / "admin.key").read_text().strip()
        assert httpx.get(url + "/admin/status", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
        stop, streams = threading.Event(), [Stream() for _ in range(RATING_THREADS)]
        threads = [
            threading.Thread(target=_rate, args=(url, headers, completions, t, streams[t], stop), daemon=True)
            for t in range(RATING_THREADS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(len(s.ids) for s in streams) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            assert all(t.is_alive() for t in threads), "a rating thread stopped before the kill"
            time.sleep(0.05)

        # 2) kill -9 every process of the server while the ratings still stream
        assert all(t.is_alive() for t in threads), "the ratings must still be streaming when the kill lands"
        killed_at = time.monotonic()
        killed, survivors = kill_everything(server, str(ray_tmp))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert survivors == [], f"processes survived kill -9: {survivors}"
        acked = {rid: key for s in streams for rid, key in s.ids.items()}
        assert len(acked) >= ACKS_BEFORE_KILL, f"only {len(acked)} ratings were acknowledged"

        # 3) restart on the same workspace
        server = _start(home, port, env, log)
        restart = _wait_healthy(url, server, log)
        settle = httpx.post(
            url + "/v1/feedback", json={"completion_id": completions[0], "rating": 1, "user": "after"}, headers=headers
        )
        assert settle.status_code == 201, settle.text  # the restarted server knows the completions from before

        # 4) every ack is stored, and the store is consistent
        in_flight, landed = _check_store(database_url, completions, streams)
        checked = time.monotonic()
        kill_everything(server, str(ray_tmp))
        _check_no_secret_in_logs(ray_tmp, log, [*secrets.values(), admin_key])
        refused = sum(s.refused for s in streams)
        print(
            f"\n[kill -9] {empty_db_url.split(':')[0]}: {len(acked)} acknowledged ({refused} refused), "
            f"{len(acked)} kept, {in_flight} in flight at the kill ({landed} of them stored); "
            f"{killed} processes killed, 0 survived; start {first_start:.0f} s, "
            f"restart {restart:.0f} s, kill-to-checked {checked - killed_at:.0f} s, whole test "
            f"{time.monotonic() - started:.0f} s"
        )
    finally:
        if server.poll() is None:
            kill_everything(server, str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _check_store(database_url: str, completions: list[str], streams: list[Stream]) -> tuple[int, int]:
    """Asserts the store's consistency; returns how many requests were in flight at the kill, and how many
    of those visibly reached the store anyway (committed, but the answer never arrived)."""
    acked = {rid: key for s in streams for rid, key in s.ids.items()}
    last = {key: bodies[-1] for s in streams for key, bodies in s.acked.items()}
    in_flight = {key: body for s in streams for key, body in s.in_flight.items()}
    with FeedbackStore(database_url) as store, store.session() as session:
        ratings = {r.id: r for r in session.scalars(select(Rating).where(Rating.user.like("kill-%")))}
        comparisons = {c.id: c for c in session.scalars(select(Comparison).where(Comparison.user.like("kill-%")))}
        stored_completions = set(session.scalars(select(Completion.id).where(Completion.id.in_(completions))))
        orphans = session.scalar(
            select(func.count())
            .select_from(Rating)
            .outerjoin(Completion, Rating.completion_id == Completion.id)
            .where(Completion.id.is_(None))
        )
    assert stored_completions == set(completions)
    assert orphans == 0
    missing = [rid for rid in acked if rid not in ratings and rid not in comparisons]
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged judgements are not in the store"
    rows: dict[tuple, list] = {}
    for r in ratings.values():
        rows.setdefault(("rating", (r.completion_id, r.choice_index), r.user), []).append(r)
    for c in comparisons.values():
        assert {c.completion_a, c.completion_b} <= stored_completions
        rows.setdefault(("comparison", (c.completion_a, c.completion_b), c.user), []).append(c)
    assert all(len(found) == 1 for found in rows.values()), "a user's re-rate made a second row"
    for rid, key in acked.items():
        assert key in rows and rows[key][0].id == rid, f"{rid} is stored under another key than {key}"
    for key, body in last.items():
        stored = rows[key][0]
        candidates = [body] + ([in_flight[key]] if key in in_flight else [])
        if key[0] == "rating":
            assert (stored.rating, stored.correction) in [(b["rating"], b.get("correction")) for b in candidates]
        else:
            assert stored.winner in [b["winner"] for b in candidates]
    unacked = set(rows) - set(last)
    assert unacked <= set(in_flight), "a row exists that was neither acknowledged nor in flight"
    # in flight and stored anyway (committed, the answer lost): a new row, or a changed verdict
    landed = sum(
        1
        for key, body in in_flight.items()
        if key in rows and _holds(rows[key][0], body) and (key not in last or not _holds(rows[key][0], last[key]))
    )
    return len(in_flight), landed


def _holds(row: Rating | Comparison, body: dict) -> bool:
    if isinstance(row, Rating):
        return (row.rating, row.correction) == (body["rating"], body.get("correction"))
    return row.winner == body["winner"]


def _check_no_secret_in_logs(ray_tmp: Path, log: Path, secrets: list[str]) -> None:
    files = [log, *(p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink())]
    assert len(files) > 10, "no Ray logs to read: did the server's Ray run in its temp dir?"
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:  # sockets and the like
            continue
        for secret in secrets:
            assert secret.encode() not in data, f"a secret ({secret[:6]}...) is in {path}"
