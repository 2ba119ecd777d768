"""`realign-data query`: read-only SQL over a store, in a DuckDB that cannot open, write or attach a file.

Two locks, each enough on its own:

1. Only pure reads run. DuckDB's own parser classifies every statement; anything but a SELECT (a set operation,
   CTE, VALUES, DESCRIBE, SHOW or SUMMARIZE is one) is refused before it runs, including EXPLAIN (EXPLAIN ANALYZE
   executes its statement), COPY, EXPORT, ATTACH, INSTALL/LOAD, SET/RESET, PRAGMA and CALL.
2. The connection is in memory and its file systems are switched off: the data files are handed to DuckDB as
   Arrow datasets opened by pyarrow, then ``disabled_filesystems``, ``enable_external_access`` and
   ``lock_configuration`` are set, so no statement or table function can read or write any path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from realign_data.errors import InputError
from realign_data.store import PAIRS, SAMPLES, create_version_tables

if TYPE_CHECKING:
    from realign_data.store import Store

EXAMPLE = "e.g. SELECT pair_type, count(*) FROM pairs GROUP BY 1"


def check_read_only(sql: str) -> None:
    """Refuse ``sql`` unless every statement is a SELECT, as DuckDB's parser classifies it."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"query: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise InputError(f"query: no SQL statement given ({EXAMPLE})")
    if len(statements) > 1:
        raise InputError(f"query: {len(statements)} statements given; run one SELECT at a time")
    kind = statements[0].type.name
    if kind != "SELECT":
        raise InputError(f"query: {kind} statements are refused; only SELECT runs on the store ({EXAMPLE})")


def sandbox(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with views ``pairs``, ``samples`` and ``versions`` and table ``publications``, file
    access off."""
    versions = store.versions()
    con = duckdb.connect(":memory:")
    create_version_tables(con, versions, {}, store.publications())
    for kind in (PAIRS, SAMPLES):
        parts = []
        for index, version in enumerate(versions):
            if version.kind is kind:
                files = [str(f) for f in version.files]
                con.register(f"_{kind.name}_{index}", ds.dataset(files, format="parquet", schema=kind.schema))
                parts.append(
                    f"SELECT '{version.name}' AS dataset, {version.version} AS version, * FROM _{kind.name}_{index}"
                )
        if not parts:
            con.register(f"_{kind.name}_empty", pa.Table.from_batches([], schema=kind.schema))
            parts.append(f"SELECT NULL::VARCHAR AS dataset, NULL::INTEGER AS version, * FROM _{kind.name}_empty")
        con.execute(f"CREATE VIEW {kind.name} AS " + " UNION ALL ".join(parts))
        con.execute(f"DROP TABLE empty_{kind.name}")
    for setting in (
        "SET enable_external_access = false",
        "SET disabled_filesystems = 'LocalFileSystem'",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET lock_configuration = true",
    ):
        con.execute(setting)
    return con


def run_query(store: Store, sql: str) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of one read-only statement over ``store``."""
    check_read_only(sql)
    with sandbox(store) as con:
        try:
            result = con.execute(sql)
            return [d[0] for d in result.description], result.fetchall()
        except duckdb.Error as exc:
            for version in store.versions():  # a damaged data file, not the SQL, may be what failed
                version.check_footers()
            raise InputError(f"query: {str(exc).splitlines()[0]}") from None
