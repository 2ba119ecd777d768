"""Faults with real processes, real files and real servers: full disks, read-only stores, kills, broken servers.

The disk and read-only cases mount a small tmpfs or a read-only bind mount, which needs root (CI runs as root);
elsewhere they skip with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from realign_data.build import Build
from realign_data.config import BuildConfig, load_config
from realign_data.errors import RealignError
from realign_data.store import HOST, Store
from tests.helpers import REPO, assert_one_line_error, pair_row, pair_table, run_cli, tree_digest
from tests.openai_server import Reply, ScriptedOpenAIServer


def write(store: Store, start: int = 0, rows: int = 10):
    return store.write_version("demo", [pair_table([pair_row(i) for i in range(start, start + rows)])])


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that can really be filled."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def read_only(tmp_path):
    """``read_only(folder)``: a read-only bind mount of ``folder`` (the same files, refused writes)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    views = []

    def view(folder: Path) -> Path:
        target = tmp_path / f"ro-{len(views)}"
        target.mkdir()
        bound = _mount("--bind", str(folder), str(target))
        if bound.returncode:
            pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
        views.append(target)
        if _mount("-o", "remount,bind,ro", str(target)).returncode:
            pytest.skip("cannot remount a bind mount read-only here")
        return target

    yield view
    for target in views:
        subprocess.run(["umount", "-l", str(target)], check=False)


# ---- a full disk ---------------------------------------------------------------------------------------------
def test_full_disk_during_a_catalog_rebuild_keeps_the_old_catalog(small_disk):
    store = Store(small_disk / "store")
    for k in range(3):
        write(store, 10 * k)
    catalog = store.catalog_path.read_bytes()
    fill(small_disk)
    result = run_cli("catalog", "rebuild", "--store", str(store.root))
    assert_one_line_error(
        result, 1, "the catalog could not be rebuilt", "No space left on device", "the previous catalog is kept"
    )
    assert store.catalog_path.read_bytes() == catalog
    assert list((store.root / "tmp").iterdir()) == []  # no half-written catalog, no .wal left
    assert store.catalog_state(store.versions()) == "current"
    assert [store.verify(v.ref) for v in store.versions()] == [[], [], []]


def test_full_disk_during_a_write_leaves_no_partial_version(small_disk):
    store = Store(small_disk / "store")
    write(store)
    before = store.catalog_path.read_bytes()
    filler = fill(small_disk)
    with pytest.raises(OSError):
        store.write_version("demo", [pair_table([pair_row(i) for i in range(100, 2100)])])
    assert [v.ref for v in store.versions()] == ["demo@v1"]
    assert list((store.root / "tmp").iterdir()) == []
    assert store.catalog_path.read_bytes() == before
    filler.unlink()
    assert write(store, 50).ref == "demo@v2"  # the space is back: writing works again
    assert store.verify("demo@v1") == [] and store.verify("demo@v2") == []


def test_full_disk_export_and_build_exit_1_and_leave_nothing(small_disk, tmp_path):
    store = Store(tmp_path / "store")
    write(store)
    out = small_disk / "exports"
    out.mkdir()
    fill(small_disk)
    result = run_cli("export", "demo@v1", "--out", str(out), "--store", str(store.root))
    assert_one_line_error(result, 1, "no space left on device")
    assert list(out.iterdir()) == []
    with ScriptedOpenAIServer(lambda request, seen: Reply(content="Rating: 5")) as server:
        built = run_cli(
            "build",
            "--store",
            str(small_disk / "store"),
            "--engine",
            "openai",
            "--policy",
            "m",
            "--set",
            f"engine.base_urls=[{server.url}]",
            "--limit",
            "4",
        )
    assert_one_line_error(built, 1, "no space left on device")


# ---- a read-only store ---------------------------------------------------------------------------------------
def test_read_only_store_reads_work_and_writes_fail_with_the_reason(tmp_path, read_only):
    source = Store(tmp_path / "store")
    write(source)
    write(source, 10)
    source.catalog_path.unlink()  # a stale catalog that cannot be rebuilt here
    view = read_only(source.root)
    before = tree_digest(source.root)
    args = ["--store", str(view)]
    assert json.loads(run_cli("list", *args, "--format", "json", check=True).stdout)[1]["version"] == "demo@v2"
    assert json.loads(run_cli("show", "demo@v1", *args, "--format", "json", check=True).stdout)["num_rows"] == 10
    query = run_cli("query", "SELECT count(*) AS n FROM pairs", *args, "--format", "csv", check=True)
    assert query.stdout == "n\n20\n"
    verified = run_cli("verify", "demo@v2", *args, check=True)
    assert "OK" in verified.stdout and "could not be brought up to date" in verified.stderr
    run_cli("export", "demo@v1", "--out", str(tmp_path / "out"), *args, check=True)
    rebuilt = run_cli("catalog", "rebuild", *args)
    assert_one_line_error(rebuilt, 1, "read-only file system")
    with ScriptedOpenAIServer(lambda request, seen: Reply(content="Rating: 5")) as server:
        built = run_cli(
            "build",
            *args,
            "--engine",
            "openai",
            "--policy",
            "m",
            "--set",
            f"engine.base_urls=[{server.url}]",
            "--limit",
            "4",
        )
    assert_one_line_error(built, 1, "read-only file system")
    assert tree_digest(source.root) == before


