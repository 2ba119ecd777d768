"""Arena-Hard scoring as each version's official show_result.py does it: v2.0 bootstrap means per category, the
v2.0 label table and null games, judge settings read from upstream's Python file, style control of both versions,
position bias, and strict JSON in report folders. Expected numbers come from ../shared (computed by the official
code), from hand computation, or from an independent fit written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from evaluation.arena_settings import read_judge_settings
from evaluation.arena_style import markdown_counts
from realign_data.errors import InputError
from tests.helpers import run_cli, strict_json, strict_json_files
from tests.openai_server import Reply, ScriptedOpenAIServer

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ARENA = SHARED / "arena_hard"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (reference data) is not present")

V2_CONFIG = {
    "judge_model": "judge",
    "bench_name": "arena-hard-v2.0",
    "temperature": 0.0,
    "max_tokens": 64,
    "regex_patterns": [r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"],
    "prompt_template": "Q: {QUESTION}\nA: {ANSWER_A}\nB: {ANSWER_B}",
}

# An upstream-like utils/judge_utils.py: a module constant used inside the dict, string concatenation, and code
# that would leave a marker file (and then stop the interpreter) if the file were ever run.
JUDGE_UTILS = """import os

open(os.path.join(os.environ.get("MARKER_DIR", "."), "ran"), "w").close()
raise SystemExit(3)

PROMPT = "Please act as an impartial judge. " \\
    "Output [[A>B]] or the like."
OTHER = PROMPT + " Creative answers are welcome."


def helper():
    return 42


