"""Every sample kept: a build commits its responses as NAME-samples, and pairs rebuilt from them under other rules
are row for row what a fresh build with those rules makes. Tiny random models (they never stop on their own, so
every response hits the token limit: the truncation rule is seen end to end)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realign_data.build import Build, pairs_from_samples
from realign_data.errors import InputError
from realign_data.files import sha256_file, write_json
from realign_data.store import PAIRS, Store
from tests.helpers import assert_one_line_error, pair_row, run_cli, tree_digest
from tests.test_build import pair_rows, tiny_config


@pytest.fixture
def built(tmp_path, tiny_model_dir):
    """A store with tiny@v1 (truncated responses allowed, as tiny_config does) and its samples, tiny-samples@v1."""
    store = Store(tmp_path)
    build = Build(tiny_config(tiny_model_dir), store)
    build.commit(build.run())
    return store


def fresh_rows(store, tiny_model_dir, **rules):
    """The pairs a fresh build with ``rules`` makes (from the run's cache: same samples, same scores)."""
    return Build(tiny_config(tiny_model_dir, **rules), store).run().rows


def test_a_build_commits_every_response_as_a_samples_version(built):
    samples = built.resolve("tiny-samples")
    assert samples.ref == "tiny-samples@v1" and samples.kind.name == "samples"
    assert samples.record["rows_by_kind"] == {"revision": 6, "sample": 18}  # 6 prompts x 3 samples, 1 draft each
    rows = [row for f in samples.files for row in pq.read_table(f).to_pylist()]
    assert {r["finish_reason"] for r in rows} == {"length"}  # 8 tokens from a random model: always cut
    assert all(r["completion_tokens"] == 8 and r["score"] is not None for r in rows)
    assert {r["index"] for r in rows if r["kind"] == "revision"} == {0}
    pairs = built.resolve("tiny@v1")
    assert pairs.record["inputs"]["samples"] == "tiny-samples@v1"
    assert {(r["chosen_finish_reason"], r["rejected_finish_reason"]) for r in pair_rows(pairs)} == {("length",) * 2}
    assert built.verify("tiny-samples@v1") == []


def median_margin(store):
    """A margin rule that keeps some of tiny@v1's pairs and drops others (a tiny judge's margins are small)."""
    margins = sorted(row["margin"] for row in pair_rows(store.resolve("tiny@v1")))
    return margins[len(margins) // 2]


def test_pairs_rebuilt_from_samples_equal_a_fresh_build_row_for_row(built, tiny_model_dir):
    same = pairs_from_samples(built, "tiny-samples@v1", [])
    assert same.version.ref == "tiny@v2" and pair_rows(same.version) == pair_rows(built.resolve("tiny@v1"))
    margin = median_margin(built)
    for rules in (
        {"pairs.min_margin": margin},
        {"pairs.mix": {"on_policy": 1.0, "revision": 0.25}},
        {"pairs.types": ["on_policy", "revision"], "pairs.max_length_ratio": 1.0},
    ):
        sets = [f"{k}={json.dumps(v)}" for k, v in rules.items()]
        rebuilt = pairs_from_samples(built, "tiny-samples@v1", sets)
        expected = fresh_rows(built, tiny_model_dir, **rules)
        assert pair_rows(rebuilt.version) == expected and expected, rules
        assert len(expected) < len(pair_rows(same.version)), rules  # the rule changed something
        assert rebuilt.version.record["config"]["pairs"]["min_margin"] == rules.get("pairs.min_margin", 0.0)


def test_the_pairs_command_rebuilds_from_samples_and_refuses_other_settings(built, tiny_model_dir):
    store, margin = str(built.root), median_margin(built)
    rule = f"pairs.min_margin={margin!r}"
    result = run_cli("pairs", "--from-samples", "tiny-samples@v1", "--set", rule, "--store", store)
    assert result.returncode == 0, result.stderr
    assert "tiny-samples@v1" in result.stdout and "tiny@v2" in result.stdout
    assert pair_rows(built.resolve("tiny@v2")) == fresh_rows(built, tiny_model_dir, **{"pairs.min_margin": margin})
    before = tree_digest(built.root / "datasets")
    for args, needle in (
        (["--set", "generation.temperature=0.5"], "pairs.*"),
        (["--limit", "3"], "--limit"),
    ):
        refused = run_cli("pairs", "--from-samples", "tiny-samples@v1", *args, "--store", store)
        assert_one_line_error(refused, 2, needle)
    assert_one_line_error(
        run_cli("pairs", "--from-samples", "tiny@v1", "--store", store), 2, "tiny@v1 holds pairs, not samples"
    )
    assert tree_digest(built.root / "datasets") == before


def test_without_allow_truncated_no_cut_pair_is_written_but_the_samples_are_kept(tmp_path, tiny_model_dir):
    store = Store(tmp_path)
    build = Build(tiny_config(tiny_model_dir, **{"pairs.allow_truncated": False}), store)
    with pytest.raises(InputError, match="on_policy:truncated=6.*kept as tiny-samples@v1"):
        build.commit(build.run())
    assert [v.ref for v in store.versions()] == ["tiny-samples@v1"]
    rebuilt = pairs_from_samples(store, "tiny-samples@v1", ["pairs.allow_truncated=true"])
    assert pair_rows(rebuilt.version) == fresh_rows(store, tiny_model_dir)


def test_samples_view_show_and_kind_checks(built):
    columns, rows = built.query("SELECT kind, count(*) FROM samples GROUP BY 1 ORDER BY 1")
    assert rows == [("revision", 6), ("sample", 18)]
    _, [(pairs_rows,)] = built.query("SELECT count(*) FROM pairs")
    assert pairs_rows == built.resolve("tiny@v1").record["num_rows"]  # samples are not pairs
    shown = run_cli("show", "tiny-samples@v1", "--store", str(built.root), "--format", "json", check=True)
    summary = json.loads(shown.stdout)
    assert [(k["kind"], k["rows"], k["truncated"]) for k in summary["by_kind"]] == [
        ("revision", 6, 6),
        ("sample", 18, 18),
    ]
    with pytest.raises(InputError, match="holds samples, not pairs"):
        built.resolve("tiny-samples@v1", PAIRS)
    trained = run_cli(
        "policy",
        "--dataset",
        "tiny-samples@v1",
        "--store",
        str(built.root),
        "--output-dir",
        str(built.root / "model"),
        prog="realign-train",
    )
    assert_one_line_error(trained, 2, "holds samples, not pairs")


def test_versions_written_before_the_new_columns_still_read(tmp_path):
    """A pairs version from before finish reasons and token counts: query, show and the catalog read it, with the
    new columns as nulls, beside a version that has them."""
    store = Store(tmp_path)
    store.write_version("new", [pa.Table.from_pylist([pair_row(0), pair_row(1)])])
    old_columns = [c for c in pair_row(0) if not c.endswith(("_finish_reason", "_tokens"))]
    folder = tmp_path / "datasets" / "old" / "v1"
    (folder / "data").mkdir(parents=True)
    shard = folder / "data" / "shard-00000.parquet"
    pq.write_table(pa.Table.from_pylist([{c: pair_row(2)[c] for c in old_columns}]), shard)
    record = dict(store.resolve("new@v1").record, dataset="old", num_rows=1, rows_by_pair_type={"on_policy": 1})
    record["files"] = [{"path": "data/shard-00000.parquet", "rows": 1, "bytes": shard.stat().st_size}]
    record["files"][0]["sha256"] = sha256_file(shard)
    write_json(folder / "version.json", record)
    store.rebuild_catalog()
    _, rows = store.query("SELECT dataset, chosen_tokens FROM pairs ORDER BY dataset, pair_id")
    assert rows == [("new", 6), ("new", 7), ("old", None)]
    summary = store.summary("old@v1")
    assert summary["length_bias"] == {"on_policy": {"pairs": 0, "unknown": 1}}
    shown = run_cli("show", "old@v1", "--store", str(tmp_path), check=True)
    assert "no token counts (1 pairs)" in shown.stdout


def test_a_samples_version_gives_back_exactly_the_responses_it_was_made_of(tmp_path):
    """Failed samples leave gaps in the indices (a revision is keyed by its draft's position), unscored and cut
    responses and references all come back as they went in."""
    from realign_data.pairs import PairOrigin, PromptResults, Response
    from realign_data.samples import read_samples, samples_inputs, samples_table
    from realign_data.store import SAMPLES
    from realign_data.templates import load_template

    user = [{"role": "user", "content": "question p"}]
    results = [
        PromptResults(
            "p",
            user,
            [Response("a", 3.0, "sample:0", "stop", 4), Response("c", None, "sample:2", "length", 9)],  # 1 failed
            {1: Response("c, revised", 5.0, "revision:2", "stop", 6)},  # the draft at position 1 is sample 2
            Response("the reference", 7.0, "reference", None, 3),
        ),
        PromptResults("q", [{"role": "user", "content": "q?"}], [Response("x", 1.0, "sample:0", "stop", 2)]),
    ]
    origin = PairOrigin("policy@sha256:p", "policy@sha256:p", "judge:x", {"n": 2}, {"n": 1})
    template = load_template("revision", ("instruction", "draft"))
    store = Store(tmp_path)
    store.write_version(
        "t-samples", [samples_table(results, origin)], inputs=samples_inputs(origin, template), kind=SAMPLES
    )
    version, back, origin_back, template_back = read_samples(store, "t-samples@v1")
    assert back == results and origin_back == origin and template_back == template
    assert version.record["rows_by_kind"] == {"reference": 1, "revision": 1, "sample": 3}


def test_revision_pairs_from_samples_without_revisions_are_refused_in_one_line(tmp_path, tiny_model_dir):
    store = Store(tmp_path)
    build = Build(tiny_config(tiny_model_dir, **{"pairs.types": ["on_policy"]}), store)
    build.commit(build.run())
    with pytest.raises(InputError, match="tiny-samples@v1 holds no revisions.*revision pairs need them"):
        pairs_from_samples(store, "tiny-samples@v1", ["pairs.types=[on_policy, revision]"])


def test_a_name_held_by_another_kind_is_refused_before_any_compute(tmp_path, tiny_model_dir):
    store = Store(tmp_path)
    store.write_version("tiny-samples", [pa.Table.from_pylist([pair_row(0)])])  # pairs, under the samples name
    with pytest.raises(InputError, match="dataset 'tiny-samples' holds pairs, not samples"):
        Build(tiny_config(tiny_model_dir), store).run()
    assert not (tmp_path / "runs").exists()


def test_a_decontaminated_version_no_longer_points_at_the_samples_it_would_undo(built, tmp_path):
    from realign_data.config import Decontaminate
    from realign_data.decontaminate import decontaminate_version

    rows = pair_rows(built.resolve("tiny@v1"))
    leaked = next(r for r in rows if r["pair_type"] == "on_policy")
    (tmp_path / "bench.txt").write_text(leaked["prompt"][0]["content"] + "\n")
    _, clean, report = decontaminate_version(built, "tiny@v1", Decontaminate(against=[str(tmp_path / "bench.txt")]))
    assert report["removed"] == 1
    assert leaked["prompt_id"] not in {r["prompt_id"] for r in pair_rows(clean)}
    assert "samples" not in clean.record["inputs"]
    assert clean.record["inputs"]["samples_before_decontamination"] == "tiny-samples@v1"
