"""Resumable stage caches: results keyed by content, appended as Parquet parts under ``runs/<run-id>/<stage>/``.

A key is the sha256 of everything that determines a result (model fingerprint, parameters, prompt_id, sample
index, input text). Parts are written to a temporary name, fsynced and renamed, so a killed run loses at most the
results buffered since the last flush; a re-run reads the parts and computes only the missing keys.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


class StageCache:
    def __init__(self, directory: Path, schema: pa.Schema, flush_rows: int = 64, flush_seconds: float = 20.0):
        if "key" not in schema.names:
            raise ValueError("a stage schema needs a 'key' column")
        self.directory = directory
        self.schema = schema
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._sequence = 0
        self.rows: dict[str, dict[str, Any]] = self._load()
        log.info("stage cache %s: %d result(s) from earlier runs", directory, len(self.rows))

    def _load(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for part in sorted(self.directory.glob("part-*.parquet")):
            for row in pq.read_table(part, schema=self.schema).to_pylist():
                rows.setdefault(row["key"], row)
        return rows

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def add(self, *rows: dict[str, Any]) -> int:
        """Buffer the rows not cached yet (the rows of one result land in the same part); how many were new."""
        new = [row for row in rows if row["key"] not in self.rows]
        for row in new:
            self.rows[row["key"]] = row
        self._buffer.extend(new)
        if len(self._buffer) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
        return len(new)

    def flush(self) -> None:
        if not self._buffer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}.parquet"
        staging = self.directory / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema), staging, compression="zstd")
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(staging, self.directory / name)
        self._buffer.clear()
        self._last_flush = time.monotonic()


THROUGHPUT = "throughput.jsonl"  # under <store>/runs/: what each stage of every run measured


def record_throughput(runs_dir: Path, record: dict[str, Any]) -> None:
    """Append one stage's measurement (what ran, on what, how much, how long) as one line, in one write: runs of
    the same store append beside each other, and ``realign-data build --plan`` estimates from them."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runs_dir / THROUGHPUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def read_throughput(runs_dir: Path) -> list[dict[str, Any]]:
    """Every stage measurement of the store; a line cut by a killed process or a full disk is skipped."""
    path = runs_dir / THROUGHPUT
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s:%d: not a measurement (cut short?); skipped", path, number)
    return records