JUDGE_SETTINGS = {
    "hard_prompt": {
        "baseline": "base-hard",
        "system_prompt": PROMPT,
    },
    "creative_writing": {"baseline": "base-creative", "system_prompt": OTHER},
}
"""
PROMPT = "Please act as an impartial judge. Output [[A>B]] or the like."
SETTINGS = {
    "hard_prompt": {"baseline": "base-hard", "system_prompt": PROMPT},
    "creative_writing": {"baseline": "base-creative", "system_prompt": PROMPT + " Creative answers are welcome."},
}


def env(tmp_path: Path) -> dict[str, str]:
    return {
        "REALIGN_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": "test-key",
        "MARKER_DIR": str(tmp_path),
    }


def eval_cli(tmp_path: Path, *args) -> dict:
    result = run_cli(*map(str, args), prog="realign-eval", env=env(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = Path(args[args.index("-o") + 1])
    return strict_json(output / "report.json")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def v2_record(uid: str, model: str, category: str, first, second, baseline: str = "recorded-baseline") -> dict:
    """A v2.0 judgment record; ``first``/``second`` are labels, None (null score) or "null-game"."""

    def game(label):
        return None if label == "null-game" else {"score": label, "judgment": {"answer": f"[[{label}]]"}, "prompt": []}

    return {
        "uid": uid,
        "category": category,
        "judge": "j",
        "model": model,
        "baseline": baseline,
        "games": [game(first), game(second)],
    }


# ------------------------------------------------------------------------------------------------ judge settings


def test_judge_settings_are_read_from_upstreams_python_file_without_running_it(tmp_path):
    path = tmp_path / "judge_utils.py"
    path.write_text(JUDGE_UTILS)
    assert read_judge_settings(path) == SETTINGS
    assert not (tmp_path / "ran").exists() and not Path("ran").exists()
    # the same settings as YAML (the derived file's layout) and as JSON (top level)
    yaml_path = tmp_path / "settings.yaml"
    yaml_path.write_text(json.dumps({"judge_settings": SETTINGS}))
    json_path = tmp_path / "settings.json"
    json_path.write_text(json.dumps(SETTINGS))
    assert read_judge_settings(yaml_path) == read_judge_settings(json_path) == SETTINGS


@pytest.mark.parametrize(
    "source, needles",
    [
        ("JUDGE_SETTINGS = dict(hard={'baseline': 'b', 'system_prompt': 's'})\n", ["bad.py:1", "literal", "Call"]),
        (
            "P = open('x').read()\nJUDGE_SETTINGS = {'hard': {'baseline': 'b', 'system_prompt': P}}\n",
            ["bad.py:2", "'P'"],
        ),
        ("JUDGE_SETTINGS = {'hard': {'baseline': 'b', 'system_prompt': f'{1}'}}\n", ["bad.py:1", "JoinedStr"]),
        ("SETTINGS = {}\n", ["bad.py", "no top-level assignment to JUDGE_SETTINGS"]),
        ("JUDGE_SETTINGS = {'hard': {'baseline': 'b'}}\n", ["bad.py", "hard", "system_prompt"]),
        ("JUDGE_SETTINGS = {\n", ["bad.py:1", "not valid Python"]),
    ],
)
def test_judge_settings_files_that_are_not_literal_are_one_line_errors(tmp_path, source, needles):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(InputError) as error:
        read_judge_settings(path)
    message = str(error.value)
    assert "\n" not in message and all(needle in message for needle in needles), message


# ------------------------------------------------------------------------------------------------- v2.0 scoring


@needs_shared
def test_v2_rescoring_lands_on_the_official_scores(tmp_path):
    config = ARENA / "config"
    folder = ARENA / "synthetic" / "v2-seed1"
    report = eval_cli(
        tmp_path,
        "arena",
        "--judgments",
        folder,
        "--judge-config",
        config / "arena-hard-v2.0.yaml",
        "--judge-settings",
        config / "judge_settings_v2.0.yaml",
        "--rounds",
        "1000",
        "-o",
        tmp_path / "r",
    )
    import pandas as pd

    expected = pd.read_csv(folder / "expected_scores.csv")
    board = {(row["category"], row["model"]): row for row in report["leaderboard"]}
    for row in expected.itertuples():
        ours = board[(row.category, row.model)]
        assert abs(ours["score"] - row.score) < 0.5, (row.category, row.model, ours["score"], row.score)
        assert abs(ours["lower"] - row.lower) < 1.0 and abs(ours["upper"] - row.upper) < 1.0, (row, ours)
        assert ours["n_battles"] == row.n_battles
    for category, baseline in (("hard_prompt", "o3-mini-2025-01-31"), ("creative_writing", "gemini-2.0-flash-001")):
        assert {k: board[(category, baseline)][k] for k in ("score", "lower", "upper")} == {
            "score": 50.0,
            "lower": 50.0,
            "upper": 50.0,
        }
    assert set(board) == {(r.category, r.model) for r in expected.itertuples()} | {
        ("hard_prompt", "o3-mini-2025-01-31"),
        ("creative_writing", "gemini-2.0-flash-001"),
    }
    assert report["method"]["version"] == "v2.0"
    assert any("unseeded" in text for text in report["deviations"])
    text = (tmp_path / "r" / "report.md").read_text()
    assert "position bias:" in text and "deviation from upstream: bootstrap seeded" in text


def test_v2_labels_null_games_and_settings_from_python_by_hand(tmp_path):
    records = [
        # m1 (its path is dropped, as upstream does): q0 -> [1, 1]; q1 strong both ways -> [1] * 6 = 8 battles of 1
        v2_record("q0", "org/m1", "hard_prompt", "B>A", "A>B"),
        v2_record("q1", "org/m1", "hard_prompt", "A<<B", "B<<A"),
        v2_record("q2", "org/m1", "hard_prompt", "null-game", "A>B"),  # a null game: the question is dropped
        v2_record("q3", "org/m1", "hard_prompt", None, "A>B"),  # a null score: dropped too
        # m2: ties spelled both ways -> four battles of 0.5
        v2_record("q4", "m2", "creative_writing", "A=B", "B=A"),
        v2_record("q5", "m2", "creative_writing", "B=A", "A=B"),
        # m3: q0 -> [0, 0]; q1: game 2 'A>B' -> [1], game 1 'A>>B' -> [0] * 3: six battles, mean 1/6
        v2_record("q0", "m3", "hard_prompt", "A>B", "B>A"),
        v2_record("q1", "m3", "hard_prompt", "A>>B", "A>B"),
    ]
    folder = tmp_path / "judgments"
    write_jsonl(folder / "all.jsonl", records)
    config = tmp_path / "arena-hard-v2.0.yaml"
    config.write_text(json.dumps(V2_CONFIG))
    settings = tmp_path / "judge_utils.py"
    settings.write_text(JUDGE_UTILS)
    report = eval_cli(
        tmp_path,
        "arena",
        "--judgments",
        folder,
        "--judge-config",
        config,
        "--judge-settings",
        settings,
        "--rounds",
        "1000",
        "-o",
        tmp_path / "r",
    )
    board = {(row["category"], row["model"]): row for row in report["leaderboard"]}
    assert set(board) == {
        ("hard_prompt", "m1"),
        ("hard_prompt", "m3"),
        ("hard_prompt", "base-hard"),
        ("creative_writing", "m2"),
        ("creative_writing", "base-creative"),
    }  # settings' baselines
    keys = ("score", "lower", "upper", "n_battles")
    assert [board[("hard_prompt", "m1")][k] for k in keys] == [100.0, 100.0, 100.0, 8]
    assert [board[("creative_writing", "m2")][k] for k in keys] == [50.0, 50.0, 50.0, 4]
    m3 = board[("hard_prompt", "m3")]
    assert m3["n_battles"] == 6 and abs(m3["score"] - 100 / 6) < 1.5 and m3["lower"] <= m3["score"] <= m3["upper"]
    assert board[("hard_prompt", "base-hard")]["score"] == 50.0
    assert report["failures"] == 2 and report["left_out"]["questions_dropped_null_game"] == 2
    # position: first = A won; m1 q0 (second, first), q1 (second, first), q2 (-, first), q3 (-, first),
    # m2 four ties, m3 q0 (first, second), q1 (first, first): 7 first, 3 second, 4 ties of 14; the two games
    # name the same winner in m1 q0, q1, m2 q4, q5, m3 q0: 5 of 6 questions
    bias = report["position_bias"]
    assert bias["n_verdicts"] == 14 and bias["n_questions_both_games"] == 6
    assert bias["first"] == pytest.approx(7 / 14) and bias["second"] == pytest.approx(3 / 14)
    assert bias["tie"] == pytest.approx(4 / 14) and bias["agreement"] == pytest.approx(5 / 6)
    assert bias["degenerate"] is False
    assert not (tmp_path / "ran").exists()  # the settings file was read, not run
    assert report["settings"]["judge_settings"]["path"] == str(settings)


def test_a_category_without_judge_settings_is_named(tmp_path):
    folder = write_jsonl(tmp_path / "j" / "m.jsonl", [v2_record("q0", "m", "math", "A>B", "B>A")]).parent
    settings = tmp_path / "judge_utils.py"
    settings.write_text(JUDGE_UTILS)
    config = tmp_path / "arena-hard-v2.0.yaml"
    config.write_text(json.dumps(V2_CONFIG))
    result = run_cli(
        "arena",
        "--judgments",
        str(folder),
        "--judge-config",
        str(config),
        "--judge-settings",
        str(settings),
        "-o",
        str(tmp_path / "r"),
        prog="realign-eval",
        env=env(tmp_path),
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "judge_utils.py" in lines[0] and "'math'" in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_degenerate_judge_is_reported_as_such(tmp_path):
    """A judge that always answers A>B: its v0.1 score looks like an even match, the report says what it is."""
    records = [
        {"question_id": f"q{i}", "model": "m", "judge": "lazy-judge", "games": [{"score": "A>B"}, {"score": "A>B"}]}
        for i in range(20)
    ]
    folder = write_jsonl(tmp_path / "judgments" / "m.jsonl", records).parent
    report = eval_cli(tmp_path, "arena", "--judgments", folder, "--rounds", "5", "-o", tmp_path / "r")
    bias = report["position_bias"]
    assert (bias["first"], bias["second"], bias["agreement"], bias["degenerate"]) == (1.0, 0.0, 0.0, True)
    text = (tmp_path / "r" / "report.md").read_text()
    assert "WARNING: the judge looks degenerate: 100% of its 40 verdicts go to the answer shown first" in text
    assert "judge: lazy-judge" in text and report["judge_label"] == "lazy-judge"


# ------------------------------------------------------------------------------------------------- style control


def test_markdown_counts_equal_upstreams_published_metadata():
    if not SHARED.is_dir():
        pytest.skip("../shared/data (reference data) is not present")
    checked = 0
    for name in ("gpt-4-0314", "gemma-2b-it"):
        for line in (ARENA / "arena-hard-v0.1" / "model_answer" / f"{name}.jsonl").read_text().splitlines():
            record = json.loads(line)
            meta = record["conv_metadata"]
            expected = tuple(sum(meta[key].values()) for key in ("header_count", "list_count", "bold_count"))
            assert markdown_counts(record["choices"][0]["turns"][0]["content"]) == expected, record["question_id"]
            checked += 1
    assert checked == 1000


def v01_answer(qid: str, model: str, tokens: int, headers: int, lists: int, bold: int) -> dict:
    return {
        "question_id": qid,
        "model_id": model,
        "choices": [{"turns": [{"content": f"{model} on {qid}"}]}],
        "conv_metadata": {
            "token_len": tokens,
            "header_count": {"h1": headers, "h2": 0},
            "list_count": {"ordered": lists, "unordered": 0},
            "bold_count": {"**": bold, "__": 0},
        },
    }


def _penalized_fit(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """argmin 0.5 |w|^2 + sum of logistic losses (scikit-learn's objective at C = 1), solved here with scipy."""

    def objective(w):
        z = features @ w
        loss = np.sum(np.logaddexp(0, z) - target * z) + 0.5 * w @ w
        return loss, features.T @ (1 / (1 + np.exp(-z)) - target) + w

    return minimize(
        objective,
        np.zeros(features.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000},
    ).x


def test_v01_style_control_is_upstreams_penalized_fit(tmp_path):
    """Three models against gpt-4-0314, answers with upstream's conv_metadata; the expected style-controlled
    scores are re-derived here from upstream's formulas with an independent solver."""
    rng = np.random.RandomState(7)
    models, baseline, count = ["m1", "m2", "m3"], "gpt-4-0314", 60
    meta = {
        baseline: {
            f"q{i}": (
                int(rng.randint(100, 900)),
                int(rng.randint(0, 4)),
                int(rng.randint(0, 9)),
                int(rng.randint(0, 6)),
            )
            for i in range(count)
        }
    }
    for scale, model in zip((0.5, 1.0, 2.0), models, strict=True):
        meta[model] = {
            q: (
                int(rng.randint(100, 900) * scale),
                int(rng.randint(0, 4)),
                int(rng.randint(0, 9)),
                int(rng.randint(0, 6)),
            )
            for q in meta[baseline]
        }
    labels = ["A>>B", "A>B", "A=B", "B>A", "B>>A", None]
    records = []
    for model in models:
        for qid in meta[baseline]:
            longer = meta[model][qid][0] > meta[baseline][qid][0]  # the judge leans to the longer answer
            weights = [0.1, 0.2, 0.2, 0.25, 0.2, 0.05] if longer else [0.2, 0.25, 0.2, 0.2, 0.1, 0.05]
            first, second = rng.choice(len(labels), 2, p=weights)
            swap = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B", None: None}
            records.append(
                {
                    "question_id": qid,
                    "model": model,
                    "games": [{"score": labels[first]}, {"score": swap[labels[second]]}],
                }
            )
    judgments = write_jsonl(tmp_path / "judgments" / "all.jsonl", records).parent
    answers = tmp_path / "answers"
    for model, per_question in meta.items():
        write_jsonl(answers / f"{model}.jsonl", [v01_answer(q, model, *v) for q, v in per_question.items()])
    report = eval_cli(
        tmp_path,
        "arena",
        "--judgments",
        judgments,
        "--answers-dir",
        answers,
        "--style-control",
        "--rounds",
        "20",
        "-o",
        tmp_path / "r",
    )

    # upstream's battles: game 1 as labelled (model is B), game 2 swapped; strong verdicts three times
    battles = []
    for record in records:
        for index, game in enumerate(record["games"]):
            label = game["score"]
            if label is None:
                continue
            winner = {"A>>B": "a", "A>B": "a", "A=B": "tie", "B>A": "b", "B>>A": "b"}[label]
            if index == 1:
                winner = {"a": "b", "b": "a", "tie": "tie"}[winner]
            battles += [(record["model"], record["question_id"], winner)] * (3 if ">>" in label else 1)
    names = [baseline, *models]
    style = np.array(
        [
            [(meta[baseline][q][k] - meta[m][q][k]) / (meta[baseline][q][k] + meta[m][q][k] + 1) for k in range(4)]
            for m, q, _ in battles
        ]
    )
    style = (style - style.mean(axis=0)) / style.std(axis=0)
    rows, target = [], []
    for copy in (0, 1):
        for (model, _, winner), features in zip(battles, style, strict=True):
            row = np.zeros(len(names))
            row[names.index(baseline)], row[names.index(model)] = math.log(10), -math.log(10)
            rows.append(np.concatenate([row, features]))
            target.append(1.0 if winner == "a" or (winner == "tie" and copy == 0) else 0.0)
    weights = _penalized_fit(np.array(rows), np.array(target))
    ratings = 400 * weights[: len(names)]
    board = {row["model"]: row for row in report["leaderboard"]}
    for model in models:
        expected = 100 / (1 + 10 ** ((ratings[0] - ratings[names.index(model)]) / 400))
        assert board[model]["score"] == pytest.approx(expected, abs=0.02), model
        assert board[model]["lower"] <= board[model]["score"] <= board[model]["upper"]
    assert board[baseline]["score"] == 50.0
    assert report["deviations"] == []  # every answer carries upstream's metadata: nothing estimated


def v2_answer(uid: str, model: str, tokens: int, headers: int, lists: int, bold: int) -> dict:
    return {
        "uid": uid,
        "model": model,
        "messages": [
            {"role": "user", "content": "..."},
            {"role": "assistant", "content": {"answer": f"{model} on {uid}"}},
        ],
        "metadata": {
            "token_len": tokens,
            "header_count": {"h1": headers},
            "list_count": {"ordered": lists},
            "bold_count": {"**": bold},
        },
    }


def test_v2_style_control_lands_on_the_unpenalized_fit(tmp_path):
    """v2.0 style control: the median of the bootstrap Bradley-Terry fits is close to the full-data maximum
    likelihood fit, re-derived here from upstream's formulas (length ratio, markdown density) with scipy."""
    rng = np.random.RandomState(3)
    models, baseline, count = ["m1", "m2"], "base-hard", 150
    meta = {
        baseline: {
            f"u{i}": (
                int(rng.randint(100, 900)),
                int(rng.randint(0, 4)),
                int(rng.randint(0, 9)),
                int(rng.randint(0, 6)),
            )
            for i in range(count)
        }
    }
    for scale, model in zip((0.6, 1.8), models, strict=True):
        meta[model] = {
            u: (
                int(rng.randint(100, 900) * scale),
                int(rng.randint(0, 4)),
                int(rng.randint(0, 9)),
                int(rng.randint(0, 6)),
            )
            for u in meta[baseline]
        }
    records = []
    for model in models:
        for uid in meta[baseline]:
            m, b = meta[model][uid][0], meta[baseline][uid][0]
            p = 1 / (1 + math.exp(-(2.5 * (m - b) / (m + b))))  # the judge likes length, nothing else
            first = "B>A" if rng.rand() < p else "A>B"  # game 1: the model is B
            second = "A>B" if rng.rand() < p else "B>A"  # game 2: the model is A
            records.append(v2_record(uid, model, "hard_prompt", first, second))
    judgments = write_jsonl(tmp_path / "judgments" / "all.jsonl", records).parent
    answers = tmp_path / "answers"
    for model, per_question in meta.items():
        write_jsonl(answers / f"{model}.jsonl", [v2_answer(u, model, *v) for u, v in per_question.items()])
    config = tmp_path / "arena-hard-v2.0.yaml"
    config.write_text(json.dumps(V2_CONFIG))
    settings = tmp_path / "judge_utils.py"
    settings.write_text(JUDGE_UTILS)
    common = ["arena", "--judgments", judgments, "--judge-config", config, "--judge-settings", settings]
    plain = eval_cli(tmp_path, *common, "-o", tmp_path / "plain")
    styled = eval_cli(tmp_path, *common, "--answers-dir", answers, "--style-control", "-o", tmp_path / "styled")

    battles = []  # (model, uid, score): upstream's label_to_score, game 2 first
    for record in records:
        a_score = {"A>B": 1.0, "B>A": 0.0}
        battles += [
            (record["model"], record["uid"], a_score[record["games"][1]["score"]]),
            (record["model"], record["uid"], 1 - a_score[record["games"][0]["score"]]),
        ]
    features = []
    for model, uid, _ in battles:
        (mt, *md), (bt, *bd) = meta[model][uid], meta[baseline][uid]
        row = [(mt - bt) / (mt + bt)]
        row += [(x / (mt + 1) - y / (bt + 1)) / (x / (mt + 1) + y / (bt + 1) + 1) for x, y in zip(md, bd, strict=True)]
        features.append(row)
    features = np.array(features)
    features = (features - features.mean(axis=0)) / features.std(axis=0, ddof=1)
    design = np.hstack([np.array([[1.0 if model == m else 0.0 for m in models] for model, _, _ in battles]), features])
    target = np.array([score for _, _, score in battles])

    def objective(w):
        z = design @ w
        return np.sum(np.logaddexp(0, z) - target * z), design.T @ (1 / (1 + np.exp(-z)) - target)

    weights = minimize(objective, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}).x
    styled_board = {row["model"]: row for row in styled["leaderboard"]}
    plain_board = {row["model"]: row for row in plain["leaderboard"]}
    for index, model in enumerate(models):
        expected = 100 / (1 + math.exp(-weights[index]))
        assert abs(styled_board[model]["score"] - expected) < 1.5, (model, styled_board[model], expected)
    # the judge only liked length: held out, the two models come out closer than in the plain scores
    assert (
        abs(styled_board["m1"]["score"] - styled_board["m2"]["score"])
        < abs(plain_board["m1"]["score"] - plain_board["m2"]["score"]) / 2
    )
    assert styled_board[baseline]["score"] == 50.0


