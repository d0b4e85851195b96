"""The README's two commands stay true: CI runs the test command it shows, and both install CPU torch first."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text)
    assert match, f"README.md has no ```bash block after <!-- {marker} -->"
    return match.group(1)


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"test_command=\$\((awk .+?README\.md)\)", script)
    assert awk, ".ci/run no longer extracts the test command from README.md"
    extracted = subprocess.run(["bash", "-c", awk.group(1)], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert extracted == readme_command("test-command")
    assert extracted.rstrip().endswith("pytest") or " pytest" in extracted


def test_both_commands_install_cpu_torch_before_anything_else():
    for marker in ("main-command", "test-command"):
        command = readme_command(marker)
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e"), marker
