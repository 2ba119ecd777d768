"""File plumbing every package shares: strict JSON, atomic writes, JSON/JSONL records, sha256 of files, content keys,
the cache root.

It imports nothing heavier than the standard library, so writing a report or hashing a file never loads DuckDB,
pyarrow or torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from realign_data.errors import InputError


def realign_home() -> Path:
    """Root of the toolkit's caches: ``$REALIGN_HOME``, default ``~/.cache/realign``."""
    return Path(os.environ.get("REALIGN_HOME", "~/.cache/realign")).expanduser()


def json_safe(data: Any) -> Any:
    """``data`` as plain JSON values that any parser reads: numpy scalars unwrapped, NaN and infinities as None."""
    if hasattr(data, "item") and getattr(data, "ndim", None) == 0:  # a numpy scalar
        data = data.item()
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def json_text(data: Any, indent: int | None = None) -> str:
    """Strict JSON text (``null`` for NaN, never a bare ``NaN``): one line unless ``indent`` is given."""
    return json.dumps(json_safe(data), indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` to a temporary file, fsync it and rename it over ``path``: all of it or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically."""
    _write_atomic(path, [json_text(data, indent=2) + "\n"])


def write_jsonl(path: Path, records: Iterable[Any]) -> None:
    """Write strict JSON lines atomically, one record per line."""
    _write_atomic(path, (json_text(record) + "\n" for record in records))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_key(*parts: Any) -> str:
    """The sha256 of everything that determines a result, as canonical JSON: the key of every cache."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (``null``, ``object``, ``array``, ``string``, ...)."""
    return "null" if value is None else JSON_KINDS.get(type(value), type(value).__name__)


def decode_utf8(data: bytes, name: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); invalid bytes are an InputError naming the line."""
    try:
        return data.decode("utf-8-sig")  # as editors on Windows write it
    except UnicodeDecodeError as exc:
        line = 1 + data.count(b"\n", 0, exc.start)
        raise InputError(f"{name}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}: {exc.reason})") from None


def parse_json(text: str, name: str, line: int | None = None) -> Any:
    """One JSON value; a syntax error is an InputError naming the line (``line`` for one line of a file)."""
    where = name if line is None else f"{name}:{line}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{name}:{exc.lineno if line is None else line}: invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None


def json_records(data: bytes, name: str, jsonl: bool | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The objects of a JSON array (``{"data": [...]}`` too) or a JSONL file, each with where it came from
    (``name:line`` for JSONL, ``name: row i`` for an array); ``jsonl=None`` tells them apart by the first
    character. Anything else is an InputError naming the file, line or row; an empty file gives no records."""
    text = decode_utf8(data, name)
    if jsonl is None:
        jsonl = not text.lstrip().startswith("[")
    if not jsonl:
        rows = parse_json(text, name)
        if isinstance(rows, dict) and len(rows) == 1 and isinstance(next(iter(rows.values())), list):
            rows = next(iter(rows.values()))
        if not isinstance(rows, list):
            raise InputError(f"{name}: expected a JSON array of objects, got {json_kind(rows)}")
        located = [(f"{name}: row {index}", row) for index, row in enumerate(rows)]
    else:
        located = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON may hold U+2028
            if not line.strip():
                continue
            try:
                located.append((f"{name}:{number}", parse_json(line, name, number)))
            except InputError:
                whole = None
                with contextlib.suppress(InputError):  # a whole-file JSON value (a pretty-printed object, say)
                    whole = parse_json(text, name)
                if whole is None:
                    raise
                raise InputError(
                    f"{name}: expected a JSON array of objects or JSONL (one object a line), got "
                    f"one JSON {json_kind(whole)}"
                ) from None
    for where, record in located:
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {json_kind(record)}")
    return located
