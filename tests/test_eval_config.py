"""realign-eval from YAML manifests: a manifest run equals the same run by flags, the precedence defaults <
manifest < --set < flags, bad manifests are one line (exit 2) that writes nothing, report.json stores the effective
config, and the shipped example manifests validate. The real CLI in a subprocess, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evaluation.config import FLAGS, AlpacaEvalConfig, ArenaEvalConfig
from realign_data.config import load_config
from realign_data.errors import InputError
from tests.helpers import REPO, assert_one_line_error, run_cli, strict_json, tree_digest
from tests.openai_server import Reply, ScriptedOpenAIServer
from tests.test_eval_bad_input import annotation_rows, env_for, eval_set, judgment, judgments, outputs, write_json
from tests.test_scoring_alpaca import N, synthetic_gamed
from tests.test_scoring_alpaca import annotation_rows as lc_annotation_rows

SHARED = REPO.parent / "shared" / "data"
ALPACA = SHARED / "alpaca_eval"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (reference data) is not present")


def manifest(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return path


def run_eval(tmp_path: Path, *args) -> dict:
    """A run that must succeed; returns its report.json (the folder named by -o, else the manifest's output)."""
    args = [str(arg) for arg in args]
    result = run_cli(*args, prog="realign-eval", env=env_for(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if "-o" in args:
        folder = Path(args[args.index("-o") + 1])
    else:
        folder = Path(yaml.safe_load(Path(args[args.index("-m") + 1]).read_text())["output"])
    return strict_json(folder / "report.json")


def without_run(report: dict) -> dict:
    """What two runs of the same evaluation share: everything but the time, the code and the folder."""
    return {key: value for key, value in report.items() if key not in ("created_at", "code", "config")}


# ------------------------------------------------------------------------------------ a manifest equals its flags


def test_alpaca_rescoring_by_manifest_equals_the_flags_and_stores_the_config(tmp_path):
    lc_file = tmp_path / "df_gamed.csv"
    rows = lc_annotation_rows(synthetic_gamed(lc_file), {3, 17})
    ann = write_json(tmp_path / "annotations.json", rows)
    by_flags = run_eval(
        tmp_path, "alpaca", "--annotations", ann, "--lc-data", lc_file, "--name", "ours", "-o", tmp_path / "flags"
    )
    path = manifest(
        tmp_path / "eval.yaml",
        {
            "output": tmp_path / "manifest",
            "answers": {"name": "ours"},
            "benchmark": {"annotations": ann, "lc_data": lc_file},
        },
    )
    by_manifest = run_eval(tmp_path, "alpaca", "-m", path)
    assert by_manifest["metrics"]["length_controlled_winrate"] is not None
    assert by_manifest["metrics"]["n_total"] == N - 2
    assert without_run(by_manifest) == without_run(by_flags)
    config = by_manifest["config"]
    assert config["output"] == str(tmp_path / "manifest") and config["answers"]["name"] == "ours"
    assert config["benchmark"]["annotations"] == str(ann) and config["benchmark"]["lc_data"] == str(lc_file)
    assert config["benchmark"]["annotator"] == "weighted_alpaca_eval_gpt4_turbo"  # defaults are stored too
    assert {**by_flags["config"], "output": None} == {**config, "output": None}
    # the stored config replays the run: as a manifest it gives the same report
    replay = manifest(tmp_path / "replay.yaml", {**config, "output": str(tmp_path / "replay")})
    assert without_run(run_eval(tmp_path, "alpaca", "-m", replay)) == without_run(by_flags)


@needs_shared
def test_published_annotations_by_manifest_equal_the_flags(tmp_path):
    results = ALPACA / "results" / "gemma-2b-it"
    ann = results / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
    model_outputs = results / "model_outputs.json"
    by_flags = run_eval(tmp_path, "alpaca", "--annotations", ann, "--outputs", model_outputs, "-o", tmp_path / "f")
    path = manifest(tmp_path / "eval.yaml", {"answers": {"outputs": model_outputs}, "benchmark": {"annotations": ann}})
    by_manifest = run_eval(tmp_path, "alpaca", "-m", path, "-o", tmp_path / "m")
    assert by_manifest["metrics"] == by_flags["metrics"] and by_manifest["model"]["name"] == "gemma-2b-it"
    assert by_manifest["config"]["answers"]["outputs"] == str(model_outputs)


def test_arena_rescoring_by_manifest_equals_the_flags(tmp_path):
    folder = judgments(tmp_path, [judgment(f"q{i}", *(("B>A", "A>B") if i % 3 else ("A>>B", "A=B"))) for i in range(9)])
    by_flags = run_eval(
        tmp_path, "arena", "--judgments", folder, "--baseline", "base", "--rounds", "7", "-o", tmp_path / "flags"
    )
    path = manifest(tmp_path / "arena.yaml", {"benchmark": {"judgments": folder, "baseline": "base", "rounds": 7}})
    by_manifest = run_eval(tmp_path, "arena", "-m", path, "-o", tmp_path / "manifest")
    assert {row["model"] for row in by_manifest["leaderboard"]} == {"base", "m"}
    assert without_run(by_manifest) == without_run(by_flags)
    benchmark = by_manifest["config"]["benchmark"]
    assert (benchmark["judgments"], benchmark["baseline"], benchmark["rounds"]) == (str(folder), "base", 7)
    assert by_manifest["settings"]["bootstrap_rounds"] == 7


def test_alpaca_judging_by_manifest_equals_the_flags_without_credentials(tmp_path):
    eval_path, outputs_path = eval_set(tmp_path), outputs(tmp_path)

    def script(request, seen):  # prefers the model's output (named by the judge's identifier) for Task 1 only
        text = request["messages"][-1]["content"]
        return Reply(content="m" if "Task 1" in text else "M")

    with ScriptedOpenAIServer(script) as server:
        url = server.url.replace("http://", "http://user:s3cret-pass@")
        path = manifest(
            tmp_path / "judge.yaml",
            {
                "answers": {"outputs": outputs_path},
                "judge": {"engine": {"base_urls": [url], "concurrency": 2}, "prices": [1, 2]},
                "benchmark": {"eval_set": eval_path, "judge_mode": "discrete"},
            },
        )
        by_manifest = run_eval(tmp_path, "alpaca", "-m", path, "-o", tmp_path / "manifest")
        by_flags = run_eval(
            tmp_path,
            "alpaca",
            "--eval-set",
            eval_path,
            "--outputs",
            outputs_path,
            "--judge-base-url",
            url,
            "--judge-prices",
            "1,2",
            "--judge-mode",
            "discrete",
            "-o",
            tmp_path / "flags",
        )
    assert by_manifest["metrics"] == by_flags["metrics"] and by_manifest["metrics"]["n_total"] == 3
    assert by_manifest["judge"]["prices_usd_per_million_tokens"] == [1.0, 2.0]
    assert by_manifest["judge_usage"]["cost_usd"] is not None
    judge = by_manifest["config"]["judge"]
    assert judge["engine"] == {**judge["engine"], "kind": "openai", "base_urls": [server.url], "concurrency": 2}
    assert judge["prices"] == [1.0, 2.0] and by_flags["config"]["judge"]["prices"] == [1.0, 2.0]
    for folder in ("manifest", "flags"):
        assert "s3cret-pass" not in (tmp_path / folder / "report.json").read_text()


# ------------------------------------------------------------------------------------------------------ precedence


def test_set_overrides_the_manifest_and_a_flag_overrides_set(tmp_path):
    ann = write_json(tmp_path / "ann.json", annotation_rows((2, 2, 1)))
    path = manifest(
        tmp_path / "eval.yaml",
        {"output": tmp_path / "from-manifest", "answers": {"name": "manifest"}, "benchmark": {"annotations": ann}},
    )
    assert run_eval(tmp_path, "alpaca", "-m", path)["model"]["name"] == "manifest"
    report = run_eval(tmp_path, "alpaca", "-m", path, "--set", "answers.name=set", "-o", tmp_path / "set")
    assert report["model"]["name"] == "set" and report["config"]["answers"]["name"] == "set"
    assert report["config"]["output"] == str(tmp_path / "set")  # -o beats the manifest's output
    report = run_eval(
        tmp_path, "alpaca", "-m", path, "--set", "answers.name=set", "--name", "flag", "-o", tmp_path / "flag"
    )
    assert report["model"]["name"] == "flag" and report["config"]["answers"]["name"] == "flag"
    assert not (tmp_path / "set" / "annotations.json").exists()


def test_arena_rounds_from_manifest_set_and_flag(tmp_path):
    folder = judgments(tmp_path)
    path = manifest(tmp_path / "arena.yaml", {"benchmark": {"judgments": folder, "rounds": 3}})
    rounds = [
        run_eval(tmp_path, "arena", "-m", path, *extra, "-o", tmp_path / f"r{index}")["settings"]["bootstrap_rounds"]
        for index, extra in enumerate(
            [(), ("--set", "benchmark.rounds=4"), ("--set", "benchmark.rounds=4", "--rounds", "5")]
        )
    ]
    assert rounds == [3, 4, 5]


# ------------------------------------------------------------------------------------------------ bad manifests

BAD = {
    "unknown-key": (
        {"benchmark": {"annotations": "ANN", "bogus": 1}},
        (),
        ["eval.yaml", "benchmark.bogus", "unknown key"],
    ),
    "unknown-section": ({"benchmark": {"annotations": "ANN"}, "judges": {}}, (), ["eval.yaml", "judges"]),
    "arena-key-in-alpaca": ({"benchmark": {"annotations": "ANN", "rounds": 3}}, (), ["eval.yaml", "benchmark.rounds"]),
    "limit-zero-names-the-flag": (
        {"benchmark": {"annotations": "ANN", "limit": 0}},
        (),
        ["eval.yaml", "benchmark.limit", "--limit"],
    ),
    "judge-engine-unknown": (
        {"benchmark": {"annotations": "ANN"}, "judge": {"engine": {"kind": "gpt"}}},
        (),
        ["eval.yaml", "judge.engine.kind", "--judge-engine", "gpt"],
    ),
    "negative-price": (
        {"benchmark": {"annotations": "ANN"}, "judge": {"prices": [1, -2]}},
        (),
        ["eval.yaml", "judge.prices", "--judge-prices"],
    ),
    "secret-in-manifest": (
        {"benchmark": {"annotations": "ANN"}, "judge": {"engine": {"api_key": "x"}}},
        (),
        ["eval.yaml", "secrets are not allowed"],
    ),
    "unused-from-manifest": (
        {"benchmark": {"annotations": "ANN", "eval_set": "eval.json"}},
        (),
        ["--eval-set", "benchmark.eval_set", "not used", "--annotations"],
    ),
    "unused-from-set": (
        {"benchmark": {"annotations": "ANN"}},
        ("--set", "judge.model=gpt-4.1"),
        ["--judge-model", "judge.model", "not used"],
    ),
    "bad-set-key": ({"benchmark": {"annotations": "ANN"}}, ("--set", "answers.nmae=x"), ["answers.nmae"]),
    "model-beside-outputs": (
        {"answers": {"outputs": "ANN", "model": {"spec": "smollm2-135m-instruct"}}},
        (),
        ["--model (answers.model)", "not used when --outputs give the answers"],
    ),
    "no-output": ({"benchmark": {"annotations": "ANN"}}, ("--no-o",), ["-o", "output"]),
    "manifest-missing": (None, (), ["nope.yaml", "not found"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_manifest_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    data, extra, needles = BAD[case]
    ann = write_json(tmp_path / "ann.json", annotation_rows())
    path = tmp_path / "nope.yaml"
    if data is not None:
        path = manifest(tmp_path / "eval.yaml", json.loads(json.dumps(data).replace('"ANN"', json.dumps(str(ann)))))
    args = ["alpaca", "-m", str(path), *[arg for arg in extra if arg != "--no-o"]]
    if "--no-o" not in extra:
        args += ["-o", str(tmp_path / "report")]
    before = tree_digest(tmp_path)
    result = run_cli(*args, prog="realign-eval", env=env_for(tmp_path), timeout=120)
    assert_one_line_error(result, 2, *needles)
    assert tree_digest(tmp_path) == before, "a rejected run wrote or changed files"
    assert not (tmp_path / "report").exists() and not (tmp_path / "home").exists()


def test_an_arena_manifest_with_unused_keys_is_refused(tmp_path):
    path = manifest(
        tmp_path / "arena.yaml",
        {
            "benchmark": {"judgments": judgments(tmp_path), "limit": 2},
            "answers": {"model": {"spec": "smollm2-135m-instruct"}},
        },
    )
    before = tree_digest(tmp_path)
    result = run_cli("arena", "-m", str(path), "-o", str(tmp_path / "r"), prog="realign-eval", env=env_for(tmp_path))
    assert_one_line_error(result, 2, "--model (answers.model)", "--limit (benchmark.limit)", "--judgments")
    assert tree_digest(tmp_path) == before


def test_arena_refuses_a_model_beside_its_outputs():
    config = load_config(ArenaEvalConfig, None, ["answers.outputs=ours.jsonl", "answers.model.spec=smollm2"])
    with pytest.raises(InputError, match=r"--model \(answers.model\): not used when --outputs give the answers"):
        config.refuse_unused()


# -------------------------------------------------------------------------------------------- shipped manifests


def test_the_example_manifests_validate():
    offline = load_config(AlpacaEvalConfig, REPO / "manifests" / "eval-alpaca-offline.yaml")
    assert offline.answers.model.spec == "smollm2-135m-instruct" and offline.judge.engine.kind == "hf"
    assert offline.judge.model == "smollm2-135m-instruct" and offline.benchmark.limit == 8
    assert offline.benchmark.eval_set is None  # given on the command line (or read from the Hub)
    v2 = load_config(ArenaEvalConfig, REPO / "manifests" / "eval-arena-v2.yaml")
    assert v2.judge.engine.kind == "openai" and v2.judge.model is None and v2.judge.prices is None
    assert v2.benchmark.style_control and len(v2.benchmark.baseline_answers) == 2
    assert v2.benchmark.judge_config.name == "arena-hard-v2.0.yaml"


def test_every_flag_is_a_config_key():
    for flag, key in FLAGS.items():
        owners = [model for model in (AlpacaEvalConfig, ArenaEvalConfig) if _has_key(model, key)]
        assert owners, (flag, key)


def _has_key(model, key: str) -> bool:
    for part in key.split("."):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        model = next(
            (
                arg
                for arg in (*getattr(field.annotation, "__args__", ()), field.annotation)
                if hasattr(arg, "model_fields")
            ),
            None,
        )
    return True


def test_help_teaches_manifests():
    for command, example in (("alpaca", "eval-alpaca-offline.yaml"), ("arena", "eval-arena-v2.yaml")):
        result = run_cli(command, "--help", prog="realign-eval")
        assert result.returncode == 0 and "--manifest" in result.stdout and "--set" in result.stdout
        assert example in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")
