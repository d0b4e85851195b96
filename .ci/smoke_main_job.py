"""Smoke of the main job on the light install: the `ratchet` of a venv made by the README's main-command install.

    python .ci/smoke_main_job.py /path/to/light-venv/bin/ratchet

Runs with a Python that has the official `openai` SDK (the test venv); the server and every `ratchet` command
run from the light venv given as argument, on a fresh workspace and a free port. Each step is named; the first
one that fails ends the run with `main-job smoke: FAILED at <step>: <reason>` and exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from openai import OpenAI

SERVE_START_SECONDS = 900  # a cold workspace builds the demo model first
STOP_SECONDS = 120
DEMO_LINE = re.compile(r"^preference: \d+% -> \d+% after \d+ ratings, quality \d+% -> \d+%, \d+ promotions, \d+m\d+s$")


class StepFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(name: str, action: Callable[[], object]) -> object:
    started = time.monotonic()
    print(f"main-job smoke: {name} ...", flush=True)
    try:
        result = action()
    except StepFailed as error:
        raise StepFailed(f"{name}: {error}") from None
    except Exception as error:  # any failure of a step is that step's failure, named
        raise StepFailed(f"{name}: {type(error).__name__}: {error}") from None
    print(f"main-job smoke: {name} ok ({time.monotonic() - started:.1f} s)", flush=True)
    return result


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise StepFailed(reason)


def run_ratchet(ratchet: str, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([ratchet, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StepFailed(f"`ratchet {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def main(ratchet: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="ratchet-main-smoke-"))
    home, port = work / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RATCHET_HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
        # a shorter demo-model build than `ratchet init`'s default keeps CI short; answers stay canonical
        "RATCHET_DEMO_STEPS": os.environ.get("RATCHET_SMOKE_DEMO_STEPS", "300"),
    }
    with open(work / "serve.log", "w") as log:
        server = subprocess.Popen(
            [ratchet, "serve", "--home", str(home), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            smoke_server(ratchet, env, server, url, work)
            step("Ctrl-C stops the server", lambda: interrupt(server))
        except StepFailed:
            log.flush()
            print("---- last lines of `ratchet serve` ----", file=sys.stderr)
            print("\n".join((work / "serve.log").read_text(errors="replace").splitlines()[-60:]), file=sys.stderr)
            raise
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
    step("ratchet up: serves with the loop, stops on Ctrl-C", lambda: up(ratchet, env, work))
    step("ratchet demo --minutes 3", lambda: demo(ratchet, env, work))


def smoke_server(ratchet: str, env: dict, server: subprocess.Popen, url: str, work: Path) -> None:
    step("ratchet serve answers /health", lambda: wait_healthy(server, url))
    client = OpenAI(base_url=f"{url}/v1", api_key="unused-without-keys", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Tell me about tea."}]

    def chat() -> str:
        answer = client.chat.completions.create(model="current", messages=messages, max_tokens=32)
        check(answer.id.startswith("chatcmpl-"), f"completion id {answer.id!r}")
        check(bool(answer.choices[0].message.content), "empty answer")
        check(answer.model == "base", f"model {answer.model!r}, expected base (no adapter promoted yet)")
        return answer.id

    completion_id = step("openai SDK chat (non-stream)", chat)

    def chat_stream() -> None:
        stream = client.chat.completions.create(model="current", messages=messages, max_tokens=32, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        check(bool(text), "the stream carried no text")

    step("openai SDK chat (stream)", chat_stream)

    def rate() -> None:
        body = {"completion_id": completion_id, "choice_index": 0, "rating": 1, "user": "smoke"}
        response = httpx.post(f"{url}/v1/feedback", json=body, timeout=60)
        check(response.status_code == 201, f"POST /v1/feedback -> {response.status_code} {response.text[:300]}")
        check(response.json()["object"] == "feedback", response.text[:300])

    step("rating through POST /v1/feedback", rate)

    def upload() -> None:
        path = work / "train.jsonl"
        row = {"messages": [{"role": "user", "content": "Tea?"}, {"role": "assistant", "content": "Green tea."}]}
        path.write_text(json.dumps(row) + "\n")
        with path.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="fine-tune")
        check(uploaded.id.startswith("file-"), f"file id {uploaded.id!r}")
        check(client.files.retrieve(uploaded.id).bytes == path.stat().st_size, "stored size differs")

    step("file upload through client.files.create (multipart)", upload)

    def status() -> None:
        done = run_ratchet(ratchet, "status", "--json", "--home", env["RATCHET_HOME"], env=env)
        state = json.loads(done.stdout)
        check(state["counts"]["ratings"]["total"] == 1, f"status counts {state['counts']}")
        check(state["engine"] == "hf", f"engine {state['engine']!r}")

    step("ratchet status --json", status)

    def chat_commands() -> None:
        remote = run_ratchet(ratchet, "chat", "--url", url, "Tell me about tea.", env=env)
        check(bool(remote.stdout.strip()), "`ratchet chat --url` printed no answer")
        local = run_ratchet(ratchet, "chat", "--home", env["RATCHET_HOME"], "Tell me about tea.", env=env)
        check(bool(local.stdout.strip()), "`ratchet chat` printed no answer")

    step("ratchet chat (through the server and in-process)", chat_commands)

    def simulate() -> None:
        done = run_ratchet(ratchet, "simulate", "--ratings", "10", "--home", env["RATCHET_HOME"], env=env)
        check(done.stdout.startswith("posted 10 ratings"), f"simulate printed {done.stdout!r}")

    step("ratchet simulate --ratings 10", simulate)

    def web_ui() -> None:  # the pages and their assets ship in the light install (package data)
        root = httpx.get(url, timeout=60)
        check(root.status_code == 307 and root.headers.get("location") == "/ui", f"GET / -> {root.status_code}")
        for path in ("/ui", "/ui/arena", "/ui/dashboard"):
            page = httpx.get(url + path, timeout=60)
            check(page.status_code == 200 and "<div id=\"app\">" in page.text, f"GET {path} -> {page.status_code}")
        for asset in ("ui.js", "playground.js", "arena.js", "dashboard.js", "style.css", "icon.svg"):
            found = httpx.get(f"{url}/ui/assets/{asset}", timeout=60)
            check(found.status_code == 200 and found.content, f"GET /ui/assets/{asset} -> {found.status_code}")

    step("web UI pages and assets (/ui)", web_ui)


def wait_healthy(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + SERVE_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise StepFailed(f"`ratchet serve` exited {server.returncode} before /health answered")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise StepFailed(f"/health did not answer 200 within {SERVE_START_SECONDS} s")


def interrupt(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        code = server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"still running {STOP_SECONDS} s after Ctrl-C") from None
    check(code == 0, f"exited {code} after Ctrl-C")


def up(ratchet: str, env: dict, work: Path) -> None:
    """The README's main job on the same workspace: healthy, the loop reported idle or waiting, a clean stop."""
    port = free_port()
    with open(work / "up.log", "w") as log:
        server = subprocess.Popen(
            [ratchet, "up", "--home", env["RATCHET_HOME"], "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(server, f"http://127.0.0.1:{port}")
            deadline, loop = time.monotonic() + 60, {}
            while time.monotonic() < deadline and loop.get("state") in (None, "stopped"):
                status = run_ratchet(ratchet, "status", "--json", "--home", env["RATCHET_HOME"], env=env)
                loop = json.loads(status.stdout)["loop"]
                time.sleep(1)
            check(loop.get("state") not in (None, "stopped"), f"status reports no running loop: {loop}")
            printed = (work / "up.log").read_text(errors="replace")
            check(f"web UI: http://127.0.0.1:{port}/ui" in printed, "`ratchet up` did not print the web UI's URL")
            interrupt(server)
        except StepFailed:
            log.flush()
            print("\n".join((work / "up.log").read_text(errors="replace").splitlines()[-60:]), file=sys.stderr)
            raise
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)


def demo(ratchet: str, env: dict, work: Path) -> None:
    """The demo on the workspace the server used (its demo model is built), with a port of its own."""
    args = ["demo", "--home", env["RATCHET_HOME"], "--port", str(free_port()), "--minutes", "3", "--ratings", "30"]
    done = run_ratchet(ratchet, *args, env=env, timeout=600)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    check(bool(DEMO_LINE.match(last)), f"last line of stdout is {last!r}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: smoke_main_job.py /path/to/light-venv/bin/ratchet")
    try:
        main(sys.argv[1])
    except StepFailed as failure:
        print(f"main-job smoke: FAILED at {failure}", file=sys.stderr)
        sys.exit(1)
    print("main-job smoke: passed")