def test_missing_token_counts_are_estimated_and_listed_as_a_deviation(tmp_path):
    records = [
        {
            "question_id": f"q{i}",
            "model": "m",
            "games": [{"score": "B>A" if i % 3 else "A>B"}, {"score": "A>B" if i % 2 else "B>A"}],
        }
        for i in range(12)
    ]
    judgments = write_jsonl(tmp_path / "judgments" / "m.jsonl", records).parent
    answers = tmp_path / "answers"
    write_jsonl(
        answers / "m.jsonl",
        [
            {
                "question_id": f"q{i}",
                "model_id": "m",
                "choices": [{"turns": [{"content": "## Plan\n" + "- point\n" * (i + 1)}]}],
            }
            for i in range(12)
        ],
    )
    write_jsonl(
        answers / "base.jsonl",
        [
            {
                "question_id": f"q{i}",
                "model_id": "gpt-4-0314",
                "choices": [{"turns": [{"content": "short " * (12 - i)}]}],
            }
            for i in range(12)
        ],
    )
    tiktoken_cache = tmp_path / "empty-tiktoken-cache"
    tiktoken_cache.mkdir()
    result = run_cli(
        "arena",
        "--judgments",
        str(judgments),
        "--answers-dir",
        str(answers),
        "--style-control",
        "--rounds",
        "5",
        "-o",
        str(tmp_path / "r"),
        prog="realign-eval",
        env={**env(tmp_path), "TIKTOKEN_CACHE_DIR": str(tiktoken_cache)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = strict_json(tmp_path / "r" / "report.json")
    assert any("characters / 4" in text and "gpt-3.5-turbo tokens" in text for text in report["deviations"])
    assert (
        "deviation from upstream: style control: answer length estimated" in (tmp_path / "r" / "report.md").read_text()
    )


# ------------------------------------------------------------------------------------------------ strict JSON


def test_every_json_file_of_an_arena_judging_report_is_strict(tmp_path):
    questions = write_jsonl(
        tmp_path / "question.jsonl",
        [{"question_id": f"q{i}", "turns": [{"content": f"Question {i}?"}]} for i in range(4)],
    )
    baseline = write_jsonl(
        tmp_path / "base.jsonl",
        [
            {"question_id": f"q{i}", "model_id": "base", "choices": [{"turns": [{"content": f"base {i}"}]}]}
            for i in range(4)
        ],
    )
    model = write_jsonl(
        tmp_path / "ours.jsonl",
        [
            {
                "question_id": f"q{i}",
                "model_id": "ours",
                "choices": [{"turns": [{"content": f"ours {i} NaN Infinity"}]}],
            }
            for i in range(4)
        ],
    )
    config = tmp_path / "judge.yaml"
    config.write_text(
        json.dumps(
            {
                "judge_model": "judge",
                "baseline_model": "base",
                "number_of_judgment_attempts": 1,
                "regex_pattern": r"\[\[([AB<>=]+)\]\]",
                "system_prompt": "Judge fairly.",
                "prompt_template": ["Q: {question_1}\nA: {answer_1}\nB: {answer_2}"],
            }
        )
    )

    def script(request, seen):  # q3 never gets a verdict (its games' score is null)
        prompt = request["messages"][-1]["content"]
        return Reply(content="no verdict" if "Question 3?" in prompt else "[[A>B]]")

    with ScriptedOpenAIServer(script) as server:
        report = eval_cli(
            tmp_path,
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
            server.url,
            "--rounds",
            "3",
            "-o",
            tmp_path / "r",
        )
    assert report["failures"] == 2
    assert strict_json_files(tmp_path / "r") == ["answers.jsonl", "judgments/ours.jsonl", "report.json"]
    lines = (tmp_path / "r" / "judgments" / "ours.jsonl").read_text().splitlines()
    assert any('"score": null' in line for line in lines)
