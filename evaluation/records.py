"""JSON-array or JSONL files of records, and CSV tables; every error names the file, the line (or row) and the field.

Files may start with a UTF-8 byte-order mark (as editors on Windows write them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realign_data.errors import InputError
from realign_data.files import decode_utf8, json_kind, json_records


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_text(path: Path) -> str:
    """A file's UTF-8 text; a folder, a missing file or bytes that are not UTF-8 are an InputError naming it."""
    return decode_utf8(_read_bytes(path), str(path))


def read_located(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record)]`` with ``where`` = ``file:line`` (JSONL) or ``file: row i`` (JSON array)."""
    return json_records(_read_bytes(path), str(path))


def require(where: str, record: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if field not in record:
            raise InputError(f"{where}: missing field '{field}'")


def require_strings(where: str, record: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Each of ``fields`` is present and a string."""
    require(where, record, fields)
    for field in fields:
        if not isinstance(record[field], str):
            raise InputError(f"{where}: field '{field}' must be a string, got {json_kind(record[field])}")


def read_records(path: Path, fields: tuple[str, ...] = (), strings: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The records of a file, each holding ``fields`` (and ``strings``, as strings); an empty file is an error."""
    located = read_located_records(path, fields, strings)
    return [record for _, record in located]


def read_located_records(
    path: Path, fields: tuple[str, ...] = (), strings: tuple[str, ...] = ()
) -> list[tuple[str, dict[str, Any]]]:
    located = read_located(path)
    if not located:
        raise InputError(f"{path}: no records")
    for where, record in located:
        require(where, record, fields)
        require_strings(where, record, strings)
    return located


def read_table(
    path: Path, option: str, columns: tuple[str, ...], numeric: tuple[str, ...] = (), index_col: int | None = None
):
    """A CSV table (pandas) with ``columns``; values of ``numeric`` columns must be numbers (empty cells allowed)."""
    import pandas as pd

    read_text(path)  # exists, is a file, is UTF-8
    try:
        table = pd.read_csv(path, index_col=index_col, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise InputError(f"{path}: not a CSV table ({option}): {exc}") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} ({option} needs {', '.join(columns)})"
        )
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(f"{path}:{row + 2}: column '{column}' must be a number, got {table[column].iloc[row]!r}")
        table[column] = values
    return table
