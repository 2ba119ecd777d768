"""AlpacaEval scoring as alpaca_eval does it: the length-controlled win rate on the full, aligned frame (rows
without a preference kept, difficulties looked up by each row's place in the set), position bias, the judge's
label in reports and compare, offline behaviour without retries, and strict JSON in report folders. Expected
values come from alpaca_eval's own functions, called here directly, or from hand computation."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import REPO, run_cli, strict_json, strict_json_files
from tests.openai_server import Reply, ScriptedOpenAIServer

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ALPACA = SHARED / "alpaca_eval"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (reference data) is not present")
N = 40


def env(tmp_path: Path) -> dict[str, str]:
    return {
        "REALIGN_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "OPENAI_API_KEY": "test-key",
    }


def eval_cli(tmp_path: Path, *args) -> dict:
    result = run_cli(*map(str, args), prog="realign-eval", env=env(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return strict_json(Path(args[args.index("-o") + 1]) / "report.json")


def alpaca_eval_metrics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import alpaca_eval.metrics
        import alpaca_eval.metrics.glm_winrate
    return alpaca_eval.metrics


def official_lc(monkeypatch, annotations, lc_file: Path) -> float:
    """alpaca_eval's get_length_controlled_winrate on ``annotations`` as given, df_gamed.csv read from lc_file."""
    metrics = alpaca_eval_metrics()
    monkeypatch.setattr(metrics.glm_winrate, "hf_hub_download", lambda *args, **kwargs: str(lc_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notices about alpaca_eval's arguments
        result = metrics.get_length_controlled_winrate(
            annotations, save_weights_dir=None, is_warn_extreme_changes=False
        )
    return float(result["length_controlled_winrate"])


def synthetic_gamed(path: Path, count: int = N) -> np.ndarray:
    """A small df_gamed.csv in the layout alpaca_eval reads: two gamed baselines' annotations per instruction, each
    instruction's difficulty; first block in set order, so row labels equal the 'index' values. Returns the
    difficulties."""
    rng = np.random.RandomState(0)
    difficulty = rng.normal(0, 1.5, count)
    rows = []
    for model, shift in (("gpt4_gamed_verbose", 0.8), ("gpt4_gamed_concise", -0.8)):
        for index in range(count):
            rows.append(
                {
                    "index": index,
                    "instruction_difficulty": difficulty[index],
                    "model": model,
                    "not_gamed_baseline": False,
                    "std_delta_len": shift + rng.normal(0, 0.3),
                    "preference": float(1 / (1 + math.exp(-(shift - difficulty[index])))),
                }
            )
    pd.DataFrame(rows).to_csv(path, index=False)
    return difficulty


def annotation_rows(difficulty: np.ndarray, missing: set[int]) -> list[dict]:
    """Annotations whose preference depends on each instruction's difficulty (so misaligned difficulties show)."""
    rng = np.random.RandomState(1)
    rows = []
    for index, level in enumerate(difficulty):
        reference, answer = "r" * int(rng.randint(200, 900)), "m" * int(rng.randint(100, 1500))
        preference = 1 + 1 / (1 + math.exp(level + 0.002 * (len(reference) - len(answer)) + rng.normal(0, 0.3)))
        rows.append(
            {
                "instruction": f"Task {index}",
                "output_1": reference,
                "generator_1": "gpt4_1106_preview",
                "output_2": answer,
                "generator_2": "ours",
                "annotator": "weighted_alpaca_eval_gpt4_turbo",
                "preference": None if index in missing else preference,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- length control


def test_lc_keeps_rows_without_a_preference_aligned_as_alpaca_eval_does(tmp_path, monkeypatch):
    lc_file = tmp_path / "df_gamed.csv"
    difficulty = synthetic_gamed(lc_file)
    missing = {3, 11, 12, 25}
    rows = annotation_rows(difficulty, missing)
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(rows))
    report = eval_cli(tmp_path, "alpaca", "--annotations", ann, "--lc-data", lc_file, "-o", tmp_path / "r")
    expected = official_lc(monkeypatch, rows, lc_file)  # the full frame, as alpaca_eval's evaluate passes it
    assert report["metrics"]["length_controlled_winrate"] == pytest.approx(expected, abs=1e-9)
    assert report["failures"] == len(missing) and report["metrics"]["n_total"] == N - len(missing)
    # the data tell misalignment apart: dropping the rows and renumbering (the old way) gives another number
    renumbered = [row for index, row in enumerate(rows) if index not in missing]
    assert abs(official_lc(monkeypatch, renumbered, lc_file) - expected) > 0.5
    assert report["deviations"] == []


def test_lc_with_outputs_for_part_of_the_set_uses_each_instructions_place(tmp_path, monkeypatch):
    lc_file = tmp_path / "df_gamed.csv"
    difficulty = synthetic_gamed(lc_file)
    eval_set = tmp_path / "eval.json"
    eval_set.write_text(
        json.dumps(
            [
                {"instruction": f"Task {i}", "output": "r" * (200 + 17 * i), "generator": "gpt4_1106_preview"}
                for i in range(N)
            ]
        )
    )
    answered = [i for i in range(N) if i % 3 != 1]  # outputs for part of the set
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            [{"instruction": f"Task {i}", "output": "m" * (150 + 31 * (i % 11)), "generator": "ours"} for i in answered]
        )
    )

    def script(request, seen):  # the model's output wins the easier instructions; Task 5 gets no verdict
        text = request["messages"][-1]["content"]
        task = int(re.search(r"Task (\d+)", text).group(1))
        if task == 5:
            return Reply(content="I cannot decide.")
        first = text.split('"output": """')[1].split('"""')[0]
        model_wins = difficulty[task] < 0.3
        return Reply(content="m" if first.startswith("m") == model_wins else "M")

    with ScriptedOpenAIServer(script) as server:
        report = eval_cli(
            tmp_path,
            "alpaca",
            "--eval-set",
            eval_set,
            "--outputs",
            outputs,
            "--judge-base-url",
            server.url,
            "--judge-mode",
            "discrete",
            "--lc-data",
            lc_file,
            "-o",
            tmp_path / "r",
        )
    records = strict_json(tmp_path / "r" / "annotations.json")
    assert len(records) == len(answered) and any(r["preference"] is None for r in records)
    places = [int(r["instruction"].split()[1]) for r in records]
    assert [r["index"] for r in records] == places  # each row records its place in the set
    placed = [{**r, "index": place} for r, place in zip(records, places, strict=True)]
    expected = official_lc(monkeypatch, placed, lc_file)
    assert report["metrics"]["length_controlled_winrate"] == pytest.approx(expected, abs=1e-9)
    assert any("part of the set" in text for text in report["deviations"])
    # rescoring the saved annotations later gives the same number: the places travel with the rows
    rescored = eval_cli(
        tmp_path,
        "alpaca",
        "--annotations",
        tmp_path / "r" / "annotations.json",
        "--lc-data",
        lc_file,
        "-o",
        tmp_path / "again",
    )
    assert rescored["metrics"]["length_controlled_winrate"] == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------------- position bias


def test_position_bias_from_alpaca_evals_order_flag_by_hand(tmp_path):
    # (preference, switched): not switched, the reference (output_1) is shown first
    cases = [(2, False), (1, True), (2, True), (1, False), (1.5, False), (2, False), (1.2, True), (None, True)]
    rows = [
        {"instruction": f"Task {i}", "output_1": "ref", "output_2": "ours", "preference": p, "is_switched_outputs": s}
        for i, (p, s) in enumerate(cases)
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(rows))
    report = eval_cli(tmp_path, "alpaca", "--annotations", ann, "-o", tmp_path / "r")
    bias = report["position_bias"]
    # shown first and preferred: (2, switched), (1, not switched) -> 2; second: (2, no), (1, yes), (2, no), (1.2, yes)
    assert (bias["n_verdicts"], bias["first"], bias["second"], bias["tie"]) == (7, 2 / 7, 4 / 7, 1 / 7)
    assert bias["degenerate"] is False
    text = (tmp_path / "r" / "report.md").read_text()
    assert "position bias: of 7 verdicts, 29% for the output shown first, 57% for the output shown second" in text


def test_a_judge_that_always_picks_the_second_output_is_flagged(tmp_path):
    rows = [
        {
            "instruction": f"Task {i}",
            "output_1": "ref",
            "output_2": "ours",
            "preference": 1 if i % 2 else 2,
            "is_switched_outputs": bool(i % 2),
        }
        for i in range(7)
    ]  # always the output shown second
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(rows))
    report = eval_cli(tmp_path, "alpaca", "--annotations", ann, "-o", tmp_path / "r")
    assert report["position_bias"]["second"] == 1.0 and report["position_bias"]["degenerate"] is True
    assert (
        "WARNING: the judge looks degenerate: 100% of its 7 verdicts go to the output shown second"
        in (tmp_path / "r" / "report.md").read_text()
    )