# ---- kills ---------------------------------------------------------------------------------------------------
REBUILDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from realign_data.store import Store
    store = Store({root!r})
    while True:
        store.rebuild_catalog()
        print("rebuilt", flush=True)
""")


def test_sigkill_at_random_points_of_catalog_rebuilds(tmp_path):
    store = Store(tmp_path / "store")
    for k in range(4):
        write(store, 10 * k)
    rng = random.Random(0)
    code = REBUILDER.format(repo=str(REPO), root=str(store.root))
    for _ in range(20):
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().startswith("rebuilt")
        time.sleep(rng.uniform(0, 0.05))  # a rebuild takes a few milliseconds: kills land anywhere in it
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert store.catalog_state(store.versions()) == "current"
        assert all(store.verify(v.ref) == [] for v in store.versions())
        assert store.notes == []  # the catalog was never found damaged
    write(store, 100)  # the next write clears what the killed rebuilds left in tmp/
    assert list((store.root / "tmp").iterdir()) == []


# ---- broken and foreign files --------------------------------------------------------------------------------
def test_broken_version_folders_are_reported_and_skipped(tmp_path):
    store = Store(tmp_path)
    write(store)
    datasets = tmp_path / "datasets" / "demo"
    (datasets / "v2").mkdir()  # a crash outside the store's control: no version record
    (datasets / "v3").mkdir()
    (datasets / "v3" / "version.json").write_text("{not json")
    (datasets / "notes.txt").write_text("a user's file")
    listed = run_cli("list", "--store", str(tmp_path), "--format", "json")
    assert listed.returncode == 0 and [v["version"] for v in json.loads(listed.stdout)] == ["demo@v1"]
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 3 and all(line.startswith("warning: skipped ") for line in warnings)
    assert "v2: no version.json" in listed.stderr and "v3: version.json unreadable" in listed.stderr
    assert write(Store(tmp_path), 10).ref == "demo@v4"  # never reuses a broken folder's number
    assert Store(tmp_path).query("SELECT count(*) FROM pairs")[1] == [(20,)]


@pytest.mark.parametrize("damage", ["truncate", "delete", "footer"])
def test_a_damaged_shard_is_named_on_read(tmp_path, damage):
    store = Store(tmp_path / "store")
    shard = write(store).files[0]
    write(store, 10)
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        shard.unlink()
    else:  # same size, broken footer: only reading can tell
        shard.write_bytes(data[:-4] + b"XXXX")
    args = ["--store", str(store.root)]
    for command in (
        ["show", "demo@v1"],
        ["export", "demo@v1", "--out", str(tmp_path / "out")],
        ["diff", "demo@v1", "demo@v2"],
        ["query", "SELECT count(*) FROM pairs"],
    ):
        result = run_cli(*command, *args)
        assert_one_line_error(result, 1, "verify")
        assert str(shard) in result.stderr or (damage == "footer" and "demo@v1" in result.stderr), result.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert run_cli("show", "demo@v2", *args).returncode == 0  # other versions stay readable


def test_a_damaged_catalog_is_rebuilt_from_the_version_records_in_seconds(tmp_path):
    store = Store(tmp_path)
    for k in range(3):
        write(store, 10 * k)
    store.catalog_path.write_bytes(os.urandom(4096))
    started = time.monotonic()
    result = run_cli("verify", "demo@v2", "--store", str(tmp_path))
    assert time.monotonic() - started < 15
    assert result.returncode == 0 and "OK" in result.stdout
    assert result.stderr.startswith("note: catalog.duckdb was damaged") and "rebuilt from the records" in result.stderr
    assert Store(tmp_path).catalog_state(store.versions()) == "current"
    assert Store(tmp_path).query("SELECT count(*) FROM versions")[1] == [(3,)]
    store.catalog_path.unlink()
    rebuilt = run_cli("catalog", "rebuild", "--store", str(tmp_path), check=True)
    assert "it was missing" in rebuilt.stdout


def test_leftovers_of_dead_writers_are_removed_but_other_hosts_are_left_alone(tmp_path):
    store = Store(tmp_path)
    write(store)
    dead = 2**22 + 12345  # above pid_max on typical systems: no such process
    tmp = tmp_path / "tmp"
    own = [tmp / f"catalog~{HOST}~{dead}~aaaa.duckdb", tmp / f"catalog~{HOST}~{dead}~aaaa.duckdb.wal"]
    for path in own:
        path.write_bytes(b"x")
    (tmp / f"demo~{HOST}~{dead}~bbbb" / "data").mkdir(parents=True)
    foreign = tmp / f"demo~another-host~{dead}~cccc"
    (foreign / "data").mkdir(parents=True)
    write(store, 10)
    assert sorted(p.name for p in tmp.iterdir()) == [foreign.name]


# ---- broken servers, then a healthy one -----------------------------------------------------------------------
PROMPTS = [
    "Write a haiku about frost.",
    "Draft an email to a landlord.",
    "Describe a lighthouse in a storm.",
    "Make this sentence formal: gotta go.",
    "Give a wedding toast.",
    "Explain photosynthesis simply.",
    "List three uses of a paperclip.",
    "Summarize the water cycle.",
]


class FlakyServer(ScriptedOpenAIServer):
    """Deterministic answers (from the messages and the seed); while ``broken``, chosen requests fail for good."""

    def __init__(self, broken: bool = True):
        self.broken = broken
        super().__init__(self.answer)

    def answer(self, request: dict, seen: int) -> Reply:
        text = request["messages"][-1]["content"]
        if "Rate the response" in text:
            if self.broken and "toast" in text and "[Assistant response]" in text:
                return Reply(content="I would rather not rate this.")
            return Reply(content=f"Rating: {1 + hashlib.sha256(text.encode()).digest()[0] % 10}")
        if self.broken and "Draft response" not in text:
            if "haiku" in text:
                return Reply(status=500)
            if "email" in text:
                return Reply(content="   ")
            if "lighthouse" in text:
                return Reply(body=b"<html>a proxy error page</html>")
            if "formal" in text:
                return Reply(content="late", delay=2.0)
        tag = "revised" if "Draft response" in text else "answer"
        return Reply(content=f"{tag} {request.get('seed', 0) % 997} to {text[-40:]}", choices=1)


def flaky_config(server: ScriptedOpenAIServer, prompts: Path) -> BuildConfig:
    return load_config(
        BuildConfig,
        None,
        [
            "engine.kind=openai",
            f"engine.base_urls=[{server.url}]",
            "engine.max_retries=1",
            "engine.retry_backoff_s=0.01",
            "engine.timeout_s=0.5",
            "policy.spec=served",
            f"prompts.source={prompts}",
            "generation.num_samples=2",
            "scoring.max_attempts=2",
        ],
    )


def test_failed_items_are_counted_never_cached_and_exactly_they_are_retried(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with FlakyServer(broken=True) as server:
        first = Build(flaky_config(server, prompts), Store(tmp_path / "store"))
        result = first.run()
        calls_when_broken = dict(server.seen)
    reasons = {stage: {f["reason"] for f in failures} for stage, failures in result.failures.items()}
    assert {"InternalServerError", "empty response", "APITimeoutError"} <= reasons["generate"]
    assert len(reasons["generate"]) == 4  # plus the proxy's HTML page, however the client names it
    assert reasons["score"] == {"unparseable"}
    assert result.stats["failures"]["generate"]["empty response"] == 2  # both samples of the email prompt
    assert result.retries["generate"]["InternalServerError"] >= 1 and result.retries["score"]["reask:unparseable"]
    cached = Store(tmp_path / "store")  # nothing failed is in the cache: no empty text, no null score
    texts = [r["text"] for r in first_cache_rows(tmp_path, "generate")]
    assert texts and all(t.strip() for t in texts)
    assert all(r["score"] is not None for r in first_cache_rows(tmp_path, "score"))
    assert cached.versions() == []

    with FlakyServer(broken=False) as server:
        second = Build(flaky_config(server, prompts), Store(tmp_path / "store"))
        resumed = second.commit(second.run())
        asked_again = dict(server.seen)
    assert second.failures == {}
    generation_asked = {
        json.loads(k)[-1]["content"] for k in asked_again if "Rate the response" not in k and "Draft response" not in k
    }
    # exactly the failed ones; the commit's /tokenize probe of one prompt reaches the same stand-in server
    probe = resumed.record["models"]["policy"]["prompt_rendering"]["probe"]["messages"][-1]["content"]
    assert generation_asked - {probe} == {PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]} - {probe}
    assert not any(
        k in calls_when_broken and "toast" not in k and "Rate the response" in k for k in asked_again
    )  # judged items were not judged again, except the one that failed
    with FlakyServer(broken=False) as server:
        clean = Build(flaky_config(server, prompts), Store(tmp_path / "clean"))
        reference = clean.commit(clean.run())
    assert pair_rows(resumed) == pair_rows(reference)


def first_cache_rows(tmp_path: Path, stage: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [
        row
        for part in sorted((tmp_path / "store" / "runs" / "smoke" / stage).glob("part-*.parquet"))
        for row in pq.read_table(part).to_pylist()
    ]


def pair_rows(version) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for f in version.files for row in pq.read_table(f).to_pylist()]


def test_a_stage_where_every_request_fails_stops_and_names_them(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:3]))
    with ScriptedOpenAIServer(lambda request, seen: Reply(status=503)) as server:
        config = flaky_config(server, prompts)
        with pytest.raises(
            RealignError,
            match=r"generate: every request failed \(3 failure\(s\): "
            r"InternalServerError=3\)",
        ):
            Build(config, Store(tmp_path / "store")).run()
        result = run_cli(
            "build",
            "--store",
            str(tmp_path / "store"),
            "--engine",
            "openai",
            "--policy",
            "served",
            "--prompts",
            str(prompts),
            "--set",
            f"engine.base_urls=[{server.url}]",
            "--set",
            "engine.max_retries=0",
        )
    assert_one_line_error(result, 1, "generate: every request failed (3 failure(s): InternalServerError=3)")


def test_a_second_build_on_a_running_run_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with (
        FlakyServer(broken=False) as fast,
        ScriptedOpenAIServer(lambda request, seen: Reply(content="slow", delay=1.0)) as slow,
    ):
        args = [
            "generate",
            "--store",
            str(tmp_path / "store"),
            "--engine",
            "openai",
            "--policy",
            "served",
            "--prompts",
            str(prompts),
            "--set",
            "engine.concurrency=1",
        ]
        first = subprocess.Popen(
            [str(Path(sys.executable).parent / "realign-data"), *args, "--set", f"engine.base_urls=[{slow.url}]"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        owner = tmp_path / "store" / "runs" / "smoke.owner.json"
        deadline = time.monotonic() + 60
        while not (owner.exists() and slow.calls):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli(*args, "--set", f"engine.base_urls=[{fast.url}]")
        assert_one_line_error(second, 1, "run 'smoke' is in use by", f"pid {first.pid} on {HOST}")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        third = run_cli(*args, "--set", f"engine.base_urls=[{fast.url}]")
    assert third.returncode == 0, third.stderr
    assert re.search(r"samples\s+│ 16: ", third.stdout), third.stdout  # every sample of the 8 prompts is there


# ---- secrets -------------------------------------------------------------------------------------------------
def test_no_secret_reaches_the_manifest_the_catalog_or_the_hub_folder(tmp_path):
    key = "sk-live-0123456789abcdefghij"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with FlakyServer(broken=False) as server:
        url = server.url.replace("http://", f"http://admin:{key}@")
        built = run_cli(
            "build",
            "--store",
            str(tmp_path / "store"),
            "--engine",
            "openai",
            "--policy",
            "served",
            "--prompts",
            str(prompts),
            "--set",
            f"engine.base_urls=[{url}]",
            env={"OPENAI_API_KEY": key},
        )
    assert built.returncode == 0, built.stderr
    run_cli(
        "publish",
        "smoke@v1",
        "--repo-id",
        "me/smoke",
        "--dry-run",
        str(tmp_path / "hub"),
        "--store",
        str(tmp_path / "store"),
        check=True,
    )
    leaked = [
        str(p)
        for folder in ("store", "hub")
        for p in (tmp_path / folder).rglob("*")
        if p.is_file() and (key.encode() in p.read_bytes() or b"admin:" in p.read_bytes())
    ]
    assert leaked == []
    manifest = Store(tmp_path / "store").resolve("smoke@v1").record
    assert manifest["config"]["engine"]["base_urls"] == [server.url]
    refused = run_cli("build", "--store", str(tmp_path / "store"), "--set", f"engine.api_key_env={key}")
    assert_one_line_error(refused, 2, "engine.api_key_env: the value looks like an API key")


def test_the_samples_of_one_request_reach_the_cache_together(tmp_path):
    """A killed build leaves whole prompts in the cache: the flush timer never splits one result's rows, so a
    rerun asks again only for prompts it has nothing of (and counts only rows it did not have as computed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from realign_data.runs import StageCache

    schema = pa.schema([("key", pa.string()), ("text", pa.string())])
    cache = StageCache(tmp_path, schema, flush_rows=3, flush_seconds=0.0)  # the timer is always due
    assert cache.add({"key": "p1#0", "text": "a"}, {"key": "p1#1", "text": "b"}) == 2
    assert cache.add({"key": "p1#1", "text": "b"}, {"key": "p2#0", "text": "c"}, {"key": "p2#1", "text": "d"}) == 2
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert [pq.read_table(p)["key"].to_pylist() for p in parts] == [["p1#0", "p1#1"], ["p2#0", "p2#1"]]
    assert StageCache(tmp_path, schema).rows.keys() == {"p1#0", "p1#1", "p2#0", "p2#1"}
