"""The README stays true: CI runs the commands it shows, both install CPU torch first, and every fenced
`python` block runs, in order, against a served app."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import wait_until_finished

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
README_URL = "http://127.0.0.1:8000"


def readme_command(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", README)
    assert match, f"README.md has no ```bash block after <!-- {marker} -->"
    return match.group(1)


def ci_variables() -> dict[str, str]:
    """What .ci/run extracts from README.md, by running its own lines up to the extraction in bash."""
    script = (ROOT / ".ci" / "run").read_text()
    head = script[: script.index('if [ -z "$test_command" ]')]
    head = head.replace('cd "$(dirname "$0")/.."', f"cd {ROOT}").replace("pg_ctlcluster", ": pg_ctlcluster")
    shown = 'printf "%s\\0%s\\0%s" "$test_command" "$main_command" "$main_install"'
    out = subprocess.run(["bash", "-c", head + shown], capture_output=True, text=True, check=True).stdout
    return dict(zip(["test", "main", "install"], out.split("\0"), strict=True))


def test_ci_runs_exactly_the_readme_commands():
    extracted = ci_variables()
    assert extracted["test"] == readme_command("test-command")
    assert extracted["test"].endswith("&& pytest")
    assert extracted["main"] == readme_command("main-command")
    # the light install is the main command without its last step, and has no extras
    assert extracted["main"] == extracted["install"] + " && ratchet up"
    assert "pip install -e ." in extracted["install"] and "[" not in extracted["install"]


def test_both_commands_install_cpu_torch_before_anything_else():
    for marker in ("main-command", "test-command"):
        command = readme_command(marker)
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e"), marker


def test_readme_stays_a_short_product_page():
    assert len(README.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), f"README links to a missing page: {link}"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", README, flags=re.DOTALL)


@pytest.mark.e2e
@pytest.mark.slow
def test_readme_python_blocks_run_against_a_served_app(server, tmp_path, monkeypatch):
    from retrain.demo import corpus

    blocks = python_blocks()
    assert len(blocks) >= 3
    assert all(README_URL in block or "client." in block or "import" in block for block in blocks)
    # the fine-tuning block reads train.jsonl from the working directory, as a user's would
    rows = [
        {
            "messages": [
                {"role": "user", "content": corpus.prompts(topic)[0]},
                {"role": "assistant", "content": corpus.canonical_answer(topic, corpus.TARGET_STYLE)},
            ]
        }
        for topic in corpus.TOPICS[:8]
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # and the reinforcement block rft.jsonl: prompts, and the field its grader reads
    prompts = [{"messages": row["messages"][:1], "reference_answer": "TL;DR:"} for row in rows[:4]]
    (tmp_path / "rft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prompts))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        code = compile(block.replace(README_URL, server.url), f"README.md python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own code, run as a reader would run it
    assert namespace["answer"].id.startswith("chatcmpl-")
    assert namespace["answer"].model == "base" or namespace["answer"].model.startswith("ft-")
    assert namespace["rated"].status_code in (200, 201)
    assert namespace["job"].status == "succeeded"
    assert namespace["job"].fine_tuned_model.startswith("ft-")
    rft_job = wait_until_finished(namespace["client"], namespace["rft_job"].id)  # GRPO with the README's grader
    assert rft_job.status == "succeeded", rft_job.error
    assert rft_job.method.type == "reinforcement" and rft_job.fine_tuned_model.startswith("ft-")
