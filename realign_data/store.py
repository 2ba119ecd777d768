"""The versioned store: immutable ``NAME@vN`` versions of Parquet shards, catalogued in DuckDB.

A dataset holds one kind of rows: ``pairs`` (the pair contract, realign_data.schema) or ``samples`` (every response
of a build with its score, realign_data.samples), as its record's ``format`` says. Layout under the root
(``--store`` / ``$REALIGN_STORE``, default ``./realign-store``)::

    datasets/NAME/vN/version.json         the version record: provenance, row counts, sha256 of every file
    datasets/NAME/vN/data/shard-00000.parquet
    catalog.duckdb                        table catalog_versions; views versions, pairs and samples
    tmp/                                  staging for writes in progress
    runs/                                 per-run caches of the build stages

A version becomes visible by one atomic rename of a fully written, fsynced staging directory, so a writer killed
at any moment leaves nothing partial. Version numbers are assigned under a file lock; the filesystem is the source
of truth: the catalog is rebuilt from the version records into a new file, checked, and only then swapped in, so
a failed rebuild (a full disk) leaves the previous catalog in place. A missing or damaged catalog is rebuilt from
the records. Folders that are not valid versions are reported and skipped, never fatal.

Staging names carry the writer's host and pid; leftovers are removed only for writers of this host that are gone,
so a store shared between machines never loses another host's write in progress.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from filelock import FileLock

from realign_data.errors import InputError, IntegrityError, RealignError, describe_os_error
from realign_data.files import json_text, sha256_file, write_json
from realign_data.provenance import code_provenance, utc_now
from realign_data.quality import COLUMNS as LENGTH_COLUMNS
from realign_data.quality import length_bias
from realign_data.schema import PAIR_SCHEMA, SAMPLE_SCHEMA, conform, conform_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """What a dataset's rows are: their schema and check, their unique id and the column they are counted by."""

    name: str
    format: str
    schema: pa.Schema
    conform: Callable[..., pa.Table]
    id_column: str
    type_column: str
    counts_key: str  # the record key of the row counts by type_column


PAIRS = Kind("pairs", "realign.pairs/1", PAIR_SCHEMA, conform, "pair_id", "pair_type", "rows_by_pair_type")
SAMPLES = Kind("samples", "realign.samples/1", SAMPLE_SCHEMA, conform_samples, "sample_id", "kind", "rows_by_kind")
KINDS = {kind.format: kind for kind in (PAIRS, SAMPLES)}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REF_PATTERN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*?)(@v(?P<version>[0-9]+))?$")
SHARD_ROWS = 500_000
RECORD_FILE = "version.json"  # the version record
LEGACY_RECORD_FILE = "manifest.json"  # its name before realign 0.2, still read
RECORD_KEYS = (
    "format",
    "dataset",
    "version",
    "created_at",
    "num_rows",
    "files",
    "config",
    "inputs",
    "models",
    "code",
)
HOST = socket.gethostname()


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


def staging_name(prefix: str) -> str:
    """``prefix~host~pid~random``: whose staging file or folder this is, for the clean-up of dead writers."""
    return f"{prefix}~{HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


def abandoned(entry: Path) -> bool:
    """A staging entry of a writer on this host whose process is gone (other hosts' entries are never touched)."""
    parts = entry.name.split("~")
    return len(parts) == 4 and parts[1] == HOST and parts[2].isdigit() and not _pid_alive(int(parts[2]))


