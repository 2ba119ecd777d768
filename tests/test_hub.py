"""The Hub layout (publish --dry-run), publish and pull against a local stand-in for the Hub, and diff."""

import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard

from realign_data.store import Store
from tests.helpers import pair_row, pair_table, run_cli
from tests.hub_server import LocalHub


def rows_of(version):
    return [row for f in version.files for row in pq.read_table(f).to_pylist()]


def test_dry_run_folder_loads_every_config_and_round_trips(tmp_path):
    store = Store(tmp_path / "store")
    rows = [pair_row(i, pair_type=("on_policy", "revision", "reviser_train")[i % 3]) for i in range(30)]
    version = store.write_version(
        "demo", [pair_table(rows)], models={"policy": {"spec": "tiny", "identity": "tiny@sha256:abc"}}
    )
    out = tmp_path / "hub"
    result = run_cli(
        "publish",
        "demo@v1",
        "--repo-id",
        "me/demo",
        "--dry-run",
        str(out),
        "--store",
        str(store.root),
        "--license",
        "apache-2.0",
        check=True,
    )
    assert "nothing uploaded" in result.stdout
    by_id = {row["pair_id"]: row for row in rows_of(version)}
    for config in ("default", "on_policy", "revision", "reviser_train"):
        loaded = datasets.load_dataset(str(out), config, split="train")
        expected = [r for r in by_id.values() if config in ("default", r["pair_type"])]
        assert sorted(loaded.to_list(), key=lambda r: r["pair_id"]) == sorted(expected, key=lambda r: r["pair_id"])
        assert list((out / "data" / config).iterdir())[0].name == "train-00000-of-00001.parquet"
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.size_categories == ["n<1K"]
    assert [c["config_name"] for c in card.data.configs] == ["default", "on_policy", "reviser_train", "revision"]
    assert "tiny@sha256:abc" in card.text and "demo@v1" in card.text and 'load_dataset("me/demo"' in card.text
    assert "doi:10.18653/v1/2025.findings-emnlp.642" in card.text and "Reformatted Alignment" in card.text
    assert (out / "margins.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "realign_version.json").read_text()) == version.record
    again = run_cli("publish", "demo@v1", "--repo-id", "me/demo", "--dry-run", str(out), "--store", str(store.root))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert store.query("SELECT count(*) FROM publications")[1] == [(0,)]


def test_diff_reports_added_removed_and_shifts(tmp_path):
    store = Store(tmp_path)
    store.write_version("demo", [pair_table([pair_row(i) for i in range(10)])])
    changed = [pair_row(i) for i in range(4, 14)]
    changed[0] = {**changed[0], "chosen_score": changed[0]["chosen_score"] + 1.0, "margin": changed[0]["margin"] + 1.0}
    store.write_version("demo", [pair_table(changed)])
    result = json.loads(
        run_cli("diff", "demo@v1", "demo@v2", "--store", str(tmp_path), "--format", "json", check=True).stdout
    )
    assert result["added"] == {"on_policy": 2, "revision": 2} and result["removed"] == {"on_policy": 2, "revision": 2}
    assert result["shared_pairs"] == 6
    assert abs(result["mean_margin_shift_shared"] - 1.0 / 6) < 1e-9
    assert result["prompts_only_left"] == 2 and result["prompts_only_right"] == 2


HUB_ENV = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_secret_test_token", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def hub_env(hub: LocalHub, tmp_path: Path) -> dict:
    """Point huggingface_hub at the stand-in, with its own HF_HOME (no login cache of the person running tests)."""
    return {**HUB_ENV, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def three_type_rows(count: int, start: int = 0) -> list[dict]:
    return [pair_row(i, pair_type=("on_policy", "revision", "reviser_train")[i % 3]) for i in range(start, count)]


def test_publish_and_pull_through_a_local_hub(tmp_path):
    store = Store(tmp_path / "store")
    v1 = store.write_version(
        "demo", [pair_table(three_type_rows(30))], models={"policy": {"spec": "tiny", "identity": "tiny@sha256:abc"}}
    )
    with LocalHub(token=HUB_ENV["HF_TOKEN"]) as hub:
        env = hub_env(hub, tmp_path)
        first = run_cli("publish", "demo@v1", "--repo-id", "me/demo", "--store", str(store.root), env=env, check=True)
        head = hub.head("me/demo")
        assert f"@ {head.oid} (published)" in first.stdout
        assert store.query("SELECT ref, repo_id, hub_commit FROM publications")[1] == [("demo@v1", "me/demo", head.oid)]
        assert {
            "README.md",
            "margins.png",
            "realign_version.json",
            "data/default/train-00000-of-00001.parquet",
            "data/reviser_train/train-00000-of-00001.parquet",
        } <= set(head.files)
        assert set(hub.authorizations) == {f"Bearer {HUB_ENV['HF_TOKEN']}"}
        assert files_containing(tmp_path, HUB_ENV["HF_TOKEN"].encode()) == []
        assert not any(HUB_ENV["HF_TOKEN"].encode() in content for content in head.files.values())

        public = run_cli("publish", "demo@v1", "--repo-id", "me/demo", "--private", "--store", str(store.root), env=env)
        assert public.returncode == 2 and "me/demo already exists and is public" in public.stderr
        again = run_cli("publish", "demo@v1", "--repo-id", "me/demo", "--store", str(store.root), env=env, check=True)
        assert "(unchanged)" in again.stdout and len(hub.repos["me/demo"]) == 2
        assert store.query("SELECT count(*) FROM publications")[1] == [(1,)]

        pulled = run_cli("pull", "me/demo", "--name", "shared", "--store", str(store.root), env=env, check=True)
        assert f"me/demo@{head.oid} -> shared@v1 (30 pairs" in pulled.stdout
        assert sorted(hub.downloads) == [
            "README.md",
            "data/default/train-00000-of-00001.parquet",
            "realign_version.json",
        ]
        shared = store.resolve("shared@v1")
        assert sorted(rows_of(shared), key=lambda r: r["pair_id"]) == sorted(rows_of(v1), key=lambda r: r["pair_id"])
        assert shared.record["models"] == v1.record["models"]
        assert shared.record["inputs"]["hub"] | {"endpoint": None} == {
            "repo_id": "me/demo",
            "revision": "main",
            "commit": head.oid,
            "config": "default",
            "split": "train",
            "endpoint": None,
            "source_version": "demo@v1",
        }

        # a later version without reviser_train pairs replaces the data folder; the old commit stays pullable
        later = [r for r in three_type_rows(40, 10) if r["pair_type"] != "reviser_train"]
        store.write_version("demo", [pair_table(later)])
        run_cli("publish", "demo@v2", "--repo-id", "me/demo", "--store", str(store.root), env=env, check=True)
        assert not any(path.startswith("data/reviser_train/") for path in hub.head("me/demo").files)
        old = run_cli(
            "pull", f"me/demo@{head.oid}", "--config", "revision", "--store", str(store.root), env=env, check=True
        )
        assert "-> demo@v3 (10 pairs: {'revision': 10})" in old.stdout
        assert {r["pair_id"] for r in rows_of(store.resolve("demo@v3"))} == {
            r["pair_id"] for r in three_type_rows(30) if r["pair_type"] == "revision"
        }


def test_failed_upload_leaves_the_catalog_unchanged(tmp_path):
    store = Store(tmp_path / "store")
    store.write_version("demo", [pair_table(three_type_rows(12))])
    catalog = store.catalog_path.read_bytes()
    with LocalHub(reject_commits=True) as hub:
        result = run_cli(
            "publish", "demo@v1", "--repo-id", "me/demo", "--store", str(store.root), env=hub_env(hub, tmp_path)
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("error: me/demo: the Hub answered 403")
        assert "write access" in result.stderr
        assert [c.message for c in hub.repos["me/demo"]] == ["initial commit"]
    assert store.catalog_path.read_bytes() == catalog
    assert not (store.root / "publications.jsonl").exists()
    assert store.query("SELECT count(*) FROM publications")[1] == [(0,)]


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pair_table(rows), sink)
    return sink.getvalue()


def test_pull_refuses_what_breaks_the_contract(tmp_path):
    store = Store(tmp_path / "store")
    broken = [pair_row(i) for i in range(6)]
    broken[4] = {**broken[4], "margin": 99.0}
    unnamed = pa.Table.from_pylist([{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    sink = io.BytesIO()
    pq.write_table(unnamed, sink)
    with LocalHub() as hub:
        env = hub_env(hub, tmp_path)
        hub.seed("them/broken", {"data/train-00000-of-00001.parquet": parquet_bytes(broken)})
        hub.seed("them/plain", {"data/train-00000-of-00001.parquet": sink.getvalue()})
        cases = {
            "them/broken": "them/broken@main (config default, split train): row 4: field 'margin' is not "
            "chosen_score - rejected_score",
            "them/plain": "them/plain@main (config default, split train): missing column(s) pair_id",
            "them/absent": "them/absent: the Hub answered 404",
        }
        for spec, message in cases.items():
            result = run_cli("pull", spec, "--store", str(store.root), env=env)
            assert result.returncode == 2 and message in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        good = hub.seed("them/good", {"data/train-00000-of-00001.parquet": parquet_bytes(broken[:4])})
        unknown = run_cli("pull", "them/good", "--config", "nope", "--store", str(store.root), env=env)
        assert unknown.returncode == 2 and "config 'nope'" in unknown.stderr
        ok = run_cli("pull", "them/good", "--store", str(store.root), env=env, check=True)
        assert f"them/good@{good.oid} -> good@v1 (4 pairs" in ok.stdout
    gone = run_cli("pull", "them/good", "--store", str(store.root), env=env)  # the server is shut down now
    assert gone.returncode == 1 and gone.stderr.startswith(f"error: them/good: cannot reach the Hub at {hub.url}")
    assert [v.ref for v in store.versions()] == ["good@v1"]
