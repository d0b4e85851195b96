"""Run a python grader's `grade(sample, item)` outside the calling process, with limits.

`run_python_grader(source, cases, limits)` starts one child (retrain/grader_child.py) for all the cases of
a batch and returns one `CaseResult` per case, in order: a score, or the error the case raised (a file
read, a refused import, an exception of the grader's own). When the child as a whole fails (it ran past
its wall-clock time, its CPU time or its memory, or died) `SandboxFailure` says which; the caller
decides what that means (the graders endpoint reports it, a training run stops on it).

Isolation, in layers (the child's docstring lists its own): a fresh `python -I -S` with an empty
environment and a scratch working directory that is removed afterwards; where the kernel allows it
(`unshare --net`: root, or unprivileged user namespaces), a network namespace of its own with no way out.
`isolation()` says which layers this machine gives. The audit hook is a strong fence for honest mistakes
and simple misuse, not a security boundary against hostile code that exploits the interpreter itself:
run graders you did not write on a machine you can lose, or in a container.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("grader_child.py")


@dataclass(frozen=True)
class SandboxLimits:
    seconds: float = 10.0  # wall clock for one batch
    memory_mb: int = 512  # address space of the child


@dataclass(frozen=True)
class CaseResult:
    score: float | None
    error: str | None = None


class SandboxFailure(RuntimeError):
    """The grader's process as a whole failed (time, memory, crash); the message says which."""


@functools.cache
def _unshare_prefix() -> tuple[str, ...]:
    """The command prefix that gives the child a network namespace of its own, or () where none can."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    candidates = [(unshare, "--net", "--")] if os.geteuid() == 0 else []
    candidates.append((unshare, "--net", "--map-root-user", "--"))
    for prefix in candidates:
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return ()


def isolation() -> list[str]:
    """The layers this machine gives a python grader (for docs and `graders/validate`'s log)."""
    layers = ["subprocess", "resource limits", "audit hook (files, imports, os, sockets)"]
    if _unshare_prefix():
        layers.append("network namespace")
    return layers


def run_python_grader(source: str, cases: list[dict[str, Any]], limits: SandboxLimits) -> list[CaseResult]:
    """Grade every case (`{"sample": {...}, "item": {...}}`) with `source`'s grade(); see the module docstring."""
    if not cases:
        return []
    payload = json.dumps({"source": source, "cases": cases})
    cpu_seconds = max(1, int(limits.seconds) + 1)  # the wall clock normally fires first
    command = [
        *_unshare_prefix(),
        sys.executable, "-I", "-S", str(CHILD), str(limits.memory_mb), str(cpu_seconds),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ratchet-grader-") as scratch:
        try:
            done = subprocess.run(
                command, input=payload.encode(), capture_output=True, timeout=limits.seconds, cwd=scratch, env={}
            )
        except subprocess.TimeoutExpired:
            raise SandboxFailure(
                f"the python grader ran past its time limit ({limits.seconds:g} s for {len(cases)} case(s)) "
                "and was stopped: make grade() faster, or raise RATCHET_GRADER_TIMEOUT_SECONDS"
            ) from None
    if done.returncode != 0:
        raise SandboxFailure(_why_it_died(done, limits))
    try:
        answers = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SandboxFailure("the python grader's process gave no readable answer") from None
    if len(answers) != len(cases):
        raise SandboxFailure("the python grader's process answered a different number of cases")
    return [CaseResult(score=a.get("score"), error=a.get("error")) for a in answers]


def _why_it_died(done: subprocess.CompletedProcess, limits: SandboxLimits) -> str:
    code = done.returncode
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"the python grader ran out of CPU time ({limits.seconds:g} s) and was stopped"
    stderr = done.stderr.decode(errors="replace").strip()
    if "MemoryError" in stderr:
        return f"the python grader ran out of memory ({limits.memory_mb} MB) and was stopped"
    last = stderr.splitlines()[-1] if stderr else f"exit status {code}"
    return f"the python grader's process failed: {last}"