def record_path(folder: Path) -> Path:
    """A version folder's record: ``version.json``; ``manifest.json`` in versions written before realign 0.2."""
    legacy = folder / LEGACY_RECORD_FILE
    return legacy if legacy.exists() and not (folder / RECORD_FILE).exists() else folder / RECORD_FILE


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def record_path(self) -> Path:
        return record_path(self.path)

    @cached_property
    def record(self) -> dict[str, Any]:
        return json.loads(self.record_path.read_text())

    @property
    def kind(self) -> Kind:
        return KINDS[self.record["format"]]

    @property
    def rows_by_type(self) -> dict[str, int]:
        return self.record[self.kind.counts_key]

    def dataset(self) -> ds.Dataset:
        """The rows under the kind's current schema (a column the files predate reads as nulls), footers checked."""
        self.check_footers()
        return ds.dataset([str(f) for f in self.files], format="parquet", schema=self.kind.schema)

    def read(self, columns: list[str]) -> pa.Table:
        """``columns`` of every row, as ``dataset`` gives them."""
        try:
            return self.dataset().to_table(columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise self.unreadable(exc) from None

    @property
    def files(self) -> list[Path]:
        """The data files, each checked against the size its record gives (full hashes: ``verify``)."""
        files = []
        for entry in self.record["files"]:
            path = self.path / entry["path"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IntegrityError(
                    f"{path}: missing (listed in the record of {self.ref}); run `realign-data verify {self.ref}`"
                ) from None
            if size != entry["bytes"]:
                raise IntegrityError(
                    f"{path}: {size} bytes, its version record says {entry['bytes']}: the file is "
                    f"damaged; run `realign-data verify {self.ref}`"
                )
            files.append(path)
        return files

    def view(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        """Create view ``name`` over this version's (checked) data files on ``con``."""
        files = [str(f) for f in self.files]
        try:
            con.read_parquet(files).create_view(name)
        except duckdb.Error as exc:
            raise self.unreadable(exc) from None

    def check_footers(self) -> None:
        """Read every data file's Parquet footer: a damaged file raises the IntegrityError naming it."""
        for path in self.files:
            try:
                pq.read_metadata(path)
            except (pa.ArrowException, OSError) as exc:
                raise IntegrityError(
                    f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); run "
                    f"`realign-data verify {self.ref}`"
                ) from None

    def unreadable(self, exc: Exception) -> IntegrityError:
        """The error for data files that pass the size check but cannot be read."""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return IntegrityError(
            f"{self.path}: a data file of {self.ref} cannot be read ({reason}); run `realign-data verify {self.ref}`"
        )


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[list[Any]]) -> None:
    if rows:
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def _catalog_columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        name
        for (name,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'catalog_versions'"
        ).fetchall()
    }


def create_version_tables(
    con: duckdb.DuckDBPyConnection,
    versions: list[Version],
    recorded: dict[str, str],
    publications: list[dict[str, Any]],
) -> None:
    """Tables ``catalog_versions``, ``publications`` and ``empty_pairs`` and view ``versions`` on ``con``:
    the same definitions in the catalog file and in the query sandbox."""
    con.execute("""CREATE TABLE catalog_versions (
        dataset VARCHAR, version INTEGER, ref VARCHAR, kind VARCHAR, path VARCHAR, created_at TIMESTAMPTZ,
        num_rows BIGINT, rows_by_pair_type JSON, rows_by_kind JSON, num_files INTEGER, bytes BIGINT,
        record_sha256 VARCHAR, realign_version VARCHAR, git_sha VARCHAR, config JSON, models JSON, inputs JSON)""")
    _insert(
        con,
        "catalog_versions",
        [
            [
                v.name,
                v.version,
                v.ref,
                v.kind.name,
                str(v.path),
                m["created_at"],
                m["num_rows"],
                json.dumps(m["rows_by_pair_type"]) if v.kind is PAIRS else None,
                json.dumps(m["rows_by_kind"]) if v.kind is SAMPLES else None,
                len(m["files"]),
                sum(f["bytes"] for f in m["files"]),
                recorded.get(v.ref) or sha256_file(v.record_path),
                m["code"].get("realign_version"),
                m["code"].get("git_sha"),
                json.dumps(m["config"]),
                json.dumps(m["models"]),
                json.dumps(m["inputs"]),
            ]
            for v in versions
            for m in [v.record]
        ],
    )
    con.execute("""CREATE VIEW versions AS
        SELECT dataset, version, ref, kind, created_at, num_rows, rows_by_pair_type, rows_by_kind, num_files,
               bytes, realign_version, git_sha, path FROM catalog_versions ORDER BY dataset, version""")
    con.execute(
        "CREATE TABLE publications (ref VARCHAR, repo_id VARCHAR, hub_commit VARCHAR, "
        "published_at TIMESTAMPTZ, private BOOLEAN)"
    )
    _insert(
        con,
        "publications",
        [
            [r.get("ref"), r.get("repo_id"), r.get("hub_commit"), r.get("published_at"), r.get("private")]
            for r in publications
        ],
    )
    for kind in (PAIRS, SAMPLES):
        empty = kind.schema.empty_table()  # noqa: F841 (read by name below)
        con.execute(f"CREATE TABLE empty_{kind.name} AS SELECT * FROM empty")


