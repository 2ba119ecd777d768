"""JSON-array or JSONL files of records; every error names the file, the line (or row) and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from realign_data.errors import InputError


def read_located(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record)]`` with ``where`` = ``file:line`` (JSONL) or ``file: row i`` (JSON array)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        located = [(f"{path}: row {index}", row) for index, row in enumerate(rows)]
    else:
        located = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON may hold U+2028
            if line.strip():
                try:
                    located.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
    for where, record in located:
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return located


def require(where: str, record: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if field not in record:
            raise InputError(f"{where}: missing field '{field}'")


def read_records(path: Path, fields: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The records of a file, each holding ``fields``; an empty file is an error."""
    located = read_located(path)
    if not located:
        raise InputError(f"{path}: no records")
    for where, record in located:
        require(where, record, fields)
    return [record for _, record in located]
