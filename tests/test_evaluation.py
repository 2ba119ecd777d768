"""realign-eval: reproductions of published numbers, the judge cache and faults, report contents, compare."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evaluation.arena_scoring import battles_from_judgments, leaderboard, read_judgments
from evaluation.records import read_records
from realign_data.errors import InputError
from tests.openai_server import Reply, ScriptedOpenAIServer

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ALPACA = SHARED / "alpaca_eval"
ARENA = SHARED / "arena_hard"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (reference data) is not present")
CLI = Path(sys.executable).parent / "realign-eval"


def run_eval(*args, check=True, env=None):
    result = subprocess.run(
        [str(CLI), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@needs_shared
@pytest.mark.parametrize("model", ["alpaca-7b", "gemma-2b-it"])
def test_alpaca_metrics_equal_the_published_leaderboard(tmp_path, model):
    results = ALPACA / "results" / model
    run_eval(
        "alpaca",
        "--annotations",
        results / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json",
        "--outputs",
        results / "model_outputs.json",
        "-o",
        tmp_path,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    published = pd.read_csv(ALPACA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv", index_col=0).loc[model]
    for key in ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate"):
        assert report["metrics"][key] == pytest.approx(float(published[key]), abs=1e-6), key
    assert report["metrics"]["avg_length"] == published["avg_length"]
    assert report["metrics"]["length_controlled_winrate"] is None
    assert "df_gamed.csv" in report["metrics"]["lc_unavailable"] and "--lc-data" in report["metrics"]["lc_unavailable"]
    assert "LC win rate unavailable" in (tmp_path / "report.md").read_text()
    assert report["model"]["name"] == model and report["settings"]["annotations"]["sha256"]
    assert report["code"]["packages"]["alpaca-eval"] == "0.6.6"
    for png in ("score_ci.png", "length_vs_preference.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@needs_shared
def test_arena_scores_equal_the_official_method(tmp_path):
    run_eval("arena", "--judgments", ARENA / "synthetic" / "seed0", "-o", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    expected = pd.read_csv(ARENA / "synthetic" / "seed0" / "expected_scores.csv").set_index("model")
    board = {row["model"]: row for row in report["leaderboard"]}
    assert set(board) == set(expected.index)
    for model, row in expected.iterrows():
        for key in ("score", "lower", "upper"):
            assert board[model][key] == pytest.approx(row[key], abs=0.01), (model, key)


def write_judgments(folder, verdicts):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"question_id": f"q{i}", "model": "m", "games": [{"score": a}, {"score": b}]})
        for i, (a, b) in enumerate(verdicts)
    ]
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")


def test_verdict_weights_swaps_and_unparseable_games(tmp_path):
    write_judgments(tmp_path, [("B>>A", "A>>B"), ("A=B", None), ("A>B", "B>A")])
    battles = battles_from_judgments(read_judgments(tmp_path), "base")
    counts = battles.groupby("winner").size().to_dict()
    # q0: model wins strongly in both games (3 + 3); q1: one tie, one unparseable; q2: baseline wins both
    assert counts == {"model_b": 6, "tie": 1, "model_a": 2}
    scores = {r["model"]: r["score"] for r in leaderboard(battles, "base", rounds=10)}
    assert scores["base"] == 50.0 and scores["m"] > 50.0


def test_bad_judgment_files_name_the_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"question_id": "q0", "model": "m", "games": [{}, {}]}\n{"model": "m"}\n')
    with pytest.raises(InputError, match=r"m.jsonl:2: missing field 'question_id'"):
        read_judgments(tmp_path)


def arena_inputs(tmp_path, count=6):
    questions = tmp_path / "question.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": f"q{i}", "turns": [{"content": f"Question {i}?"}]}) + "\n" for i in range(count)
        )
    )
    baseline = tmp_path / "baseline.jsonl"
    baseline.write_text(
        "".join(
            json.dumps(
                {"question_id": f"q{i}", "model_id": "base", "choices": [{"turns": [{"content": f"short {i}"}]}]}
            )
            + "\n"
            for i in range(count)
        )
    )
    model = tmp_path / "model.jsonl"
    model.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": f"q{i}",
                    "model_id": "ours",
                    "choices": [{"turns": [{"content": f"a much longer and better answer {i}"}]}],
                }
            )
            + "\n"
            for i in range(count)
        )
    )
    (tmp_path / "gen_judgment.py").write_text(  # shaped like lm-sys gen_judgment.py's attempts loop
        "for _ in range(configs['number_of_judgment_attempts']):\n"
        "    conv.append({'role': 'user', 'content': 'Please finish with a verdict label.'})\n"
    )
    config = tmp_path / "judge.yaml"
    config.write_text(
        json.dumps(
            {
                "judge_model": "judge",
                "baseline_model": "base",
                "number_of_judgment_attempts": 2,
                "regex_pattern": r"\[\[([AB<>=]+)\]\]",
                "system_prompt": "Judge fairly.",
                "prompt_template": ["Q: {question_1}\nA: {answer_1}\nB: {answer_2}"],
                "max_tokens": 64,
            }
        )
    )
    return questions, baseline, model, config


def arena_script(request, seen):
    """The longer answer wins; q3 is garbage at first (its continuation gives the verdict); q4 always lacks a
    verdict; q5 fails with 500 then 429 first."""
    prompt = request["messages"][1]["content"]
    question = prompt.split("?")[0].split()[-1]
    first = prompt.split("\nA: ")[1].split("\nB: ")[0]
    better = "A>B" if "longer" in first else "B>A"
    if question == "3" and len(request["messages"]) == 2:
        return Reply(content="I think both are fine.")
    if question == "4":
        return Reply(content="no verdict here")
    if question == "5" and seen == 0:
        return Reply(status=500)
    if question == "5" and seen == 1:
        return Reply(status=429, headers={"Retry-After": "0"})
    return Reply(content=f"Reasoning...\nMy final verdict is: [[{better}]]")


def test_arena_judging_cache_faults_and_report(tmp_path, realign_home):
    questions, baseline, model, config = arena_inputs(tmp_path)
    with ScriptedOpenAIServer(arena_script) as server:
        args = [
            "arena",
            "--judge-config",
            config,
            "--questions",
            questions,
            "--baseline-answers",
            baseline,
            "--outputs",
            model,
            "--judge-code",
            tmp_path / "gen_judgment.py",
            "--judge-base-url",
            server.url,
            "--judge-prices",
            "2.5,10",
            "-o",
            tmp_path / "report",
            "--rounds",
            "20",
        ]
        run_eval(*args, env={"OPENAI_API_KEY": "test-key"})
        first_calls = server.calls
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        run_eval(*args[:-4], "-o", tmp_path / "again", "--rounds", "20")
        # a rerun is served from the judge cache, except q4's two games: unparseable games are judged again
        # (the first answer and its continuation), never replayed
        assert server.calls == first_calls + 2 * 2
    usage = report["judge_usage"]
    assert usage["unparseable"] == 2  # q4, both games
    assert report["failures"] == 2 and report["n"] == 6
    assert usage["calls"] == 6 * 2 + 2 + 2  # every game once; both games of q3 and of q4 continued once
    assert first_calls == usage["calls"] + 2 * 2  # plus the 500 and the 429 retried for each game of q5
    assert report["judge"]["model"] == "judge" and "test-key" not in json.dumps(report)
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 2.5 + usage["completion_tokens"] * 10) / 1e6)
    board = {row["model"]: row for row in report["leaderboard"]}
    assert board["ours"]["score"] > 90 and board["base"]["score"] == 50.0
    judgments = tmp_path / "report" / "judgments"
    rescored = leaderboard(battles_from_judgments(read_judgments(judgments), "base"), "base", rounds=20)
    assert rescored == report["leaderboard"]
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["leaderboard"] == report["leaderboard"]
    assert again["judge_usage"]["judged_anew"] == 2 and again["judge_usage"]["calls"] == 4
    assert "2 judged anew" in (tmp_path / "again" / "report.md").read_text()
    assert (tmp_path / "report" / "answers.jsonl").exists()
    assert "| ours |" in (tmp_path / "report" / "report.md").read_text()


def test_alpaca_judging_maps_identifiers_back_through_the_random_order(tmp_path):
    eval_set = tmp_path / "eval.json"
    eval_set.write_text(
        json.dumps([{"instruction": f"Task {i}", "output": f"ref {i}", "generator": "gpt4_ref"} for i in range(10)])
    )
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            [
                {"instruction": f"Task {i}", "output": f"a detailed model answer {i}", "generator": "ours"}
                for i in range(10)
            ]
        )
    )

    def script(request, seen):  # prefers the longer output, whichever identifier it has
        text = request["messages"][-1]["content"]
        first = text.split('"output": """')[1].split('"""')[0]
        return Reply(content="M" if first.startswith("ref") else "m")

    with ScriptedOpenAIServer(script) as server:
        run_eval(
            "alpaca",
            "--eval-set",
            eval_set,
            "--outputs",
            outputs,
            "--judge-base-url",
            server.url,
            "--judge-mode",
            "discrete",
            "-o",
            tmp_path / "report",
        )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["metrics"]["win_rate"] == pytest.approx(100.0) and report["metrics"]["n_total"] == 10
    annotations = json.loads((tmp_path / "report" / "annotations.json").read_text())
    assert {a["preference"] for a in annotations} == {2}


@needs_shared
def test_compare_builds_a_leaderboard_with_published_rows(tmp_path):
    run_eval("arena", "--judgments", ARENA / "synthetic" / "seed0", "-o", tmp_path / "arena", "--rounds", "10")
    result = run_eval(
        "compare",
        tmp_path / "arena",
        "-o",
        tmp_path / "board",
        "--reference-leaderboard",
        ARENA / "arena_hard_leaderboard_20240731.csv",
    )
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert {"model-4", "gpt-4-turbo-2024-04-09"} <= set(board["model"])
    assert list(board["score"]) == sorted(board["score"], reverse=True)
    assert "| Arena-Hard | model-4 |" in result.stdout


@pytest.mark.slow
@needs_shared
def test_offline_demo_with_smollm2_as_model_and_in_process_judge(tmp_path, smollm2):
    run_eval(
        "alpaca",
        "--eval-set",
        ALPACA / "reference_outputs_gpt4_1106_preview.json",
        "--limit",
        "4",
        "--model",
        "smollm2-135m-instruct",
        "--max-new-tokens",
        "32",
        "--judge-engine",
        "hf",
        "--judge-model",
        "smollm2-135m-instruct",
        "-o",
        tmp_path,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"]["model_id"].startswith("smollm2-135m-instruct@sha256:")
    assert report["settings"]["eval_set"]["n"] == 4 and report["judge"]["engine"] == "hf"
    assert report["metrics"]["n_total"] + report["failures"] == 4


def v2_answers(path, model, qids, text):
    path.write_text(
        "".join(
            json.dumps(
                {
                    "uid": q,
                    "model": model,
                    "messages": [
                        {"role": "user", "content": "..."},
                        {"role": "assistant", "content": {"answer": text(q)}},
                    ],
                }
            )
            + "\n"
            for q in qids
        )
    )
    return path


@needs_shared
def test_arena_v2_uses_per_category_baselines_and_system_prompts(tmp_path):
    config_dir = ARENA / "config"
    records = read_records(ARENA / "arena-hard-v2.0" / "question.jsonl")
    picked = [r for r in records if r["category"] == "hard_prompt"][:3] + [
        r for r in records if r["category"] == "creative_writing"
    ][:3]
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in picked))
    qids = [r["uid"] for r in picked]
    hard = v2_answers(tmp_path / "o3.jsonl", "o3-mini-2025-01-31", qids, lambda q: f"o3 {q}")
    creative = v2_answers(tmp_path / "gemini.jsonl", "gemini-2.0-flash-001", qids, lambda q: f"gemini {q}")
    ours = v2_answers(tmp_path / "ours.jsonl", "ours", qids, lambda q: f"ours {q}")
    settings = yaml.safe_load((config_dir / "judge_settings_v2.0.yaml").read_text())["judge_settings"]

    def script(request, seen):  # ours beats o3-mini, loses to gemini; check the category's system prompt is used
        system, prompt = request["messages"][0]["content"], request["messages"][-1]["content"]
        assert system in (settings["hard_prompt"]["system_prompt"], settings["creative_writing"]["system_prompt"])
        first = prompt.split("<|The Start of Assistant A's Answer|>\n")[1].split("\n")[0]
        ours_first = first.startswith("ours")
        ours_wins = "o3" in prompt
        return Reply(content=f"[[{'A>B' if ours_first == ours_wins else 'B>A'}]]")

    with ScriptedOpenAIServer(script) as server:
        run_eval(
            "arena",
            "--judge-config",
            config_dir / "arena-hard-v2.0.yaml",
            "--judge-settings",
            config_dir / "judge_settings_v2.0.yaml",
            "--questions",
            questions,
            "--baseline-answers",
            hard,
            "--baseline-answers",
            creative,
            "--outputs",
            ours,
            "--judge-base-url",
            server.url,
            "--rounds",
            "10",
            "-o",
            tmp_path / "report",
        )
    board = {
        (r["category"], r["model"]): r["score"]
        for r in json.loads((tmp_path / "report" / "report.json").read_text())["leaderboard"]
    }
    assert board[("hard_prompt", "o3-mini-2025-01-31")] == 50.0 and board[("hard_prompt", "ours")] > 50
    assert board[("creative_writing", "gemini-2.0-flash-001")] == 50.0 and board[("creative_writing", "ours")] < 50
    missing = run_eval(
        "arena",
        "--judge-config",
        config_dir / "arena-hard-v2.0.yaml",
        "--questions",
        questions,
        "--outputs",
        ours,
        "-o",
        tmp_path / "x",
        check=False,
    )
    assert missing.returncode == 2 and "--judge-settings" in missing.stderr


def test_style_control_discounts_wins_explained_by_length(tmp_path):
    """Four models, equally good, whose answers are shorter or longer than the baseline's; the judge prefers the
    longer answer. Raw scores spread the models apart; with style control the spread should shrink by half."""
    import numpy as np

    rng = np.random.RandomState(11)
    scales = {"m-short": 0.5, "m-even": 1.0, "m-long": 2.0, "m-longer": 4.0}
    answers, judgments = tmp_path / "answers", tmp_path / "judgments"
    answers.mkdir()
    judgments.mkdir()

    def answer(qid, model, tokens):
        return (
            json.dumps(
                {
                    "question_id": qid,
                    "model_id": model,
                    "choices": [{"turns": [{"content": "..."}]}],
                    "conv_metadata": {
                        "token_len": tokens,
                        "header_count": {"h1": int(rng.randint(0, 3))},
                        "list_count": {"ordered": int(rng.randint(0, 6))},
                        "bold_count": {"**": int(rng.randint(0, 4))},
                    },
                }
            )
            + "\n"
        )

    base = {f"q{i}": int(rng.randint(200, 600)) for i in range(120)}
    (answers / "gpt-4-0314.jsonl").write_text("".join(answer(q, "gpt-4-0314", n) for q, n in base.items()))
    for model, scale in scales.items():
        lengths = {q: int(n * scale * rng.uniform(0.7, 1.3)) for q, n in base.items()}
        (answers / f"{model}.jsonl").write_text("".join(answer(q, model, n) for q, n in lengths.items()))
        records = []
        for qid, n in lengths.items():
            p = 1 / (1 + np.exp(-3 * (n - base[qid]) / (n + base[qid])))
            records.append(
                json.dumps(
                    {
                        "question_id": qid,
                        "model": model,
                        "games": [
                            {"score": "B>A" if rng.rand() < p else "A>B"},
                            {"score": "A>B" if rng.rand() < p else "B>A"},
                        ],
                    }
                )
            )
        (judgments / f"{model}.jsonl").write_text("\n".join(records) + "\n")
    run_eval("arena", "--judgments", judgments, "--rounds", "10", "-o", tmp_path / "plain")
    run_eval(
        "arena",
        "--judgments",
        judgments,
        "--answers-dir",
        answers,
        "--style-control",
        "--rounds",
        "10",
        "-o",
        tmp_path / "styled",
    )

    def spread(folder):
        board = json.loads((tmp_path / folder / "report.json").read_text())["leaderboard"]
        scores = [r["score"] for r in board if r["model"] in scales]
        return max(scores) - min(scores)

    assert spread("plain") > 30
    assert spread("styled") < spread("plain") / 2
    report = json.loads((tmp_path / "styled" / "report.json").read_text())
    assert report["settings"]["style_control"] is True and report["deviations"] == []


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"instruction": "a"}\n{"instruction": \n', "f.jsonl:2: invalid JSON"),
        ('{"instruction": "a"}\n\n{"other": 1}\n', "f.jsonl:3: missing field 'instruction'"),
        ('[{"instruction": "a"}, {"other": 1}]', "f.jsonl: row 1: missing field 'instruction'"),
        ('{"instruction": "a"}\n[1]\n', "f.jsonl:2: expected a JSON object"),
        ("\n", "f.jsonl: no records"),
    ],
)
def test_record_files_name_the_line_row_and_field(tmp_path, text, message):
    (tmp_path / "f.jsonl").write_text(text)
    with pytest.raises(InputError) as error:
        read_records(tmp_path / "f.jsonl", ("instruction",))
    assert str(error.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(error.value)


def test_a_bad_answer_file_stops_arena_with_one_line(tmp_path):
    questions, baseline, model, config = arena_inputs(tmp_path, count=2)
    model.write_text(model.read_text() + "{not json\n")
    result = run_eval(
        "arena",
        "--judge-config",
        config,
        "--questions",
        questions,
        "--baseline-answers",
        baseline,
        "--outputs",
        model,
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
        "-o",
        tmp_path / "r",
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {model}:3: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    ]
