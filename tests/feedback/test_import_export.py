"""JSONL import (all or nothing, line-exact errors, dedup) and export (canonical, round trip), on both stores."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, func, select

from feedback.db import make_engine, new_session
from feedback.export import export_jsonl
from feedback.formats import canonical_line
from feedback.ingest import import_jsonl
from feedback.models import Completion, Example, Rating


def sft(question: str, answer: str, **extra: object) -> str:
    row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}
    return canonical_line(row)


def dpo(question: str, good: str, bad: str) -> str:
    return canonical_line(
        {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}],
        }
    )


def kto(question: str, answer: str, label: bool) -> str:
    row = {"prompt": [{"role": "user", "content": question}], "completion": [{"role": "assistant", "content": answer}]}
    return canonical_line({**row, "label": label})


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def write(tmp_path: Path, *lines: str, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def stored(engine: Engine) -> int:
    with new_session(engine) as session:
        return session.scalar(select(func.count()).select_from(Example))


def export(engine: Engine, kind: str, *, scrub: bool = True) -> list[str]:
    out = io.StringIO()
    count = export_jsonl(engine, kind, out, scrub=scrub)
    lines = out.getvalue().splitlines()
    assert count == len(lines)
    return lines


def test_every_bad_line_is_reported_and_nothing_written(engine: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        sft("fine", "ok"),
        '{"messages": [}',
        "",
        "[]",
        '{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        sft("fine again", "ok"),
        '{"messages": [{"role": "user", "content": "no answer"}]}',
        json.dumps({**json.loads(dpo("q", "a", "b")), "preferred_output": []}),
        dpo("q", "same", "same"),
        '{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}',
        kto("q", "a", True)[:-1] + ', "extra": 1}',
    )
    report = import_jsonl(engine, path)
    assert report.errors == [
        f"{path}:2: bad JSON: Expecting value at column 15",
        f"{path}:4: expected a JSON object, got an array",
        f'{path}:5: messages[0] has unknown role "tool" (allowed: system, developer, user, assistant)',
        f"{path}:7: no assistant message to learn from",
        f"{path}:8: preferred_output must hold exactly one assistant message, got 0 messages",
        f"{path}:9: preferred_output and non_preferred_output are identical",
        f'{path}:10: KTO row is missing "label"',
        f'{path}:11: unexpected key "extra" in a KTO row (allowed: prompt, completion, label)',
    ]
    assert not report.committed and report.total == 0
    assert stored(engine) == 0


def test_skip_invalid_imports_the_good_lines(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, sft("a", "1"), "not json", sft("b", "2"))
    report = import_jsonl(engine, path, skip_invalid=True)
    assert report.errors == [f"{path}:2: bad JSON: Expecting value at column 1"]
    assert report.committed and report.skipped == 1 and report.imported["sft"] == 2
    assert stored(engine) == 2


def test_file_level_problems(engine: Engine, tmp_path: Path) -> None:
    cases = {
        "missing.jsonl": (None, "no such file"),
        "empty.jsonl": (b"", "empty file: no rows to import"),
        "blank.jsonl": (b"\n  \n\r\n", "empty file: no rows to import"),
        "utf16.jsonl": ('{"a": 1}\n'.encode("utf-16"), "is UTF-16 (byte order mark): save it as UTF-8"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        report = import_jsonl(engine, path, skip_invalid=True)
        assert report.errors == [f"{path}: {reason}"]
        assert not report.committed
    assert stored(engine) == 0


def test_encoding_bom_crlf_and_latin1(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    good = sft("café", "oui").encode("utf-8")
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + sft("caf\xe9", "non").encode("latin-1") + b"\r\n")
    report = import_jsonl(engine, path)
    assert report.errors == [f"{path}:2: not UTF-8 (byte 0xe9 at byte 47): save the file as UTF-8"]
    assert stored(engine) == 0
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n\r\n")
    assert import_jsonl(engine, path).imported["sft"] == 1


def test_duplicates_dropped_within_the_file_and_against_the_store(engine: Engine, tmp_path: Path) -> None:
    first = write(tmp_path, sft("a", "1"), sft("b", "2"), sft("a", "1"), name="first.jsonl")
    report = import_jsonl(engine, first)
    assert (report.imported["sft"], report.duplicates) == (2, 1)
    # the same row in another layout is the same row
    messy = '{"messages":[{"content":"b","role":"user"},{"content":"2","role":"assistant"}]}'
    second = write(tmp_path, messy, sft("c", "3"), name="second.jsonl")
    report = import_jsonl(engine, second)
    assert (report.imported["sft"], report.duplicates) == (1, 1)
    with new_session(engine) as session:
        sources = session.scalars(select(Example.source).order_by(Example.id)).all()
    assert sources == ["first.jsonl:1", "first.jsonl:2", "second.jsonl:2"]


def test_good_files_round_trip_byte_for_byte(engine: Engine, tmp_path: Path) -> None:
    files = {
        "sft": [
            sft("Hi", "Hello!"),
            sft("Ünïcødé?", "✓ yes", weight=1),
            canonical_line(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "5", "weight": 0},
                        {"role": "user", "content": "Really?"},
                        {"role": "assistant", "content": "4", "weight": 1},
                    ]
                }
            ),
        ],
        "dpo": [dpo("2+2?", "4", "5"), dpo("Capital of France?", "Paris", "Lyon")],
        "kto": [kto("2+2?", "4", True), kto("2+2?", "5", False)],
    }
    for kind, lines in files.items():
        path = write(tmp_path, *lines, lines[0], name=f"{kind}.jsonl")
        report = import_jsonl(engine, path)
        assert report.imported[kind] == len(lines) and report.duplicates == 1
        assert export(engine, kind) == lines
        # and what was exported imports again as nothing new
        again = write(tmp_path, *export(engine, kind), name=f"{kind}-again.jsonl")
        assert import_jsonl(engine, again).duplicates == len(lines)


def test_mixed_file_and_canonical_export(engine: Engine, tmp_path: Path) -> None:
    messy_sft = json.dumps(
        {
            "messages": [
                {"content": [{"type": "text", "text": "Hi"}], "role": "user"},
                {"content": "Yo", "role": "assistant"},
            ]
        },
        separators=(",", ":"),
    )
    path = write(tmp_path, messy_sft, dpo("q", "a", "b"), kto("q", "a", False), dpo("r", "a", "b"))
    report = import_jsonl(engine, path)
    assert report.imported == {"sft": 1, "dpo": 2, "kto": 1}
    assert export(engine, "sft") == [sft("Hi", "Yo")]
    assert export(engine, "dpo") == [dpo("q", "a", "b"), dpo("r", "a", "b")]
    assert export(engine, "kto") == [kto("q", "a", False)]


def test_export_scrubs_pii_only_where_there_is_some(engine: Engine, tmp_path: Path) -> None:
    clean, leaky = sft("Hi", "Hello"), sft("My email is ann@example.com", "Noted, call +1 555 123 4567")
    import_jsonl(engine, write(tmp_path, clean, leaky))
    assert export(engine, "sft") == [clean, sft("My email is [email]", "Noted, call [phone]")]
    assert export(engine, "sft", scrub=False) == [clean, leaky]


def test_export_adds_the_rows_feedback_gives(engine: Engine, tmp_path: Path) -> None:
    import_jsonl(engine, write(tmp_path, sft("imported", "row"), kto("imported", "row", True)))
    with new_session(engine) as session, session.begin():
        messages = [{"role": "user", "content": "2+2?"}]
        choices = [{"index": 0, "text": "4", "finish_reason": "stop"}]
        session.add(
            Completion(
                id="chatcmpl-1", model="current", adapter="base", base_model="demo", messages=messages, choices=choices
            )
        )
        session.flush()
        session.add(Rating(id="fb-1", completion_id="chatcmpl-1", rating=-1, correction="four"))
    assert export(engine, "sft") == [sft("imported", "row"), sft("2+2?", "four")]
    assert export(engine, "dpo") == [dpo("2+2?", "four", "4")]
    assert export(engine, "kto") == [kto("imported", "row", True), kto("2+2?", "4", False), kto("2+2?", "four", True)]


def test_token_limit_on_import(engine: Engine, tmp_path: Path) -> None:
    def chars(messages: list[dict]) -> int:
        return sum(len(m["content"]) for m in messages)

    path = write(tmp_path, sft("Hi", "Hello"), sft("Hi", "x" * 40))
    report = import_jsonl(engine, path, count_tokens=chars, max_tokens=20)
    assert report.errors == [f"{path}:2: 42 tokens > context 20"]
    assert stored(engine) == 0


def test_a_failure_mid_insert_leaves_nothing(engine: Engine, tmp_path: Path) -> None:
    # A real trigger that fails the third insert: the first two must not survive.
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                sa.text(
                    "CREATE TRIGGER boom BEFORE INSERT ON examples WHEN NEW.source LIKE '%\\:3' "
                    "BEGIN SELECT RAISE(ABORT, 'boom'); END"
                )
            )
        else:
            connection.execute(
                sa.text(
                    "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.source LIKE '%\\:3' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$"
                )
            )
            connection.execute(
                sa.text("CREATE TRIGGER boom BEFORE INSERT ON examples FOR EACH ROW EXECUTE FUNCTION boom()")
            )
    path = write(tmp_path, sft("a", "1"), sft("b", "2"), sft("c", "3"), sft("d", "4"))
    with pytest.raises(sa.exc.DatabaseError, match="boom"):
        import_jsonl(engine, path)
    assert stored(engine) == 0


def test_export_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown kind 'rlhf': choose one of sft, dpo, kto"):
        export_jsonl(make_engine("sqlite://"), "rlhf", io.StringIO())  # type: ignore[arg-type]
