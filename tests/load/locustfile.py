"""A realistic mix of ratchet traffic for locust, against a LOCAL server only.

    locust -f tests/load/locustfile.py --headless -u 10 -r 10 -t 20s \
        --host http://127.0.0.1:8000 --csv benchmarks/out/load

Each simulated user lists the models, then chats about the demo corpus's topics (non-streaming and
streaming, the stream read to `data: [DONE]`), rates most answers (`POST /v1/feedback`, thumbs, some with
a correction), now and then compares two of its answers (`POST /v1/comparisons`) or lists the models
again. Stats names: `chat`, `chat stream`, `feedback`, `comparisons`, `models`.

Overload is not failure: a 429 or 503 that carries `Retry-After` and OpenAI's error body is reported
under `<name> [shed]` as a success, and that user waits the Retry-After (capped) before its next task.
Anything else that is not 2xx, a stream without `[DONE]`, or an error in the stream is a failure.

Bounds: the host must be 127.0.0.1 (anything else is refused before a request is sent); every user stops
after RATCHET_LOAD_MAX_TASKS tasks (default 1000); the whole run stops after RATCHET_LOAD_MAX_SECONDS
(default 600) even without `-t`; every request has a timeout and a stream is read for a bounded number
of lines.

Environment: RATCHET_LOAD_RUN names the run (users are `load-<run>-<n>`, so a test can find the run's
ratings in the store); RATCHET_LOAD_RECORD, when set, is a file that gets one line per acknowledged
rating or comparison: `kind<TAB>status<TAB>completion ids<TAB>user`. RATCHET_API_KEY is sent as the
bearer token when set; RATCHET_LOAD_MAX_TOKENS caps each answer (default 48).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
import uuid
from urllib.parse import urlsplit

import gevent
from locust import HttpUser, events, task
from locust import stats as locust_stats
from locust.exception import StopUser

from retrain.demo import corpus

ALLOWED_HOSTS = {"127.0.0.1"}
MAX_TASKS = int(os.environ.get("RATCHET_LOAD_MAX_TASKS", "1000"))
MAX_SECONDS = float(os.environ.get("RATCHET_LOAD_MAX_SECONDS", "600"))
MAX_TOKENS = int(os.environ.get("RATCHET_LOAD_MAX_TOKENS", "48"))
RUN = os.environ.get("RATCHET_LOAD_RUN") or uuid.uuid4().hex[:8]
RECORD = os.environ.get("RATCHET_LOAD_RECORD", "")
API_KEY = os.environ.get("RATCHET_API_KEY", "")
REQUEST_TIMEOUT = 60.0
MAX_BACKOFF = 5.0  # seconds: a shed user waits Retry-After, but never longer than this
PROMPTS = [p for topic in corpus.TOPICS for p in corpus.prompts(topic)] + corpus.heldout_prompts()
_user_numbers = itertools.count()


def refusal(host: str | None) -> str | None:
    """Why this host may not be load-tested (None when it may): only a local server on 127.0.0.1."""
    if not host:
        return "no host: pass --host http://127.0.0.1:PORT"
    parts = urlsplit(host)
    if parts.scheme != "http" or parts.hostname not in ALLOWED_HOSTS:
        return f"refusing to load-test {host!r}: this locustfile targets only http://127.0.0.1:PORT"
    return None


_options = None  # locust's parsed command line, once init has run


@events.init.add_listener
def _check_host(environment, **_kwargs) -> None:
    global _options
    _options = environment.parsed_options
    # A host given on the command line is checked at once; the web UI's host is checked by each user.
    headless = environment.parsed_options is not None and environment.parsed_options.headless
    reason = refusal(environment.host)
    if reason and (environment.host or headless):
        print(reason, file=sys.stderr)
        sys.exit(2)


@events.quit.add_listener
def _write_final_csv(**_kwargs) -> None:
    # locust rewrites its CSV once a second but not at exit, so the last second of requests would be
    # missing: yield to its writer once more, now that every user has stopped.
    if _options is not None and getattr(_options, "csv_prefix", None):
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.5)


@events.test_start.add_listener
def _cap_run_time(environment, **_kwargs) -> None:
    if environment.runner is not None:
        gevent.spawn_later(MAX_SECONDS, environment.runner.quit)


def _is_openai_error(response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _record(kind: str, status: int, ids: list[str], user: str) -> None:
    if RECORD:
        with open(RECORD, "a") as out:  # one short line per write: appends from greenlets do not interleave
            out.write(f"{kind}\t{status}\t{','.join(ids)}\t{user}\n")


class ChatUser(HttpUser):
    """One person using a chat front end that has thumbs buttons and an A/B view."""

    def on_start(self) -> None:
        reason = refusal(self.host)
        if reason:
            print(reason, file=sys.stderr)
            self.environment.process_exit_code = 2
            raise StopUser()
        self.user_name = f"load-{RUN}-{next(_user_numbers)}"
        self.tasks_done = 0
        self.backoff = 0.0
        self.answers: list[str] = []  # completion ids of this user's answers, newest last
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"
        self._list_models()  # a front end lists the models when it opens

    def wait_time(self) -> float:
        """Think time between tasks; a shed user waits its Retry-After instead."""
        wait, self.backoff = max(self.backoff, random.uniform(0.2, 1.0)), 0.0
        return wait

    def _bounded(self) -> None:
        self.tasks_done += 1
        if self.tasks_done > MAX_TASKS:
            raise StopUser()

    def _shed(self, response, name: str) -> bool:
        """A 429/503 with Retry-After and OpenAI's error body: report it as `<name> [shed]` and back off."""
        retry_after = response.headers.get("Retry-After")
        if response.status_code not in (429, 503) or retry_after is None:
            return False
        response.request_meta["name"] = f"{name} [shed]"
        if not _is_openai_error(response):
            response.failure(f"{response.status_code} without OpenAI's error body: {response.text[:200]!r}")
            return True
        try:
            self.backoff = min(max(float(retry_after), 0.0), MAX_BACKOFF)
        except ValueError:
            self.backoff = 1.0
        response.success()
        return True

    def _chat_body(self, *, stream: bool) -> dict:
        return {
            "model": "current",
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": random.randint(max(1, MAX_TOKENS // 2), MAX_TOKENS),
            "temperature": 1.0,
            "stream": stream,
            "user": self.user_name,
        }

    # -- tasks ---------------------------------------------------------------------------------
    @task(4)
    def chat(self) -> None:
        self._bounded()
        self._chat()

    def _chat(self) -> None:
        body = self._chat_body(stream=False)
        with self.client.post(
            "/v1/chat/completions", json=body, name="chat", catch_response=True, timeout=REQUEST_TIMEOUT
        ) as response:
            if self._shed(response, "chat"):
                return
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            answer = _json(response)
            if not answer.get("id", "").startswith("chatcmpl-") or not answer.get("choices"):
                response.failure(f"not a chat completion: {response.text[:200]}")
                return
        self._answered(answer["id"], body["messages"][0]["content"])

    @task(4)
    def chat_stream(self) -> None:
        self._bounded()
        body = self._chat_body(stream=True)
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            name="chat stream",
            stream=True,
            catch_response=True,
            timeout=REQUEST_TIMEOUT,
        ) as response:
            if self._shed(response, "chat stream"):
                return
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            completion_id, problem, size = self._read_stream(response, body["max_tokens"])
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000  # to [DONE]
            response.request_meta["response_length"] = size
            if problem:
                response.failure(problem)
                return
        self._answered(completion_id, body["messages"][0]["content"])

    def _read_stream(self, response, max_tokens: int) -> tuple[str, str | None, int]:
        """Read SSE events to `data: [DONE]`: (completion id, what went wrong or None, bytes read)."""
        completion_id, size = "", 0
        # role chunk + at most one chunk per token + finish chunk + [DONE], each followed by a blank line
        lines = response.iter_lines(decode_unicode=True)
        for line in itertools.islice(lines, 2 * (max_tokens + 8)):
            size += len(line) + 1
            if not line:
                continue
            if not line.startswith("data: "):
                return completion_id, f"not an SSE data line: {line[:100]!r}", size
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return completion_id, (None if completion_id else "no chunk before [DONE]"), size
            chunk = json.loads(data)
            if "error" in chunk:
                return completion_id, f"error in the stream: {chunk['error']}", size
            completion_id = completion_id or chunk.get("id", "")
        return completion_id, "the stream ended without data: [DONE]", size

    def _answered(self, completion_id: str, prompt: str) -> None:
        """The user reads the answer and, most of the time, rates it."""
        self.answers = [*self.answers[-7:], completion_id]
        if random.random() < 0.7:
            self._rate(completion_id, prompt)

    def _rate(self, completion_id: str, prompt: str) -> None:
        rating = random.choice([1, -1])
        body: dict = {"completion_id": completion_id, "choice_index": 0, "rating": rating, "user": self.user_name}
        topic = corpus.topic_of(prompt)
        if rating == -1 and topic is not None and random.random() < 0.5:
            body["correction"] = corpus.canonical_answer(topic, random.choice(corpus.STYLES))
        with self.client.post(
            "/v1/feedback", json=body, name="feedback", catch_response=True, timeout=REQUEST_TIMEOUT
        ) as response:
            if self._shed(response, "feedback"):
                return
            if response.status_code not in (200, 201) or not _json(response).get("id", "").startswith("fb-"):
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
        _record("feedback", response.status_code, [completion_id], self.user_name)

    @task(2)
    def compare(self) -> None:
        self._bounded()
        if len(self.answers) < 2:
            return self._chat()
        pair = random.sample(self.answers, 2)
        winner = random.choice([*pair, "tie"])
        body = {"completion_ids": pair, "winner": winner, "user": self.user_name}
        with self.client.post(
            "/v1/comparisons", json=body, name="comparisons", catch_response=True, timeout=REQUEST_TIMEOUT
        ) as response:
            if self._shed(response, "comparisons"):
                return
            if response.status_code not in (200, 201):
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
        _record("comparison", response.status_code, pair, self.user_name)

    @task(1)
    def models(self) -> None:
        self._bounded()
        self._list_models()

    def _list_models(self) -> None:
        with self.client.get("/v1/models", name="models", catch_response=True, timeout=REQUEST_TIMEOUT) as response:
            if self._shed(response, "models"):
                return
            data = _json(response).get("data") if response.status_code == 200 else None
            ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
            if ids[:2] != ["current", "base"]:
                response.failure(f"{response.status_code}: {response.text[:200]}")