def test_every_preference_the_same_is_flagged_even_without_the_order(tmp_path):
    rows = [{"instruction": f"Task {i}", "output_1": "ref", "output_2": "ours", "preference": 2} for i in range(7)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(rows))
    report = eval_cli(tmp_path, "alpaca", "--annotations", ann, "-o", tmp_path / "r")
    assert report["position_bias"]["known"] is False and "is_switched_outputs" in report["position_bias"]["reason"]
    text = (tmp_path / "r" / "report.md").read_text()
    assert "position bias unknown" in text and "WARNING: all 7 verdicts prefer the model's output" in text


@needs_shared
def test_published_annotations_have_no_order_flag(tmp_path):
    results = ALPACA / "results" / "gemma-2b-it"
    report = eval_cli(
        tmp_path,
        "alpaca",
        "--annotations",
        results / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json",
        "--outputs",
        results / "model_outputs.json",
        "-o",
        tmp_path / "r",
    )
    assert report["position_bias"]["known"] is False
    assert report["judge_label"] == "weighted_alpaca_eval_gpt4_turbo"
    result = run_cli("compare", str(tmp_path / "r"), prog="realign-eval", env=env(tmp_path))
    assert result.returncode == 0 and "| weighted_alpaca_eval_gpt4_turbo |" in result.stdout


