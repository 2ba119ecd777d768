import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from realign_data.errors import InputError
from realign_data.store import Store
from tests.helpers import pair_row, pair_table, run_cli


def write(store, name="demo", rows=6, start=0, **kwargs):
    return store.write_version(name, [pair_table([pair_row(i) for i in range(start, start + rows)])], **kwargs)


def test_write_creates_an_immutable_version_with_a_full_manifest(tmp_path):
    store = Store(tmp_path / "store")
    version = write(
        store,
        config={"generation": {"temperature": 0.8}},
        models={"policy": {"spec": "tiny"}},
        inputs={"prompts": {"source": "builtin"}},
    )
    assert version.ref == "demo@v1"
    assert version.path == tmp_path / "store" / "datasets" / "demo" / "v1"
    manifest = json.loads((version.path / "version.json").read_text())
    assert manifest["num_rows"] == 6 and manifest["rows_by_pair_type"] == {"on_policy": 3, "revision": 3}
    assert manifest["config"] == {"generation": {"temperature": 0.8}}
    assert manifest["models"]["policy"]["spec"] == "tiny"
    assert manifest["code"]["packages"]["pyarrow"] and manifest["code"]["realign_version"]
    assert "git_sha" in manifest["code"] and manifest["created_at"].endswith("+00:00")
    shard = version.path / manifest["files"][0]["path"]
    assert pq.ParquetFile(shard).metadata.row_group(0).column(0).compression == "ZSTD"
    assert write(store).ref == "demo@v2"
    assert [v.ref for v in store.versions()] == ["demo@v1", "demo@v2"]
    assert store.resolve("demo").ref == "demo@v2"
    assert not list((tmp_path / "store" / "tmp").glob("demo~*"))


def test_shards_rotate_and_rows_round_trip(tmp_path):
    store = Store(tmp_path)
    rows = [pair_row(i) for i in range(25)]
    version = store.write_version("big", [pair_table(rows[:10]), pair_table(rows[10:])], shard_rows=7)
    assert [f["rows"] for f in version.record["files"]] == [7, 7, 7, 4]
    back = [row for f in version.files for row in pq.read_table(f).to_pylist()]
    assert back == rows


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("margin"), "missing column(s) margin"),
        (lambda r: r.update(extra=1), "unknown column(s) extra"),
        (lambda r: r.update(pair_type="sideways"), "row 3: field 'pair_type' is not one of"),
        (lambda r: r.update(margin=99.0), "row 3: field 'margin' is not chosen_score - rejected_score"),
        (lambda r: r.update(pair_id="pair-000000"), "row 3: field 'pair_id' 'pair-000000' is not unique"),
        (lambda r: r.update(chosen=[]), "row 3: field 'chosen' must hold exactly one message"),
        (
            lambda r: r.update(rejected=[{"role": "user", "content": "x"}]),
            "row 3: field 'rejected' must be an assistant",
        ),
        (
            lambda r: r.update(prompt=[{"role": "assistant", "content": "x"}]),
            "row 3: field 'prompt' must end with a user",
        ),
        (lambda r: r.update(scorer=None), "row 3: field 'scorer' is null"),
        (lambda r: r.update(chosen_score=float("nan")), "row 3: field 'chosen_score' is not a finite number"),
        (
            lambda r: r.update(prompt=[{"role": "user", "content": None}]),
            "row 3: field 'prompt' has a message with null",
        ),
    ],
)
def test_contract_violations_write_nothing(tmp_path, change, message):
    import pyarrow as pa

    rows = [pair_row(i) for i in range(5)]
    change(rows[3])
    store = Store(tmp_path)
    with pytest.raises(InputError) as error:
        store.write_version("bad", [pa.Table.from_pylist(rows[:3]), pa.Table.from_pylist(rows[3:])])
    assert message in str(error.value)
    assert store.versions() == []
    assert not list((tmp_path / "tmp").glob("bad~*"))


def test_empty_write_is_refused(tmp_path):
    with pytest.raises(InputError, match="no rows to write"):
        Store(tmp_path).write_version("empty", [])
    assert Store(tmp_path).versions() == []


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from realign_data.store import Store
    from tests.helpers import pair_row, pair_table

    def batches():
        for b in range({batches}):
            yield pair_table([pair_row(b * 50 + i) for i in range(50)])
            print("batch", b, flush=True)
            time.sleep({pause})

    for _ in range({versions}):
        print("wrote", Store({root!r}).write_version("demo", batches(), shard_rows=60).ref, flush=True)
