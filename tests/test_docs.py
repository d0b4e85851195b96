"""docs/ stays true: the configuration page is Settings, every benchmark table says where it came from, and the
project names no file it does not ship."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_configuration_page_is_generated_from_settings():
    from ratchet.settings import Settings
    from ratchet.settings_doc import render_configuration

    page = (DOCS / "configuration.md").read_text()
    assert page == render_configuration(), "run: python -m ratchet.settings_doc > docs/configuration.md"
    for name in Settings.model_fields:
        assert f"`RATCHET_{name.upper()}`" in page


def _tables(markdown: str) -> list[tuple[int, str]]:
    """(line number, the text between the previous table or heading and the table) for each table."""
    lines, found, context, in_table = markdown.splitlines(), [], [], False
    for number, line in enumerate(lines, 1):
        if line.startswith("|"):
            if not in_table:
                found.append((number, "\n".join(context)))
            in_table = True
            continue
        if in_table or line.startswith("#"):
            context = []
        in_table = False
        context.append(line)
    return found


def test_every_benchmark_table_names_its_date_commit_and_command():
    tables = _tables((DOCS / "benchmarks.md").read_text())
    assert len(tables) >= 5
    for line, context in tables:
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", context), f"benchmarks.md:{line}: the table has no date"
        assert re.search(r"\b[0-9a-f]{7,40}\b", context), f"benchmarks.md:{line}: the table has no commit"
        assert "benchmarks/" in context, f"benchmarks.md:{line}: the table names no benchmark command"


def test_the_project_cites_no_file_it_does_not_ship():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.split():
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml"} or not path.is_file():
            continue
        if name == "tests/test_docs.py":
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {ref}" for ref in ("DESIGN.md", "FACTS.md", "STYLE.md") if ref in text]
    assert not offenders