# ------------------------------------------------------------------------------------------------- judge labels


def test_compare_labels_a_discrete_judge(tmp_path):
    folder = tmp_path / "old-report"
    folder.mkdir()
    (folder / "report.json").write_text(
        json.dumps(
            {
                "benchmark": "AlpacaEval 2",
                "model": {"name": "ours"},
                "metrics": {"win_rate": 40.0, "standard_error": 5.0, "n_total": 10},
                "settings": {"annotator": "weighted_alpaca_eval_gpt4_turbo"},
                "judge": {"model": "judge", "mode": "discrete"},
            }
        )
    )
    result = run_cli("compare", str(folder), "-o", str(tmp_path / "board"), prog="realign-eval", env=env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"| {folder} | weighted_alpaca_eval_gpt4_turbo (discrete: no logprobs) |" in result.stdout
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert list(board["judge"]) == ["weighted_alpaca_eval_gpt4_turbo (discrete: no logprobs)"]


# ------------------------------------------------------------------------------------------------------ offline

OFFLINE_PROBE = """
import json, sys, time
import datasets  # imported before the clock starts
from evaluation.alpaca_metrics import find_lc_data
from evaluation.alpaca_run import load_eval_set
from realign_data.errors import RealignError

start = time.monotonic()
path, reason = find_lc_data(None)
lc_seconds = time.monotonic() - start
start = time.monotonic()
try:
    load_eval_set(None)
    eval_error = None
except RealignError as exc:
    eval_error = str(exc)
print(json.dumps({"path": path and str(path), "reason": reason, "lc_seconds": lc_seconds,
                  "eval_error": eval_error, "eval_seconds": time.monotonic() - start}))
"""


@pytest.mark.parametrize(
    "setting",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://no-such-host.invalid"}],
    ids=["HF_HUB_OFFLINE", "unresolvable-host"],
)
def test_offline_the_hub_is_not_retried_and_one_line_says_why(tmp_path, setting):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE"))}
    environment.update({"HF_HOME": str(tmp_path / "hf"), **setting})
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE], capture_output=True, text=True, timeout=300, cwd=REPO, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["path"] is None and probe["lc_seconds"] < 3 and probe["eval_seconds"] < 3, probe
    assert "\n" not in probe["reason"] and "--lc-data" in probe["reason"] and "cannot be reached" in probe["reason"]
    assert probe["eval_error"] and "\n" not in probe["eval_error"] and "--eval-set" in probe["eval_error"]
    assert "Retry" not in result.stderr and "Retrying" not in result.stderr, result.stderr[-2000:]


# ----------------------------------------------------------------------------------------- judging: JSON, name


def test_judging_report_is_strict_json_and_names_the_model_by_its_spec(tmp_path):
    eval_set = tmp_path / "eval.json"
    eval_set.write_text(json.dumps([{"instruction": f"Task {i}", "output": f"reference {i}"} for i in range(6)]))

    def judge(request, seen):  # always the second identifier; Task 2 never gets one
        text = request["messages"][-1]["content"]
        return Reply(content="no idea" if "Task 2" in text else "M")

    def model(request, seen):
        return Reply(content="my answer, NaN included")

    with ScriptedOpenAIServer(judge) as judge_server, ScriptedOpenAIServer(model) as model_server:
        report = eval_cli(
            tmp_path,
            "alpaca",
            "--eval-set",
            eval_set,
            "--model",
            "served-model",
            "--engine",
            "openai",
            "--base-url",
            model_server.url,
            "--judge-base-url",
            judge_server.url,
            "--judge-mode",
            "discrete",
            "-o",
            tmp_path / "r",
        )
    assert report["model"]["name"] == "served-model"
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| served-model |" in text and "judge: weighted_alpaca_eval_gpt4_turbo (discrete: no logprobs)" in text
    assert report["judge_label"] == "weighted_alpaca_eval_gpt4_turbo (discrete: no logprobs)"
    records = strict_json(tmp_path / "r" / "annotations.json")
    assert {r["generator_2"] for r in records} == {"served-model"}
    assert [r["preference"] for r in records if r["instruction"] == "Task 2"] == [None]
    assert '"preference": null' in (tmp_path / "r" / "annotations.json").read_text()
    assert strict_json_files(tmp_path / "r") == ["annotations.json", "model_outputs.json", "report.json"]
    bias = report["position_bias"]
    if any("is_switched_outputs" in r for r in records):  # the order the judge saw is recorded
        assert bias["second"] == 1.0 and bias["degenerate"] is True
    else:
        assert bias["known"] is False
