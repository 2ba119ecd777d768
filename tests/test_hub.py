"""The Hub layout (publish --dry-run) and diff between versions."""

import json

import datasets
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard

from realign_data.store import Store
from tests.helpers import pair_row, pair_table, run_cli


def rows_of(version):
    return [row for f in version.files for row in pq.read_table(f).to_pylist()]


def test_dry_run_folder_loads_every_config_and_round_trips(tmp_path):
    store = Store(tmp_path / "store")
    rows = [pair_row(i, pair_type=("on_policy", "revision", "reviser_train")[i % 3]) for i in range(30)]
    version = store.write_version("demo", [pair_table(rows)], models={"policy": {"spec": "tiny", "identity":
                                                                                "tiny@sha256:abc"}})
    out = tmp_path / "hub"
    result = run_cli("publish", "demo@v1", "--repo-id", "me/demo", "--dry-run", str(out), "--store", str(store.root),
                     "--license", "apache-2.0", check=True)
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
    assert "tiny@sha256:abc" in card.text and "demo@v1" in card.text and "load_dataset(\"me/demo\"" in card.text
    assert (out / "margins.png").read_bytes()[:4] == b"\x89PNG"
    again = run_cli("publish", "demo@v1", "--repo-id", "me/demo", "--dry-run", str(out), "--store", str(store.root))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert store.query("SELECT count(*) FROM publications")[1] == [(0,)]


def test_diff_reports_added_removed_and_shifts(tmp_path):
    store = Store(tmp_path)
    store.write_version("demo", [pair_table([pair_row(i) for i in range(10)])])
    changed = [pair_row(i) for i in range(4, 14)]
    changed[0] = {**changed[0], "chosen_score": changed[0]["chosen_score"] + 1.0, "margin": changed[0]["margin"] + 1.0}
    store.write_version("demo", [pair_table(changed)])
    result = json.loads(run_cli("diff", "demo@v1", "demo@v2", "--store", str(tmp_path), "--format", "json",
                                check=True).stdout)
    assert result["added"] == {"on_policy": 2, "revision": 2} and result["removed"] == {"on_policy": 2, "revision": 2}
    assert result["shared_pairs"] == 6
    assert abs(result["mean_margin_shift_shared"] - 1.0 / 6) < 1e-9
    assert result["prompts_only_left"] == 2 and result["prompts_only_right"] == 2