""")


def start_writer(root, batches=6, pause=0.0, versions=1):
    code = WRITER.format(repo=os.getcwd(), root=str(root), batches=batches, pause=pause, versions=versions)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_sigkill_mid_write_leaves_no_visible_version(tmp_path):
    writer = start_writer(tmp_path, batches=50, pause=0.05)
    for line in writer.stdout:
        if line.startswith("batch 3"):  # shards are on disk by now
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    store = Store(tmp_path)
    assert list((tmp_path / "tmp").glob("demo~*/data/*.parquet")), "the killed writer had staged shards"
    assert store.versions() == []
    assert store.query("SELECT count(*) FROM pairs")[1] == [(0,)]
    version = write(store)
    assert version.ref == "demo@v1" and store.verify("demo@v1") == []
    assert not list((tmp_path / "tmp").glob("demo~*")), "abandoned staging was cleaned"


@pytest.mark.parametrize("delay", [round(0.011 * k, 3) for k in range(20)])
def test_sigkill_at_any_moment_never_exposes_a_partial_version(tmp_path, delay):
    """Three versions take about 0.2 s to write; 20 kills spread over that time land in shards, manifests,
    renames and catalog updates."""
    writer = start_writer(tmp_path, batches=4, versions=3)
    assert writer.stdout.readline().startswith("batch 0")
    time.sleep(delay)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    store = Store(tmp_path)
    for version in store.versions():
        assert store.verify(version.ref) == []
        assert version.record["num_rows"] == 200
    count = store.query("SELECT count(*) FROM pairs")[1][0][0]
    assert count == 200 * len(store.versions())
    assert write(store).version == len(store.versions())


def test_concurrent_writers_get_distinct_versions(tmp_path):
    writers = [start_writer(tmp_path, batches=3, versions=3) for _ in range(2)]
    refs = []
    for writer in writers:
        out, _ = writer.communicate(timeout=300)
        assert writer.returncode == 0
        refs += [line.split()[1] for line in out.splitlines() if line.startswith("wrote")]
    assert sorted(refs) == [f"demo@v{i}" for i in range(1, 7)]
    store = Store(tmp_path)
    assert all(store.verify(ref) == [] for ref in refs)
    assert store.query("SELECT version, count(*) FROM pairs GROUP BY 1 ORDER BY 1")[1] == [
        (i, 150) for i in range(1, 7)
    ]


def test_catalog_views_and_resync(tmp_path):
    store = Store(tmp_path)
    write(store, "alpha", rows=4)
    write(store, "beta", rows=6)
    columns, rows = store.query("SELECT dataset, version, pair_type, count(*) FROM pairs GROUP BY ALL ORDER BY ALL")
    assert columns[:3] == ["dataset", "version", "pair_type"]
    assert rows == [
        ("alpha", 1, "on_policy", 2),
        ("alpha", 1, "revision", 2),
        ("beta", 1, "on_policy", 3),
        ("beta", 1, "revision", 3),
    ]
    assert store.query("SELECT ref, num_rows FROM versions")[1] == [("alpha@v1", 4), ("beta@v1", 6)]
    (tmp_path / "catalog.duckdb").unlink()  # the filesystem is the source of truth
    assert store.query("SELECT count(*) FROM versions")[1] == [(2,)]
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert Store(moved).query("SELECT count(*) FROM pairs")[1] == [(10,)]


def test_query_cannot_read_outside_the_store(tmp_path):
    store = Store(tmp_path / "store")
    write(store)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(InputError, match="query:"):
        store.query(f"SELECT * FROM read_csv('{secret}')")


def test_verify_catches_a_flipped_byte_and_cli_exits_1(tmp_path):
    store = Store(tmp_path)
    version = write(store)
    assert run_cli("verify", "demo@v1", "--store", str(tmp_path), check=True).stdout.startswith("demo@v1: OK")
    shard = version.files[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert store.verify("demo@v1") == ["data/shard-00000.parquet: sha256 differs from the record"]
    result = run_cli("verify", "demo@v1", "--store", str(tmp_path))
    assert result.returncode == 1
    assert "sha256 differs" in result.stderr


def test_verify_reports_extra_and_missing_files(tmp_path):
    store = Store(tmp_path)
    version = store.write_version("demo", [pair_table([pair_row(i) for i in range(20)])], shard_rows=10)
    (version.path / "data" / "stray.parquet").write_bytes(b"x")
    version.files[1].unlink()
    assert store.verify("demo@v1") == [
        "data/shard-00001.parquet: missing",
        "data/stray.parquet: not listed in the record",
    ]


def test_verify_notices_a_version_record_edited_after_the_fact(tmp_path):
    store = Store(tmp_path)
    version = write(store)
    manifest = json.loads((version.path / "version.json").read_text())
    manifest["num_rows"] = 1000
    (version.path / "version.json").write_text(json.dumps(manifest))
    write(store)  # rebuilding the catalog keeps the sha256 recorded when v1 was written
    assert store.verify("demo@v1") == ["version.json: changed since the version was catalogued"]
    assert store.verify("demo@v2") == []


def test_export_jsonl_and_parquet(tmp_path):
    store = Store(tmp_path / "store")
    write(store, rows=5)
    out = tmp_path / "out"
    jsonl = store.export("demo@v1", "jsonl", out)
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == [pair_row(i) for i in range(5)]
    folder = store.export("demo@v1", "parquet", out)
    assert (folder / "version.json").exists()
    assert pq.read_table(folder / "data").num_rows == 5
    with pytest.raises(Exception, match="already exists"):
        store.export("demo@v1", "jsonl", out)
    assert sorted(p.name for p in out.iterdir()) == ["demo-v1", "demo-v1.jsonl"]


def test_cli_list_show_query_export(tmp_path):
    store = Store(tmp_path / "store")
    write(store, rows=8)
    args = ["--store", str(store.root)]
    listed = json.loads(run_cli("list", *args, "--format", "json", check=True).stdout)
    assert listed[0]["version"] == "demo@v1" and listed[0]["rows"] == 8
    shown = json.loads(run_cli("show", "demo", *args, "--format", "json", check=True).stdout)
    by_type = {t["pair_type"]: t for t in shown["by_pair_type"]}
    assert by_type["on_policy"]["rows"] == 4
    margins = [pair_row(i)["margin"] for i in range(8) if pair_row(i)["pair_type"] == "on_policy"]
    assert by_type["on_policy"]["margin_q"] == pytest.approx(list(np.quantile(margins, [0, 0.25, 0.5, 0.75, 1])))
    table = run_cli("show", "demo@v1", *args, check=True).stdout
    assert "on_policy" in table and "revision" in table
    csv_out = run_cli(
        "query",
        "SELECT pair_type, count(*) AS n FROM pairs GROUP BY 1 ORDER BY 1",
        *args,
        "--format",
        "csv",
        check=True,
    ).stdout
    assert csv_out.splitlines() == ["pair_type,n", "on_policy,4", "revision,4"]
    refused = run_cli("query", "DELETE FROM catalog_versions", *args)
    assert refused.returncode == 2 and "DELETE statements are refused" in refused.stderr
    missing = run_cli("show", "nope@v3", *args)
    assert missing.returncode == 2 and "no dataset 'nope'" in missing.stderr
    exported = run_cli("export", "demo@v1", "--format", "jsonl", "--out", str(tmp_path / "x"), *args, check=True)
    assert (tmp_path / "x" / "demo-v1.jsonl").exists() and "wrote" in exported.stdout


def test_a_store_written_before_the_rename_still_reads(tmp_path):
    """Stores from realign 0.1 keep each record as manifest.json and a catalog column manifest_sha256: listed,
    read, verified (an edited record is still noticed) and catalogued; new versions get version.json."""
    import duckdb

    store = Store(tmp_path)
    old = write(store)
    (old.path / "version.json").rename(old.path / "manifest.json")
    with duckdb.connect(str(store.catalog_path)) as con:
        con.execute("ALTER TABLE catalog_versions RENAME COLUMN record_sha256 TO manifest_sha256")
    reopened = Store(tmp_path)
    version = reopened.resolve("demo@v1")
    assert version.record_path.name == "manifest.json" and version.record["num_rows"] == 6
    assert reopened.verify("demo@v1") == []
    assert reopened.catalog_state(reopened.versions()) == "current"
    assert reopened.query("SELECT count(*) FROM pairs")[1] == [(6,)]
    edited = json.loads((old.path / "manifest.json").read_text()) | {"num_rows": 1000}
    (old.path / "manifest.json").write_text(json.dumps(edited))
    assert Store(tmp_path).verify("demo@v1") == ["manifest.json: changed since the version was catalogued"]
    assert write(reopened).ref == "demo@v2" and (reopened.resolve("demo@v2").path / "version.json").exists()