def check_name(name: str, hint: str = "", what: str = "dataset name") -> None:
    """Refuse a name that cannot be one plain store folder (no path, no '..'); ``hint`` says how to choose another."""
    if not NAME_PATTERN.match(name) or name.strip(".") == "":
        raise InputError(
            f"{what} {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit{hint}"
        )


class Store:
    """A directory of immutable pair-dataset versions plus its DuckDB catalog."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root = self.root.expanduser().absolute()
        self.catalog_path = self.root / "catalog.duckdb"
        self._lock = FileLock(str(self.root / ".lock"))
        self.skipped: dict[str, str] = {}  # folder (relative to the root) -> why it is not a valid version
        self.notes: list[str] = []  # what a command should tell its user (e.g. a catalog rebuilt from records)

    # ---- reading -------------------------------------------------------------------------------------------
    def versions(self, name: str | None = None) -> list[Version]:
        """Every valid version (optionally of one dataset), oldest first; others are recorded in ``skipped``."""
        base = self.root / "datasets"
        try:
            names = [name] if name else sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        except OSError as exc:
            raise RealignError(f"cannot list {base}: {describe_os_error(exc)}") from None
        found = []
        for dataset in names:
            folder = base / dataset
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
            for entry in entries:
                version = self._valid_version(dataset, entry)
                if version is not None:
                    found.append(version)
        return sorted(found, key=lambda v: (v.name, v.version))

    def _valid_version(self, dataset: str, entry: Path) -> Version | None:
        """The version at ``entry``, or None (recorded in ``skipped`` with the reason) when it is not one."""
        where = str(entry.relative_to(self.root))
        if not (entry.is_dir() and entry.name.startswith("v") and entry.name[1:].isdigit()):
            self.skipped[where] = "not a version folder (vN)"
            return None
        try:
            record = json.loads(record_path(entry).read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.skipped[where] = f"no {RECORD_FILE}"
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.skipped[where] = f"{RECORD_FILE} unreadable ({str(exc).splitlines()[0]})"
            return None
        kind = KINDS.get(str(record.get("format"))) if isinstance(record, dict) else None
        if isinstance(record, dict) and kind is None:
            self.skipped[where] = f"{RECORD_FILE} has an unknown format {record.get('format')!r}"
            return None
        missing = [key for key in (*RECORD_KEYS, kind.counts_key) if key not in record] if kind is not None else ["all"]
        if missing:
            self.skipped[where] = f"{RECORD_FILE} lacks {', '.join(missing)}"
            return None
        if (record["dataset"], record["version"]) != (dataset, int(entry.name[1:])):
            self.skipped[where] = f"{RECORD_FILE} describes {record['dataset']}@v{record['version']}, not this folder"
            return None
        version = Version(dataset, int(entry.name[1:]), entry)
        version.__dict__["record"] = record  # read once
        return version

    def _next_version(self, name: str) -> int:
        """One more than any vN folder of ``name``, valid or not, so that a broken folder is never overwritten."""
        folder = self.root / "datasets" / name
        numbers = (
            [int(e.name[1:]) for e in folder.iterdir() if e.name[:1] == "v" and e.name[1:].isdigit()]
            if folder.is_dir()
            else []
        )
        return max(numbers, default=0) + 1

    def resolve(self, ref: str, kind: Kind | None = None) -> Version:
        """``NAME@vN`` or ``NAME`` (its latest version); with ``kind``, a version of another kind is refused."""
        version = self._resolve(ref)
        if kind is not None and version.kind is not kind:
            other = "pairs version (e.g. the build's NAME)" if kind is PAIRS else "samples version (NAME-samples)"
            raise InputError(f"{version.ref} holds {version.kind.name}, not {kind.name}; pass a {other}")
        return version

    def _resolve(self, ref: str) -> Version:
        match = REF_PATTERN.match(ref)
        if not match:
            raise InputError(f"{ref!r}: expected NAME or NAME@vN (e.g. smoke@v1)")
        versions = self.versions(match["name"])
        if not versions:
            known = sorted({v.name for v in self.versions()})
            raise InputError(
                f"no dataset {match['name']!r} in {self.root}"
                + (f" (datasets: {', '.join(known)})" if known else " (the store is empty)")
            )
        if match["version"] is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == int(match["version"]):
                return candidate
        raise InputError(f"no version {ref} in {self.root} (versions: {', '.join(v.ref for v in versions)})")

    # ---- writing -------------------------------------------------------------------------------------------
    def check_kind(self, name: str, kind: Kind) -> None:
        """Refuse to write ``kind`` rows as dataset ``name`` when it exists and holds another kind."""
        check_name(name)
        existing = self.versions(name)
        if existing and existing[-1].kind is not kind:
            raise InputError(
                f"dataset {name!r} holds {existing[-1].kind.name}, not {kind.name}; write under another name "
                "(e.g. --dataset)"
            )

    def write_version(
        self,
        name: str,
        batches: Iterable[pa.Table | pa.RecordBatch],
        *,
        config: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        models: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        shard_rows: int = SHARD_ROWS,
        source: str = "pairs",
        kind: Kind = PAIRS,
    ) -> Version:
        """Stream ``batches`` (checked against ``kind``'s contract) into a new immutable version of ``name``;
        ``source`` names where the rows came from in error messages. A dataset holds one kind of rows."""
        self.check_kind(name, kind)
        staging = self.root / "tmp" / staging_name(name)
        (staging / "data").mkdir(parents=True)
        try:
            files, counts = self._write_shards(staging, batches, shard_rows, source, kind)
            record = {
                "format": kind.format,
                "dataset": name,
                "version": None,
                "created_at": utc_now(),
                "num_rows": sum(counts.values()),
                kind.counts_key: dict(sorted(counts.items())),
                "files": files,
                "schema": kind.schema.names,
                "config": config or {},
                "inputs": inputs or {},
                "models": models or {},
                "stats": stats or {},
                "code": code_provenance(),
            }
            with self._lock:
                self._remove_abandoned_staging()
                version = self._next_version(name)
                record["version"] = version
                write_json(staging / RECORD_FILE, record)
                _fsync(staging)
                target = self.root / "datasets" / name / f"v{version}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, target)
                _fsync(target.parent)
                log.info("wrote %s@v%d (%d rows) at %s", name, version, record["num_rows"], target)
                self._sync_catalog_after_write(f"{name}@v{version}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Version(name, version, target)

    def _sync_catalog_after_write(self, what: str) -> None:
        """Rebuild the catalog once ``what`` is safely on disk; a failure says that ``what`` is kept."""
        try:
            self._sync_catalog()
        except (OSError, RealignError) as exc:
            reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            raise RealignError(
                f"{what} is written and safe, but the catalog could not be rebuilt ({reason}); the "
                "previous catalog is kept; run `realign-data catalog rebuild` once fixed"
            ) from None

    def _write_shards(
        self, staging: Path, batches: Iterable[pa.Table | pa.RecordBatch], shard_rows: int, source: str, kind: Kind
    ) -> tuple[list[dict[str, Any]], Counter]:
        files: list[dict[str, Any]] = []
        counts: Counter = Counter()
        seen_ids: set[str] = set()
        writer: pq.ParquetWriter | None = None
        shard_path: Path | None = None
        shard_count, total = 0, 0

        def close_shard() -> None:
            assert writer is not None and shard_path is not None  # called only while a shard is open
            writer.close()
            _fsync(shard_path)
            files.append(
                {
                    "path": str(shard_path.relative_to(staging)),
                    "rows": shard_count,
                    "bytes": shard_path.stat().st_size,
                    "sha256": sha256_file(shard_path),
                }
            )

        for batch in batches:
            table = kind.conform(
                pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch,
                first_row=total,
                where=source,
            )
            for row, row_id in enumerate(table[kind.id_column].to_pylist()):
                if row_id in seen_ids:
                    raise InputError(
                        f"{source}: row {total + row}: field '{kind.id_column}' {row_id!r} is not unique in the version"
                    )
                seen_ids.add(row_id)
            counts.update(table[kind.type_column].to_pylist())
            offset = 0
            while offset < table.num_rows:
                if writer is None:
                    shard_path = staging / "data" / f"shard-{len(files):05d}.parquet"
                    writer = pq.ParquetWriter(shard_path, kind.schema, compression="zstd")
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
            raise InputError(f"{source}: no rows to write; a dataset version holds at least one row")
        return files, counts

    def _remove_abandoned_staging(self) -> None:
        """Delete staging entries (folders, catalogs and their .wal files) of dead writers; called under the lock."""
        for entry in (self.root / "tmp").glob("*~*"):
            if abandoned(entry):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    # ---- catalog -------------------------------------------------------------------------------------------
    def catalog_state(self, versions: list[Version]) -> str:
        """``current``, ``stale``, ``missing``, or ``damaged (reason)``: the catalog against the records."""
        if not self.catalog_path.exists():
            return "missing"
        try:
            with self._connect_read_only() as con:
                rows = con.execute("SELECT ref, path FROM catalog_versions ORDER BY ref").fetchall()
                columns = _catalog_columns(con)
        except duckdb.Error as exc:
            return f"damaged ({str(exc).splitlines()[0]})"
        if not {"record_sha256", "kind"} <= columns:  # a catalog written before realign 0.2 or 0.3
            return "stale"
        return "current" if rows == sorted((v.ref, str(v.path)) for v in versions) else "stale"

    def rebuild_catalog(self) -> str:
        """Rebuild the catalog from the records (checked, then swapped in); returns its state before."""
        state = self.catalog_state(self.versions())
        with self._lock:
            self._sync_catalog()
        return state

    def ensure_catalog(self) -> str | None:
        """Bring the catalog up to date with the records; returns a note when it was missing or damaged."""
        versions = self.versions()
        state = self.catalog_state(versions)
        if state == "current":
            return None
        with self._lock:
            self._sync_catalog()
        if state == "stale":
            return None
        return (
            f"catalog.duckdb was {state}; rebuilt from the records of {len(versions)} version(s) "
            "(edits to a record made before this rebuild can no longer be detected)"
        )

    def _sync_catalog(self) -> None:
        """Rebuild the catalog from the version records into a new file, check it, then swap it in atomically.

        Called under the lock. A record's sha256 recorded by an earlier catalog is kept, so that `verify`
        still notices a record edited after its version was written. Any failure leaves the previous catalog.
        """
        versions = self.versions()
        recorded: dict[str, str] = {}
        if self.catalog_path.exists():
            try:
                with self._connect_read_only() as con:
                    column = "record_sha256" if "record_sha256" in _catalog_columns(con) else "manifest_sha256"
                    recorded = dict(con.execute(f"SELECT ref, {column} FROM catalog_versions").fetchall())
            except duckdb.Error:
                recorded = {}
        staging = self.root / "tmp" / (staging_name("catalog") + ".duckdb")
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                with duckdb.connect(str(staging)) as con:
                    self._build_catalog(con, versions, recorded)
                    con.execute("CHECKPOINT")
            except duckdb.Error as exc:
                raise RealignError(
                    f"the catalog could not be rebuilt ({str(exc).splitlines()[0]}); the previous catalog is kept"
                ) from exc
            self._check_catalog(staging, versions)
            _fsync(staging)
            os.replace(staging, self.catalog_path)
            _fsync(self.root)
        finally:
            staging.unlink(missing_ok=True)
            staging.with_name(staging.name + ".wal").unlink(missing_ok=True)

    @staticmethod
    def _check_catalog(path: Path, versions: list[Version]) -> None:
        """Refuse a catalog file that does not list exactly ``versions`` or whose views do not resolve."""
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                refs = [r for (r,) in con.execute("SELECT ref FROM catalog_versions ORDER BY ref").fetchall()]
                for view in ("pairs", "samples", "versions"):
                    con.execute(f"SELECT * FROM {view} LIMIT 0").fetchall()
        except duckdb.Error as exc:
            raise RealignError(f"the new catalog did not verify ({str(exc).splitlines()[0]})") from None
        if refs != sorted(v.ref for v in versions):
            raise RealignError(f"the new catalog lists {len(refs)} version(s) instead of {len(versions)}")

    def _build_catalog(self, con: duckdb.DuckDBPyConnection, versions: list[Version], recorded: dict[str, str]) -> None:
        create_version_tables(con, versions, recorded, self.publications())
        for kind in (PAIRS, SAMPLES):
            files = [str(f) for v in versions if v.kind is kind for f in v.files]
            if files:  # union_by_name: versions written before a column was added read it as null
                listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"""CREATE VIEW {kind.name} AS
                    SELECT regexp_extract(filename, '/datasets/([^/]+)/v[0-9]+/data/', 1) AS dataset,
                           CAST(regexp_extract(filename, '/datasets/[^/]+/v([0-9]+)/data/', 1) AS INTEGER) AS version,
                           * EXCLUDE (filename)
                    FROM read_parquet([{listing}], filename = true, union_by_name = true)""")
            else:  # a typed, row-less table
                con.execute(
                    f"CREATE TABLE {kind.name} AS SELECT NULL::VARCHAR AS dataset, NULL::INTEGER AS version, * "
                    f"FROM empty_{kind.name} WHERE false"
                )

    def publications(self) -> list[dict[str, Any]]:
        """Hub publications of this store's versions (``publications.jsonl``), oldest first."""
        path = self.root / "publications.jsonl"
        if not path.exists():
            return []
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise IntegrityError(f"{path}:{number}: not a JSON record; remove or repair that line") from None
        return records

    def record_publication(self, record: dict[str, Any]) -> None:
        """Append a publication (after the upload succeeded) and refresh the catalog's ``publications`` table."""
        with self._lock:
            with open(self.root / "publications.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json_text(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._sync_catalog_after_write(f"the publication of {record['ref']}")

    def _connect_read_only(self) -> duckdb.DuckDBPyConnection:
        """Open the catalog read-only. Nobody writes it in place (it is swapped in whole), so there is no wait."""
        return duckdb.connect(str(self.catalog_path), read_only=True)

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run read-only SQL over ``pairs``, ``versions`` and ``publications`` in a sandbox that cannot open,
        write or attach any file (see ``realign_data.sandbox``)."""
        from realign_data.sandbox import run_query

        return run_query(self, sql)

    def summary(self, ref: str) -> dict[str, Any]:
        """Rows by pair_type, score and margin quantiles, response lengths and length bias of a pairs version, or
        rows, scores, truncation and tokens by kind of a samples version."""
        version = self.resolve(ref)
        record = version.record
        if version.kind is SAMPLES:
            by_kind = self._grouped(
                version,
                """
                SELECT kind, count(*) AS rows, count(DISTINCT prompt_id) AS prompts, count(score) AS scored,
                       count(*) FILTER (WHERE finish_reason = 'length') AS truncated,
                       avg(completion_tokens) AS tokens_mean, avg(score) AS score_mean,
                       min(score) AS score_min, max(score) AS score_max
                FROM v GROUP BY kind ORDER BY kind""",
            )
            details: dict[str, Any] = {"by_kind": by_kind}
        else:
            by_type = self._grouped(
                version,
                """
                SELECT pair_type, count(*) AS rows,
                       quantile_cont(margin, [0, 0.25, 0.5, 0.75, 1]) AS margin_q,
                       quantile_cont(chosen_score, [0, 0.5, 1]) AS chosen_score_q,
                       quantile_cont(rejected_score, [0, 0.5, 1]) AS rejected_score_q,
                       avg(length(chosen[1].content)) AS chosen_chars_mean,
                       avg(length(rejected[1].content)) AS rejected_chars_mean,
                       max(length(chosen[1].content)) AS chosen_chars_max,
                       max(length(rejected[1].content)) AS rejected_chars_max,
                       count(DISTINCT prompt_id) AS prompts
                FROM v GROUP BY pair_type ORDER BY pair_type""",
            )
            details = {
                "by_pair_type": by_type,
                "length_bias": length_bias(version.read(list(LENGTH_COLUMNS))),
                "dropped": record.get("stats", {}).get("dropped", {}),
                "samples": record["inputs"].get("samples"),
            }
        return {
            "ref": version.ref,
            "kind": version.kind.name,
            "created_at": record["created_at"],
            "num_rows": record["num_rows"],
            "files": len(record["files"]),
            "bytes": sum(f["bytes"] for f in record["files"]),
            "models": record["models"],
            **details,
            "decontamination": record["inputs"].get("prompts", {}).get("decontamination"),
        }

    @staticmethod
    def _grouped(version: Version, sql: str) -> list[dict[str, Any]]:
        """The rows of ``sql`` over view ``v`` of ``version``, as dicts."""
        with duckdb.connect() as con:
            version.view(con, "v")
            try:
                result = con.execute(sql)
                names = [d[0] for d in result.description]
                return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
            except duckdb.Error as exc:
                raise version.unreadable(exc) from None

    # ---- integrity and export ------------------------------------------------------------------------------
    def diff(self, left: str, right: str) -> dict[str, Any]:
        """Pairs added and removed (by pair_id), prompts only on one side, score and margin shifts of shared pairs."""
        a, b = self.resolve(left, PAIRS), self.resolve(right, PAIRS)
        with duckdb.connect() as con:
            a.view(con, "a")
            b.view(con, "b")

            def one(sql: str) -> Any:
                return con.sql(sql).fetchall()[0]

            added = con.execute(
                "SELECT pair_type, count(*) FROM b ANTI JOIN a USING (pair_id) GROUP BY 1 ORDER BY 1"
            ).fetchall()
            removed = con.execute(
                "SELECT pair_type, count(*) FROM a ANTI JOIN b USING (pair_id) GROUP BY 1 ORDER BY 1"
            ).fetchall()
            shared = one(
                "SELECT count(*), avg(b.margin - a.margin), avg(b.chosen_score - a.chosen_score), "
                "avg(b.rejected_score - a.rejected_score) FROM a JOIN b USING (pair_id)"
            )
            prompts_only_left = one(
                "SELECT count(DISTINCT prompt_id) FROM a WHERE prompt_id NOT IN (SELECT prompt_id FROM b)"
            )[0]
            prompts_only_right = one(
                "SELECT count(DISTINCT prompt_id) FROM b WHERE prompt_id NOT IN (SELECT prompt_id FROM a)"
            )[0]
            margins = {side: one(f"SELECT avg(margin), median(margin) FROM {side}") for side in ("a", "b")}
        return {
            "left": a.ref,
            "right": b.ref,
            "added": dict(added),
            "removed": dict(removed),
            "shared_pairs": shared[0],
            "mean_margin_shift_shared": shared[1],
            "mean_chosen_score_shift_shared": shared[2],
            "mean_rejected_score_shift_shared": shared[3],
            "prompts_only_left": prompts_only_left,
            "prompts_only_right": prompts_only_right,
            "margin_mean_median": {a.ref: margins["a"], b.ref: margins["b"]},
        }

    def verify(self, ref: str) -> list[str]:
        """Re-hash every file of a version; returns the problems found (empty when intact).

        A missing or damaged catalog is rebuilt first (noted in ``notes``); on a store that cannot be written
        the record check uses the catalog as it is."""
        version = self.resolve(ref)
        problems = []
        listed = set()
        for entry in version.record["files"]:
            path = version.path / entry["path"]
            listed.add(path)
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
            elif path.stat().st_size != entry["bytes"]:
                problems.append(f"{entry['path']}: size {path.stat().st_size} != recorded {entry['bytes']}")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the record")
        for path in sorted(version.path.rglob("*")):
            if path.is_file() and path not in listed and path.name not in (RECORD_FILE, LEGACY_RECORD_FILE):
                problems.append(f"{path.relative_to(version.path)}: not listed in the record")
        try:
            note = self.ensure_catalog()
        except OSError as exc:
            note = f"the catalog could not be brought up to date ({describe_os_error(exc)})"
        if note:
            self.notes.append(note)
        try:
            with self._connect_read_only() as con:
                row = con.execute("SELECT record_sha256 FROM catalog_versions WHERE ref = ?", [version.ref]).fetchone()
        except duckdb.Error:
            row = None
        if row and row[0] != sha256_file(version.record_path):
            problems.append(f"{version.record_path.name}: changed since the version was catalogued")
        return problems

    def export(self, ref: str, fmt: str, out: Path) -> Path:
        """Write a version as one JSONL file or as its Parquet shards under ``out``; returns what was written.

        Nothing is left behind when it fails: the output is written under a temporary name and renamed."""
        if fmt not in ("jsonl", "parquet"):
            raise InputError(f"--format {fmt!r}: use jsonl or parquet")
        version = self.resolve(ref)
        files = version.files
        stem = f"{version.name}-v{version.version}"
        target = out / (f"{stem}.jsonl" if fmt == "jsonl" else stem)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: is a file, not a folder")
        if target.exists():
            raise InputError(f"{target} already exists; choose another --out or remove it")
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f".{stem}.{os.getpid()}.partial"
        try:
            if fmt == "jsonl":
                with open(staging, "w", encoding="utf-8") as handle:
                    for file in files:
                        try:
                            for batch in pq.ParquetFile(file).iter_batches(batch_size=4096):
                                handle.write("".join(json_text(row) + "\n" for row in batch.to_pylist()))
                        except pa.ArrowException as exc:  # a damaged shard (writes raise plain OSError)
                            raise version.unreadable(exc) from None
            else:
                shutil.copytree(version.path, staging)
            os.rename(staging, target)
        except BaseException:
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
            raise
        return target
