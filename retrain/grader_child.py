"""The python grader's child process: runs a user's `grade(sample, item)` on many cases, walled in.

Run only by retrain/sandbox.py, as `python -I -S grader_child.py MEMORY_MB CPU_SECONDS` with the cases as
JSON on stdin; it prints one JSON list on stdout: `{"score": float}` or `{"error": "Type: message"}` per
case. It imports nothing of ratchet's and nothing outside the standard library (`-S`: no site-packages).

The walls, in the order they go up:
1) resource limits on this process: address space, CPU seconds, no file may be written (RLIMIT_FSIZE 0),
   no core dump;
2) the input is read and the allowed standard modules are imported (ALLOWED_MODULES);
3) an audit hook (PEP 578, which Python code cannot remove) refuses from then on: opening any file,
   importing any module not already loaded, and every os / socket / subprocess / ctypes / resource
   operation that Python audits (os.system, os.fork, os.remove, os.listdir, socket.connect, ...).
The parent adds a wall-clock timeout, an empty environment, a scratch working directory and, where the
kernel allows it, a network namespace of its own (no interface but loopback).
"""

import io
import json
import resource
import sys

# What a grader may import: pure computation. Everything here is loaded before the hook goes up.
ALLOWED_MODULES = (
    "math", "re", "json", "string", "statistics", "collections", "itertools", "functools", "difflib",
    "unicodedata", "decimal", "fractions", "heapq", "bisect", "operator", "datetime", "random", "typing",
    "dataclasses", "enum", "textwrap",
)  # fmt: skip
DENIED_PREFIXES = (
    "os.", "shutil.", "socket.", "subprocess.", "ctypes.", "resource.", "urllib.", "http.", "ftplib.",
    "smtplib.", "imaplib.", "poplib.", "nntplib.", "telnetlib.", "webbrowser.", "glob.", "pty.", "fcntl.",
    "mmap.", "sqlite3.", "syslog.", "_posixsubprocess.", "signal.",
)  # fmt: skip


def _limit(memory_mb: int, cpu_seconds: int) -> None:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        raise PermissionError(f"the grader sandbox does not allow opening files ({args[0]!r})")
    if event == "import":
        raise ImportError(
            f"the grader sandbox does not allow importing {args[0]!r}; allowed: {', '.join(ALLOWED_MODULES)}"
        )
    if event.startswith(DENIED_PREFIXES):
        raise PermissionError(f"the grader sandbox does not allow {event}")


def main() -> None:
    # 1) limits
    _limit(int(sys.argv[1]), int(sys.argv[2]))
    # 2) input and the allowed modules, while files may still be read
    payload = json.loads(sys.stdin.read())
    for name in ALLOWED_MODULES:
        __import__(name)
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()  # a grader's print() must not corrupt the answer
    # 3) the wall
    sys.addaudithook(_hook)
    namespace: dict = {"__name__": "grader"}
    try:
        exec(compile(payload["source"], "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the grader's source must define a function grade(sample, item)")
    except BaseException as error:  # noqa: BLE001 - every failure is the grader's, reported per case
        results = [{"error": _describe(error)} for _ in payload["cases"]]
    else:
        results = [_run(grade, case) for case in payload["cases"]]
    real_stdout.write(json.dumps(results))
    real_stdout.flush()


def _run(grade, case: dict) -> dict:
    try:
        value = grade(case["sample"], case["item"])
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"grade() must return a number, got {type(value).__name__}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"grade() returned {value}, not a finite number")
        return {"score": value}
    except BaseException as error:  # noqa: BLE001 - MemoryError and RecursionError too: the case failed
        return {"error": _describe(error)}


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


if __name__ == "__main__":
    main()
