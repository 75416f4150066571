"""Exit codes: every error class has its own, and docs/EXIT_CODES.md lists each of them."""

from __future__ import annotations

import re
from pathlib import Path

from cairn import errors

DOC = Path(__file__).resolve().parent.parent / "docs" / "EXIT_CODES.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(?:`(\w+)`|—)\s*\|")


def documented() -> dict[int, str | None]:
    rows: dict[int, str | None] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            code = int(match.group(1))
            assert code not in rows, f"exit code {code} is listed twice in {DOC.name}"
            rows[code] = match.group(2)
    return rows


def test_codes_are_distinct() -> None:
    classes = errors.all_error_classes()
    codes = [cls.exit_code for cls in classes]
    assert len(codes) == len(set(codes)), {c.__name__: c.exit_code for c in classes}


def test_every_error_class_is_in_the_table_with_its_code() -> None:
    rows = documented()
    for cls in errors.all_error_classes():
        assert rows.get(cls.exit_code) == cls.__name__, f"{cls.__name__} ({cls.exit_code}) is not in {DOC.name}"


def test_the_table_lists_nothing_else() -> None:
    classes = {cls.exit_code: cls.__name__ for cls in errors.all_error_classes()}
    assert documented() == {0: None, **classes}


def test_the_codes_the_cli_promises() -> None:
    assert errors.UsageError.exit_code == 2  # click's own usage errors exit 2 as well
    assert errors.PartialSuccess.exit_code == 3
    assert errors.Interrupted.exit_code == 130


def test_messages_are_one_line_and_the_str() -> None:
    exc = errors.WrongPassword("wrong password")
    assert str(exc) == exc.message == "wrong password"
    assert isinstance(exc, errors.CairnError)
