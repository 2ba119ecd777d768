"""The versioned pair store: immutable ``NAME@vN`` versions of Parquet shards, catalogued in DuckDB.

Layout under the root (``--store`` / ``$REALIGN_STORE``, default ``./realign-store``)::

    datasets/NAME/vN/manifest.json        provenance, row counts, sha256 of every file
    datasets/NAME/vN/data/shard-00000.parquet
    catalog.duckdb                        table catalog_versions; views versions and pairs
    tmp/                                  staging for writes in progress
    runs/                                 per-run caches of the build stages

A version becomes visible by one atomic rename of a fully written, fsynced staging directory, so a writer killed
at any moment leaves nothing partial. Version numbers are assigned under a file lock; the filesystem is the source
of truth and the catalog is brought up to date from it whenever they disagree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from realign_data.errors import InputError, RealignError
from realign_data.models import sha256_file
from realign_data.provenance import code_provenance, utc_now
from realign_data.schema import PAIR_SCHEMA, conform

FORMAT = "realign.pairs/1"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REF_PATTERN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*?)(@v(?P<version>[0-9]+))?$")
SHARD_ROWS = 500_000
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def default_root() -> Path:
    return Path(os.environ.get("REALIGN_STORE", "realign-store"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file, fsynced, renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def files(self) -> list[Path]:
        return [self.path / entry["path"] for entry in self.manifest["files"]]

    @property
    def data_glob(self) -> str:
        return str(self.path / "data" / "*.parquet")


def check_name(name: str, hint: str = "") -> None:
    """Refuse a dataset name that cannot be a store folder; ``hint`` says how to choose another."""
    if not NAME_PATTERN.match(name):
        raise InputError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-'{hint}")


class Store:
    """A directory of immutable pair-dataset versions plus its DuckDB catalog."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root = self.root.expanduser().absolute()
        self.catalog_path = self.root / "catalog.duckdb"
        self._lock = FileLock(str(self.root / ".lock"))

    # ---- reading -------------------------------------------------------------------------------------------
    def versions(self, name: str | None = None) -> list[Version]:
        """Every visible version (optionally of one dataset), oldest first."""
        base = self.root / "datasets"
        names = [name] if name else sorted(p.name for p in base.iterdir()) if base.is_dir() else []
        found = []
        for dataset in names:
            for entry in (base / dataset).glob("v*"):
                if entry.name[1:].isdigit() and (entry / "manifest.json").is_file():
                    found.append(Version(dataset, int(entry.name[1:]), entry))
        return sorted(found, key=lambda v: (v.name, v.version))

    def resolve(self, ref: str) -> Version:
        """``NAME@vN`` or ``NAME`` (its latest version)."""
        match = REF_PATTERN.match(ref)
        if not match:
            raise InputError(f"{ref!r}: expected NAME or NAME@vN (e.g. smoke@v1)")
        versions = self.versions(match["name"])
        if not versions:
            known = sorted({v.name for v in self.versions()})
            raise RealignError(f"no dataset {match['name']!r} in {self.root}"
                               + (f" (datasets: {', '.join(known)})" if known else " (the store is empty)"))
        if match["version"] is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == int(match["version"]):
                return candidate
        raise RealignError(f"no version {ref} in {self.root} (versions: "
                           f"{', '.join(v.ref for v in versions)})")

    # ---- writing -------------------------------------------------------------------------------------------
    def write_version(self, name: str, batches: Iterable[pa.Table | pa.RecordBatch], *,
                      config: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
                      models: dict[str, Any] | None = None, stats: dict[str, Any] | None = None,
                      shard_rows: int = SHARD_ROWS, source: str = "pairs") -> Version:
        """Stream ``batches`` (checked against the pair contract) into a new immutable version of ``name``;
        ``source`` names where the rows came from in error messages."""
        check_name(name)
        staging = self.root / "tmp" / f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        (staging / "data").mkdir(parents=True)
        try:
            files, counts = self._write_shards(staging, batches, shard_rows, source)
            manifest = {
                "format": FORMAT, "dataset": name, "version": None, "created_at": utc_now(),
                "num_rows": sum(counts.values()), "rows_by_pair_type": dict(sorted(counts.items())),
                "files": files, "schema": PAIR_SCHEMA.names, "config": config or {}, "inputs": inputs or {},
                "models": models or {}, "stats": stats or {}, "code": code_provenance(),
            }
            with self._lock:
                self._remove_abandoned_staging()
                version = max((v.version for v in self.versions(name)), default=0) + 1
                manifest["version"] = version
                write_json(staging / "manifest.json", manifest)
                _fsync(staging)
                target = self.root / "datasets" / name / f"v{version}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, target)
                _fsync(target.parent)
                self._sync_catalog()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Version(name, version, target)

    def _write_shards(self, staging: Path, batches: Iterable[pa.Table | pa.RecordBatch],
                      shard_rows: int, source: str) -> tuple[list[dict[str, Any]], Counter]:
        files: list[dict[str, Any]] = []
        counts: Counter = Counter()
        seen_ids: set[str] = set()
        writer, shard_path, shard_count, total = None, None, 0, 0

        def close_shard() -> None:
            writer.close()
            _fsync(shard_path)
            files.append({"path": str(shard_path.relative_to(staging)), "rows": shard_count,
                          "bytes": shard_path.stat().st_size, "sha256": sha256_file(shard_path)})

        for batch in batches:
            table = conform(pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch,
                            first_row=total, where=source)
            for row, pair_id in enumerate(table["pair_id"].to_pylist()):
                if pair_id in seen_ids:
                    raise InputError(f"{source}: row {total + row}: field 'pair_id' {pair_id!r} is not unique "
                                     "in the version")
                seen_ids.add(pair_id)
            counts.update(table["pair_type"].to_pylist())
            offset = 0
            while offset < table.num_rows:
                if writer is None:
                    shard_path = staging / "data" / f"shard-{len(files):05d}.parquet"
                    writer = pq.ParquetWriter(shard_path, PAIR_SCHEMA, compression="zstd")
                    shard_count = 0
                take = min(shard_rows - shard_count, table.num_rows - offset)
                writer.write_table(table.slice(offset, take), row_group_size=65_536)
                shard_count += take
                offset += take
                if shard_count >= shard_rows:
                    close_shard()
                    writer = None
            total += table.num_rows
        if writer is not None:
            close_shard()
        if total == 0:
            raise InputError(f"{source}: no rows to write; a dataset version holds at least one pair")
        return files, counts

    def _remove_abandoned_staging(self) -> None:
        """Delete staging directories of writers that died (their pid is gone); called under the lock."""
        for entry in (self.root / "tmp").glob("*.*.*"):
            pid = entry.name.removesuffix(".duckdb").split(".")[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    # ---- catalog -------------------------------------------------------------------------------------------
    def _catalog_is_current(self, versions: list[Version]) -> bool:
        if not self.catalog_path.exists():
            return False
        try:
            with self._connect_read_only() as con:
                rows = con.execute("SELECT ref, path FROM catalog_versions ORDER BY ref").fetchall()
        except duckdb.Error:
            return False
        return rows == sorted((v.ref, str(v.path)) for v in versions)

    def _sync_catalog(self) -> None:
        """Rebuild the catalog from the version manifests into a new file, then swap it in atomically.

        Called under the lock. A manifest's sha256 recorded by an earlier catalog is kept, so that `verify`
        still notices a manifest edited after its version was written.
        """
        versions = self.versions()
        recorded: dict[str, str] = {}
        if self.catalog_path.exists():
            try:
                with self._connect_read_only() as con:
                    recorded = dict(con.execute("SELECT ref, manifest_sha256 FROM catalog_versions").fetchall())
            except duckdb.Error:
                recorded = {}
        staging = self.root / "tmp" / f"catalog.{os.getpid()}.{uuid.uuid4().hex[:8]}.duckdb"
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            with duckdb.connect(str(staging)) as con:
                self._build_catalog(con, versions, recorded)
            _fsync(staging)
            os.replace(staging, self.catalog_path)
            _fsync(self.root)
        finally:
            staging.unlink(missing_ok=True)

    def _build_catalog(self, con: duckdb.DuckDBPyConnection, versions: list[Version],
                       recorded: dict[str, str]) -> None:
        con.execute("""CREATE TABLE catalog_versions (
            dataset VARCHAR, version INTEGER, ref VARCHAR, path VARCHAR, created_at TIMESTAMPTZ,
            num_rows BIGINT, rows_by_pair_type JSON, num_files INTEGER, bytes BIGINT, manifest_sha256 VARCHAR,
            realign_version VARCHAR, git_sha VARCHAR, config JSON, models JSON, inputs JSON)""")
        for v in versions:
            m = v.manifest
            manifest_sha = recorded.get(v.ref) or sha256_file(v.path / "manifest.json")
            con.execute("INSERT INTO catalog_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                v.name, v.version, v.ref, str(v.path), m["created_at"], m["num_rows"],
                json.dumps(m["rows_by_pair_type"]), len(m["files"]), sum(f["bytes"] for f in m["files"]),
                manifest_sha, m["code"]["realign_version"], m["code"]["git_sha"], json.dumps(m["config"]),
                json.dumps(m["models"]), json.dumps(m["inputs"])])
        con.execute("""CREATE VIEW versions AS
            SELECT dataset, version, ref, created_at, num_rows, rows_by_pair_type, num_files, bytes,
                   realign_version, git_sha, path FROM catalog_versions ORDER BY dataset, version""")
        con.execute("CREATE TABLE publications (ref VARCHAR, repo_id VARCHAR, hub_commit VARCHAR, "
                    "published_at TIMESTAMPTZ, private BOOLEAN)")
        for record in self.publications():
            con.execute("INSERT INTO publications VALUES (?, ?, ?, ?, ?)", [
                record["ref"], record["repo_id"], record["hub_commit"], record["published_at"], record["private"]])
        files = [str(f) for v in versions for f in v.files]
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"""CREATE VIEW pairs AS
                SELECT regexp_extract(filename, '/datasets/([^/]+)/v[0-9]+/data/', 1) AS dataset,
                       CAST(regexp_extract(filename, '/datasets/[^/]+/v([0-9]+)/data/', 1) AS INTEGER) AS version,
                       * EXCLUDE (filename)
                FROM read_parquet([{listing}], filename = true)""")
        else:
            empty = self.root / "catalog.empty.parquet"  # typed, row-less stand-in while the store is empty
            pq.write_table(PAIR_SCHEMA.empty_table(), empty)
            con.execute(f"""CREATE VIEW pairs AS SELECT NULL::VARCHAR AS dataset, NULL::INTEGER AS version, *
                FROM read_parquet('{empty}') WHERE false""")

    def publications(self) -> list[dict[str, Any]]:
        """Hub publications of this store's versions (``publications.jsonl``), oldest first."""
        path = self.root / "publications.jsonl"
        return [json.loads(line) for line in path.read_text().split("\n") if line.strip()] if path.exists() else []

    def record_publication(self, record: dict[str, Any]) -> None:
        """Append a publication (after the upload succeeded) and refresh the catalog's ``publications`` table."""
        with self._lock:
            with open(self.root / "publications.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._sync_catalog()

    def _connect_read_only(self) -> duckdb.DuckDBPyConnection:
        """Open the catalog read-only, waiting briefly while a writer holds it."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return duckdb.connect(str(self.catalog_path), read_only=True)
            except duckdb.IOException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A read-only catalog connection, sandboxed to the store's files, brought up to date first."""
        if not self._catalog_is_current(self.versions()):
            self.root.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._sync_catalog()
        con = self._connect_read_only()
        con.execute("SET allowed_directories = [?]", [str(self.root) + os.sep])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run read-only SQL on the catalog; statements that write, attach, copy or configure are refused."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise InputError(f"query: {str(exc).splitlines()[0]}") from None
        if not statements:
            raise InputError("query: no SQL statement given")
        for statement in statements:
            kind = statement.type.name
            if kind not in READ_ONLY_STATEMENTS:
                raise InputError(f"query: {kind} statements are refused; the catalog is read-only "
                                 "(use SELECT, e.g. SELECT pair_type, count(*) FROM pairs GROUP BY 1)")
        with self.connect() as con:
            try:
                result = con.execute(sql)
                return [d[0] for d in result.description], result.fetchall()
            except duckdb.Error as exc:
                raise InputError(f"query: {str(exc).splitlines()[0]}") from None

    def summary(self, ref: str) -> dict[str, Any]:
        """Rows by pair_type, score and margin quantiles and response lengths of one version."""
        version = self.resolve(ref)
        with duckdb.connect() as con:
            con.execute(f"CREATE VIEW v AS SELECT * FROM read_parquet('{version.data_glob}')")
            result = con.execute("""
                SELECT pair_type, count(*) AS rows,
                       quantile_cont(margin, [0, 0.25, 0.5, 0.75, 1]) AS margin_q,
                       quantile_cont(chosen_score, [0, 0.5, 1]) AS chosen_score_q,
                       quantile_cont(rejected_score, [0, 0.5, 1]) AS rejected_score_q,
                       avg(length(chosen[1].content)) AS chosen_chars_mean,
                       avg(length(rejected[1].content)) AS rejected_chars_mean,
                       max(length(chosen[1].content)) AS chosen_chars_max,
                       max(length(rejected[1].content)) AS rejected_chars_max,
                       count(DISTINCT prompt_id) AS prompts
                FROM v GROUP BY pair_type ORDER BY pair_type""")
            names = [d[0] for d in result.description]
            by_type = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
        manifest = version.manifest
        return {"ref": version.ref, "created_at": manifest["created_at"], "num_rows": manifest["num_rows"],
                "files": len(manifest["files"]), "bytes": sum(f["bytes"] for f in manifest["files"]),
                "models": manifest["models"], "by_pair_type": by_type}

    # ---- integrity and export ------------------------------------------------------------------------------
    def verify(self, ref: str) -> list[str]:
        """Re-hash every file of a version; returns the problems found (empty when intact)."""
        version = self.resolve(ref)
        problems = []
        listed = set()
        for entry in version.manifest["files"]:
            path = version.path / entry["path"]
            listed.add(path)
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
            elif path.stat().st_size != entry["bytes"]:
                problems.append(f"{entry['path']}: size {path.stat().st_size} != recorded {entry['bytes']}")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the manifest")
        for path in sorted(version.path.rglob("*")):
            if path.is_file() and path not in listed and path.name != "manifest.json":
                problems.append(f"{path.relative_to(version.path)}: not listed in the manifest")
        if self.catalog_path.exists():
            with self._connect_read_only() as con:
                row = con.execute("SELECT manifest_sha256 FROM catalog_versions WHERE ref = ?",
                                  [version.ref]).fetchone()
            if row and row[0] != sha256_file(version.path / "manifest.json"):
                problems.append("manifest.json: changed since the version was catalogued")
        return problems

    def export(self, ref: str, fmt: str, out: Path) -> Path:
        """Write a version as one JSONL file or as its Parquet shards under ``out``; returns what was written."""
        version = self.resolve(ref)
        stem = f"{version.name}-v{version.version}"
        target = out / (f"{stem}.jsonl" if fmt == "jsonl" else stem)
        if target.exists():
            raise RealignError(f"{target} already exists; choose another --out or remove it")
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f".{stem}.{os.getpid()}.partial"
        try:
            if fmt == "jsonl":
                with open(staging, "w", encoding="utf-8") as handle:
                    for file in version.files:
                        for batch in pq.ParquetFile(file).iter_batches(batch_size=4096):
                            for row in batch.to_pylist():
                                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            elif fmt == "parquet":
                shutil.copytree(version.path, staging)
            else:
                raise InputError(f"--format {fmt!r}: use jsonl or parquet")
            os.rename(staging, target)
        except BaseException:
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
            raise
        return target
