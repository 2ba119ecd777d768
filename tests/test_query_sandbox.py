"""`realign-data query` cannot write a byte: a battery of write and escape attempts against a real store."""

from __future__ import annotations

import pytest

from realign_data.errors import InputError
from realign_data.store import Store
from tests.helpers import assert_one_line_error, pair_row, pair_table, run_cli, tree_digest

# {shard}: a data file of the version; {store}: the store root; {outside}: a folder beside the store
ATTEMPTS = [
    "EXPLAIN ANALYZE COPY (SELECT * FROM pairs LIMIT 1) TO '{shard}' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{store}/new.csv'",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN COPY (SELECT 1) TO '{outside}/explained.csv'",
    "COPY (SELECT * FROM pairs) TO '{shard}' (FORMAT parquet)",
    "COPY (SELECT 1) TO '{store}/datasets/demo/v2.csv'",
    "COPY pairs TO '{outside}/pairs.csv'",
    "EXPORT DATABASE '{store}/exported'",
    "ATTACH '{store}/catalog.duckdb' AS catalog",
    "ATTACH '{outside}/new.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET disabled_filesystems",
    "SET disabled_filesystems = ''",
    "PRAGMA enable_profiling",
    "PRAGMA database_list",
    "CALL pragma_version()",
    "SELECT 1; COPY (SELECT 1) TO '{store}/second.csv'",
    "/* SELECT */ COPY (SELECT 1) TO '{store}/commented.csv'",
    "-- a comment\nCOPY (SELECT 1) TO '{store}/line-comment.csv'",
    "cOpY (sElEcT 1) tO '{store}/odd-case.csv'",
    "WITH x AS (SELECT 1) COPY (SELECT * FROM x) TO '{store}/cte.csv'",
    "WITH x AS (SELECT * FROM pairs) SELECT * FROM read_csv('{outside}/secret.csv')",
    "SELECT * FROM read_text('{outside}/secret.csv')",
    "SELECT * FROM read_blob('{store}/catalog.duckdb')",
    "SELECT * FROM read_parquet('{shard}')",
    "SELECT * FROM glob('{store}/*')",
    "SELECT * FROM '{outside}/secret.csv'",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "CREATE TABLE t AS SELECT 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "INSERT INTO publications VALUES ('demo@v1', 'x/y', 'c', now(), false)",
    "UPDATE catalog_versions SET num_rows = 0",
    "DELETE FROM catalog_versions",
    "DROP VIEW pairs",
    "CHECKPOINT",
    "VACUUM",
    "PIVOT pairs ON pair_type USING count(*)",
    "SELECT * FROM duckdb_settings() WHERE name = 'enable_external_access'",
]


@pytest.fixture
def store(tmp_path, monkeypatch):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.csv").write_text("token\nnot-for-queries\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # relative paths in an attempt must land nowhere either
    store = Store(tmp_path / "store")
    store.write_version("demo", [pair_table([pair_row(i) for i in range(6)])])
    return store


def test_every_write_or_escape_attempt_is_refused_or_harmless(store, tmp_path):
    assert len(ATTEMPTS) >= 25
    values = {"shard": store.resolve("demo@v1").files[0], "store": store.root, "outside": tmp_path / "outside"}
    before = tree_digest(tmp_path)
    outcomes = {}
    for attempt in ATTEMPTS:
        sql = attempt.format(**values)
        try:
            columns, rows = store.query(sql)
            outcomes[attempt] = ("ran", rows)
        except InputError as exc:
            outcomes[attempt] = ("refused", str(exc))
        assert tree_digest(tmp_path) == before, f"{attempt!r} changed a file"
    ran = {a: rows for a, (kind, rows) in outcomes.items() if kind == "ran"}
    # only pure reads of the sandbox's own tables may run; none of them returns a file's content
    assert set(ran) == {"SELECT * FROM duckdb_settings() WHERE name = 'enable_external_access'"}
    assert ran[next(iter(ran))][0][1] == "false"
    assert "not-for-queries" not in repr(outcomes)
    assert store.query("SELECT count(*) FROM pairs")[1] == [(6,)]  # and the sandbox still answers


def test_explain_analyze_copy_through_the_cli_exits_2_and_leaves_the_shard(store, tmp_path):
    shard = store.resolve("demo@v1").files[0]
    before = tree_digest(tmp_path)
    result = run_cli(
        "query",
        f"EXPLAIN ANALYZE COPY (SELECT * FROM pairs LIMIT 1) TO '{shard}' (FORMAT parquet)",
        "--store",
        str(store.root),
    )
    assert_one_line_error(result, 2, "EXPLAIN statements are refused")
    several = run_cli("query", "SELECT 1; SELECT 2", "--store", str(store.root))
    assert_one_line_error(several, 2, "2 statements given")
    assert tree_digest(tmp_path) == before


def test_query_needs_no_catalog_and_does_not_write_one(store):
    store.catalog_path.unlink()  # the sandbox reads the manifests, not the catalog
    assert store.query("SELECT dataset, version, count(*) FROM pairs GROUP BY ALL")[1] == [("demo", 1, 6)]
    assert store.query("SELECT ref, num_rows FROM versions")[1] == [("demo@v1", 6)]
    assert not store.catalog_path.exists()
