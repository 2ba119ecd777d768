"""realign-eval keeps the exit-code rule for bad input: one `error:` line naming the file, row and field, exit 2,
and nothing written (the report folder is not created). Plus the documented minimal inputs that must work, with
numbers computed by hand here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_cli, strict_json, tree_digest
from tests.openai_server import Reply, ScriptedOpenAIServer

DEAD_JUDGE = "http://127.0.0.1:9/v1"  # nothing listens: a run that got as far as judging would fail differently


def env_for(tmp_path: Path) -> dict[str, str]:
    """A private $REALIGN_HOME inside tmp_path, so a judge cache created by mistake shows in the digest."""
    return {"REALIGN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "test-key"}


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    return path


def write_json(path: Path, data, bom: bool = False) -> Path:
    return write(path, json.dumps(data), bom)


def write_jsonl(path: Path, rows: list, bom: bool = False) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows), bom)


# ---------------------------------------------------------------------------------------------- AlpacaEval inputs


def annotation_rows(preferences=(2, 2, 1)) -> list[dict]:
    """Only the documented fields: instruction, output_1 (reference), output_2 (model), preference."""
    return [
        {"instruction": f"Task {i}", "output_1": f"reference {i}", "output_2": f"model answer {i}", "preference": p}
        for i, p in enumerate(preferences)
    ]


def annotations(tmp_path: Path, row: int | None = None, **changes) -> Path:
    rows = annotation_rows()
    if row is not None:
        for key, value in changes.items():
            if value is DROP:
                rows[row].pop(key)
            else:
                rows[row][key] = value
    return write_json(tmp_path / "ann.json", rows)


DROP = object()


def alpaca(tmp_path: Path, *extra: str, ann: Path | None = None) -> list[str]:
    return ["alpaca", "--annotations", str(ann or annotations(tmp_path)), *extra]


def eval_set(tmp_path: Path, rows=None) -> Path:
    return write_json(
        tmp_path / "eval.json", rows or [{"instruction": f"Task {i}", "output": f"reference {i}"} for i in range(3)]
    )


def outputs(tmp_path: Path, rows=None) -> Path:
    return write_json(
        tmp_path / "outputs.json",
        rows or [{"instruction": f"Task {i}", "output": f"answer {i}", "generator": "ours"} for i in range(3)],
    )


def judging_alpaca(tmp_path: Path, *extra: str, eval_rows=None, output_rows=None) -> list[str]:
    return [
        "alpaca",
        "--eval-set",
        str(eval_set(tmp_path, eval_rows)),
        "--outputs",
        str(outputs(tmp_path, output_rows)),
        "--judge-base-url",
        DEAD_JUDGE,
        *extra,
    ]


def alpaca_board(tmp_path: Path, text: str) -> list[str]:
    return alpaca(tmp_path, "--reference-leaderboard", str(write(tmp_path / "board.csv", text)))


# ---------------------------------------------------------------------------------------------- Arena-Hard inputs


def judgment(qid: str, first="B>A", second="A>B", model: str = "m") -> dict:
    """One record of the official layout: game 1 has the model as B, game 2 as A."""
    return {
        "question_id": qid,
        "model": model,
        "judge": "j",
        "games": [
            {"user_prompt": "...", "judgment": f"[[{first}]]", "score": first},
            {"user_prompt": "...", "judgment": f"[[{second}]]", "score": second},
        ],
    }


def judgments(tmp_path: Path, records=None, name="m.jsonl") -> Path:
    folder = tmp_path / "judgments"
    records = records if records is not None else [judgment(f"q{i}") for i in range(3)]
    write(folder / name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return folder


def bad_games(games) -> list:
    return [judgment("q0"), {**judgment("q1"), "games": games}]


def arena(tmp_path: Path, *extra: str, records=None) -> list[str]:
    return ["arena", "--judgments", str(judgments(tmp_path, records)), "--rounds", "2", *extra]


def answers_dir(tmp_path: Path, rows_by_model: dict[str, list] | None = None) -> Path:
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    for model, rows in (rows_by_model or {}).items():
        write_jsonl(folder / f"{model}.jsonl", rows)
    return folder


def answer(qid: str, model: str, text="an answer") -> dict:
    return {"question_id": qid, "model_id": model, "choices": [{"turns": [{"content": text}]}]}


V01_CONFIG = {
    "judge_model": "judge",
    "baseline_model": "base",
    "number_of_judgment_attempts": 1,
    "regex_pattern": r"\[\[([AB<>=]+)\]\]",
    "system_prompt": "Judge fairly.",
    "prompt_template": ["Q: {question_1}\nA: {answer_1}\nB: {answer_2}"],
    "max_tokens": 16,
}


def judging_arena(
    tmp_path: Path,
    *extra: str,
    config: dict | str | None = None,
    questions=None,
    baseline=None,
    model=None,
    settings: dict | None = None,
) -> list[str]:
    """Arena judging inputs (v0.1 layout unless ``config`` says otherwise); each part replaceable."""
    config_path = tmp_path / "judge.yaml"
    write(config_path, config if isinstance(config, str) else json.dumps(config or V01_CONFIG))
    questions_path = write_jsonl(
        tmp_path / "question.jsonl",
        questions
        if questions is not None
        else [{"question_id": f"q{i}", "turns": [{"content": f"Question {i}?"}]} for i in range(2)],
    )
    baseline_path = write_jsonl(tmp_path / "baseline.jsonl", baseline or [answer(f"q{i}", "base") for i in range(2)])
    model_path = write_jsonl(tmp_path / "model.jsonl", model or [answer(f"q{i}", "ours") for i in range(2)])
    args = [
        "arena",
        "--judge-config",
        str(config_path),
        "--questions",
        str(questions_path),
        "--baseline-answers",
        str(baseline_path),
        "--outputs",
        str(model_path),
        "--judge-base-url",
        DEAD_JUDGE,
    ]
    if settings is not None:
        args += ["--judge-settings", str(write_json(tmp_path / "settings.yaml", settings))]
    return [*args, *extra]


V2_CONFIG = {
    "judge_model": "judge",
    "regex_patterns": [r"\[\[([AB<>=]+)\]\]"],
    "prompt_template": "Q: {QUESTION}\nA: {ANSWER_A}\nB: {ANSWER_B}",
}


def arena_board(tmp_path: Path, text: str) -> list[str]:
    return arena(tmp_path, "--reference-leaderboard", str(write(tmp_path / "board.csv", text)))


# ---------------------------------------------------------------------------------------------- compare inputs


def report_folder(tmp_path: Path, report: dict | str | None, name: str = "r1") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    if report is not None:
        write(folder / "report.json", report if isinstance(report, str) else json.dumps(report))
    return folder


ARENA_REPORT = {
    "benchmark": "Arena-Hard",
    "n": 3,
    "leaderboard": [
        {"model": "base", "score": 50.0, "lower": 50.0, "upper": 50.0},
        {"model": "ours", "score": 61.25, "lower": 55.5, "upper": 66.0},
    ],
}
ALPACA_REPORT = {
    "benchmark": "AlpacaEval 2",
    "model": {"name": "ours"},
    "metrics": {"win_rate": 40.0, "standard_error": 5.0, "n_total": 10},
}


def compare(tmp_path: Path, report, *extra: str) -> list[str]:
    return ["compare", str(report_folder(tmp_path, report)), *extra]


# ------------------------------------------------------------------------------------------------------- the table

CASES = {
    # AlpacaEval annotations
    "alpaca-preference-not-a-number": (
        lambda t: alpaca(t, ann=annotations(t, 1, preference="x")),
        ["ann.json: row 1", "preference"],
    ),
    "alpaca-preference-boolean": (
        lambda t: alpaca(t, ann=annotations(t, 0, preference=True)),
        ["ann.json: row 0", "preference"],
    ),
    "alpaca-preference-above-2": (
        lambda t: alpaca(t, ann=annotations(t, 2, preference=3)),
        ["ann.json: row 2", "preference"],
    ),
    "alpaca-preference-negative": (
        lambda t: alpaca(t, ann=annotations(t, 0, preference=-1)),
        ["ann.json: row 0", "preference"],
    ),
    "alpaca-preference-between-0-and-1": (
        lambda t: alpaca(t, ann=annotations(t, 1, preference=0.5)),
        ["ann.json: row 1", "preference"],
    ),
    "alpaca-preference-infinite": (
        lambda t: alpaca(
            t,
            ann=write(
                t / "ann.json", json.dumps(annotation_rows()).replace('"preference": 1}', '"preference": Infinity}')
            ),
        ),
        ["ann.json: row 2", "preference"],
    ),
    "alpaca-every-preference-null": (
        lambda t: alpaca(t, ann=write_json(t / "ann.json", annotation_rows((None, None, None)))),
        ["ann.json", "preference", "null"],
    ),
    "alpaca-output_2-null": (
        lambda t: alpaca(t, ann=annotations(t, 2, output_2=None)),
        ["ann.json: row 2", "output_2"],
    ),
    "alpaca-output_1-missing": (
        lambda t: alpaca(t, ann=annotations(t, 1, output_1=DROP)),
        ["ann.json: row 1", "output_1"],
    ),
    "alpaca-preference-missing": (
        lambda t: alpaca(t, ann=annotations(t, 0, preference=DROP)),
        ["ann.json: row 0", "preference"],
    ),
    "alpaca-instruction-not-a-string": (
        lambda t: alpaca(t, ann=annotations(t, 1, instruction=7)),
        ["ann.json: row 1", "instruction"],
    ),
    "alpaca-generator_2-not-a-string": (
        lambda t: alpaca(t, ann=annotations(t, 0, generator_2=["a"])),
        ["ann.json: row 0", "generator_2"],
    ),
    "alpaca-annotations-jsonl-bad-line": (
        lambda t: alpaca(t, ann=write(t / "ann.jsonl", json.dumps(annotation_rows()[0]) + '\n{"instruction": \n')),
        ["ann.jsonl:2", "invalid JSON"],
    ),
    "alpaca-annotations-truncated-array": (
        lambda t: alpaca(t, ann=write(t / "ann.json", json.dumps(annotation_rows())[:-20])),
        ["ann.json", "invalid JSON"],
    ),
    "alpaca-annotations-empty": (lambda t: alpaca(t, ann=write(t / "ann.json", "\n")), ["ann.json", "no records"]),
    "alpaca-annotations-a-json-object": (
        lambda t: alpaca(t, ann=write(t / "ann.json", json.dumps({"rows": annotation_rows()}, indent=2))),
        ["ann.json", "JSON array"],
    ),
    "alpaca-annotations-rows-not-objects": (
        lambda t: alpaca(t, ann=write_json(t / "ann.json", [1, 2])),
        ["ann.json: row 0", "JSON object"],
    ),
    "alpaca-annotations-missing": (lambda t: alpaca(t, ann=t / "nope.json"), ["nope.json", "no such file"]),
    "alpaca-annotations-a-directory": (
        lambda t: alpaca(t, ann=(t / "adir").mkdir() or t / "adir"),
        ["adir", "directory"],
    ),
    "alpaca-annotations-not-utf8": (
        lambda t: alpaca(t, ann=(t / "ann.json").write_bytes(b"[\xff\xfe]") and t / "ann.json"),
        ["ann.json", "UTF-8"],
    ),
    "alpaca-outputs-missing": (lambda t: alpaca(t, "--outputs", str(t / "nope.json")), ["nope.json"]),
    "alpaca-outputs-output-null": (
        lambda t: alpaca(t, "--outputs", str(outputs(t, [{"instruction": "Task 0", "output": None}]))),
        ["outputs.json: row 0", "output"],
    ),
    "alpaca-judge-prices-not-numbers": (lambda t: alpaca(t, "--judge-prices", "abc"), ["--judge-prices"]),
    "alpaca-judge-prices-negative": (lambda t: alpaca(t, "--judge-prices", "1,-2"), ["--judge-prices"]),
    "alpaca-judge-engine-unknown": (lambda t: alpaca(t, "--judge-engine", "gpt"), ["--judge-engine", "gpt"]),
    "alpaca-reference-leaderboard-columns": (
        lambda t: alpaca_board(t, "model,score\nx,1\n"),
        ["board.csv", "win_rate"],
    ),
    "alpaca-reference-leaderboard-text-number": (
        lambda t: alpaca_board(t, ",win_rate,standard_error\nx,high,1\n"),
        ["board.csv:2", "win_rate"],
    ),
    "alpaca-reference-leaderboard-missing": (
        lambda t: alpaca(t, "--reference-leaderboard", str(t / "nope.csv")),
        ["nope.csv"],
    ),
    "alpaca-lc-data-missing": (lambda t: alpaca(t, "--lc-data", str(t / "df_gamed.csv")), ["df_gamed.csv"]),
    "alpaca-lc-data-columns": (
        lambda t: alpaca(t, "--lc-data", str(write(t / "df_gamed.csv", "a,b\n1,2\n"))),
        ["df_gamed.csv", "instruction_difficulty"],
    ),
    "alpaca-output-is-a-file": (lambda t: [*alpaca(t), "-o", str(write(t / "taken", "x"))], ["-o", "taken"]),
    "alpaca-annotations-index-negative": (
        lambda t: alpaca(t, ann=annotations(t, 1, index=-1)),
        ["ann.json: row 1", "index"],
    ),
    "alpaca-annotations-order-flag-text": (
        lambda t: alpaca(t, ann=annotations(t, 0, is_switched_outputs="yes")),
        ["ann.json: row 0", "is_switched_outputs"],
    ),
    # AlpacaEval judging inputs (rejected before any judge call)
    "alpaca-eval-set-output-missing": (
        lambda t: judging_alpaca(t, eval_rows=[{"instruction": "Task 0"}]),
        ["eval.json: row 0", "output"],
    ),
    "alpaca-outputs-match-no-instruction": (
        lambda t: judging_alpaca(t, output_rows=[{"instruction": "Other", "output": "x"}]),
        ["outputs.json", "eval set"],
    ),
    "alpaca-annotator-unknown": (
        lambda t: judging_alpaca(t, "--annotator", "no_such_annotator"),
        ["--annotator", "no_such_annotator"],
    ),
    "alpaca-no-outputs-and-no-model": (
        lambda t: ["alpaca", "--eval-set", str(eval_set(t)), "--judge-base-url", DEAD_JUDGE],
        ["--outputs", "--model"],
    ),
    "alpaca-judge-without-server": (
        lambda t: [a for a in judging_alpaca(t) if a not in ("--judge-base-url", DEAD_JUDGE)],
        ["--judge-base-url"],
    ),
    "alpaca-model-server-missing": (
        lambda t: [
            "alpaca",
            "--eval-set",
            str(eval_set(t)),
            "--model",
            "served",
            "--engine",
            "openai",
            "--judge-base-url",
            DEAD_JUDGE,
        ],
        ["--base-url"],
    ),
    "alpaca-existing-report-untouched": (
        lambda t: [
            *alpaca(t, ann=annotations(t, 0, preference="x")),
            "-o",
            str(write(t / "old" / "report.json", "{}").parent),
        ],
        ["ann.json: row 0", "preference"],
    ),
    "alpaca-eval-set-bom-then-bad-row": (
        lambda t: [
            "alpaca",
            "--eval-set",
            str(write(t / "eval.json", json.dumps([{"instruction": "a", "output": 3}]), bom=True)),
            "--outputs",
            str(outputs(t)),
        ],
        ["eval.json: row 0", "output"],
    ),
    # Arena-Hard judgments
    "arena-games-not-objects": (lambda t: arena(t, records=bad_games([1, 2])), ["m.jsonl:2", "games"]),
    "arena-games-without-score": (
        lambda t: arena(t, records=bad_games([{"judgment": "x"}, {"judgment": "y"}])),
        ["m.jsonl:2", "games", "score"],
    ),
    "arena-games-three": (lambda t: arena(t, records=bad_games([{"score": "A>B"}] * 3)), ["m.jsonl:2", "games"]),
    "arena-games-a-string": (lambda t: arena(t, records=bad_games("A>B")), ["m.jsonl:2", "games"]),
    "arena-games-score-a-number": (
        lambda t: arena(t, records=bad_games([{"score": 1}, {"score": None}])),
        ["m.jsonl:2", "games", "score"],
    ),
    "arena-judgment-missing-question_id": (
        lambda t: arena(t, records=[judgment("q0"), {"model": "m", "games": []}]),
        ["m.jsonl:2", "question_id"],
    ),
    "arena-judgment-model-not-a-string": (
        lambda t: arena(t, records=[{**judgment("q0"), "model": None}]),
        ["m.jsonl:1", "model"],
    ),
    "arena-judgment-invalid-json": (
        lambda t: arena(t, records=[judgment("q0"), "{oops"]),
        ["m.jsonl:2", "invalid JSON"],
    ),
    "arena-judgments-missing": (lambda t: ["arena", "--judgments", str(t / "nope")], ["nope", "no such directory"]),
    "arena-judgments-a-file": (
        lambda t: ["arena", "--judgments", str(write(t / "j.jsonl", "{}"))],
        ["j.jsonl", "not a directory"],
    ),
    "arena-judgments-empty-folder": (
        lambda t: ["arena", "--judgments", str((t / "empty").mkdir() or t / "empty")],
        ["empty", "no judgment files"],
    ),
    "arena-judgments-no-verdict": (lambda t: arena(t, records=[judgment("q0", None, "A>>>B")]), ["judgments", "score"]),
    "arena-style-control-without-answers": (lambda t: arena(t, "--style-control"), ["--answers-dir"]),
    "arena-v01-judgments-with-judge-settings": (
        lambda t: arena(
            t,
            "--judge-settings",
            str(write_json(t / "s.yaml", {"judge_settings": {"hard": {"baseline": "b", "system_prompt": "p"}}})),
        ),
        ["--judge-settings", "v0.1"],
    ),
    "arena-rescore-settings-python-not-literal": (
        lambda t: arena(
            t,
            "--judge-config",
            str(write_json(t / "v2.yaml", V2_CONFIG)),
            "--judge-settings",
            str(write(t / "judge_utils.py", "import json\nJUDGE_SETTINGS = json.loads('{}')\n")),
        ),
        ["judge_utils.py:2", "literal"],
    ),
    "arena-v2-judgments-games-of-one": (
        lambda t: arena(t, records=[{"uid": "u0", "model": "m", "category": "c", "games": [None]}]),
        ["m.jsonl:1", "games"],
    ),
    "arena-answers-dir-missing": (lambda t: arena(t, "--answers-dir", str(t / "nope")), ["nope", "--answers-dir"]),
    "arena-answers-not-objects": (
        lambda t: arena(t, "--answers-dir", str(answers_dir(t, {"m": [1, 2]}))),
        ["m.jsonl:1", "JSON object"],
    ),
    "arena-answers-without-text": (
        lambda t: arena(
            t, "--answers-dir", str(answers_dir(t, {"m": [{"question_id": "q0", "model_id": "m", "choices": []}]}))
        ),
        ["m.jsonl:1", "answer text"],
    ),
    "arena-reference-leaderboard-columns": (
        lambda t: arena_board(t, "model,score\nx,1\n"),
        ["board.csv", "rating_q025"],
    ),
    "arena-judge-prices-not-numbers": (lambda t: arena(t, "--judge-prices", "abc"), ["--judge-prices"]),
    "arena-rounds-zero": (lambda t: [*arena(t), "--rounds", "0"], ["--rounds"]),
    # Arena-Hard judging inputs (rejected before any judge call)
    "arena-judge-config-a-directory": (
        lambda t: ["arena", "--judge-config", str((t / "cfg").mkdir() or t / "cfg")],
        ["cfg", "directory"],
    ),
    "arena-judge-config-invalid-yaml": (
        lambda t: judging_arena(t, config="judge_model: [unclosed\n"),
        ["judge.yaml", "YAML"],
    ),
    "arena-judge-config-not-a-mapping": (lambda t: judging_arena(t, config="- a\n- b\n"), ["judge.yaml", "mapping"]),
    "arena-judge-config-no-judge_model": (
        lambda t: judging_arena(t, config={k: v for k, v in V01_CONFIG.items() if k != "judge_model"}),
        ["judge.yaml", "judge_model"],
    ),
    "arena-judge-config-bad-regex": (
        lambda t: judging_arena(t, config={**V01_CONFIG, "regex_pattern": "[[("}),
        ["judge.yaml", "regex_pattern"],
    ),
    "arena-judge-config-template-placeholders": (
        lambda t: judging_arena(t, config={**V01_CONFIG, "prompt_template": ["Judge: {question_1}"]}),
        ["judge.yaml", "prompt_template", "{answer_1}"],
    ),
    "arena-judge-config-attempts-text": (
        lambda t: judging_arena(t, config={**V01_CONFIG, "number_of_judgment_attempts": "two"}),
        ["judge.yaml", "number_of_judgment_attempts"],
    ),
    "arena-v2-config-without-settings": (lambda t: judging_arena(t, config=V2_CONFIG), ["--judge-settings"]),
    "arena-v2-settings-without-system_prompt": (
        lambda t: judging_arena(t, config=V2_CONFIG, settings={"judge_settings": {"hard": {"baseline": "base"}}}),
        ["settings.yaml", "hard", "system_prompt"],
    ),
    "arena-no-outputs-and-no-model": (
        lambda t: [a for a in judging_arena(t) if not a.endswith("model.jsonl") and a != "--outputs"],
        ["--outputs", "--model"],
    ),
    "arena-baseline-answers-missing": (
        lambda t: [*judging_arena(t), "--baseline-answers", str(t / "nope.jsonl")],
        ["nope.jsonl", "no such file"],
    ),
    "arena-questions-empty": (lambda t: judging_arena(t, questions=[]), ["question.jsonl", "no records"]),
    "arena-question-without-text": (
        lambda t: judging_arena(t, questions=[{"question_id": "q0"}]),
        ["question.jsonl:1", "turns"],
    ),
    "arena-baseline-of-another-model": (
        lambda t: judging_arena(t, baseline=[answer("q0", "other")]),
        ["--baseline-answers", "base"],
    ),
    "arena-outputs-not-objects": (lambda t: judging_arena(t, model=[["q0", "text"]]), ["model.jsonl: row 0", "object"]),
    "arena-outputs-text-not-a-string": (
        lambda t: judging_arena(t, model=[answer("q0", "ours", 42)]),
        ["model.jsonl:1", "string"],
    ),
    "arena-outputs-named-like-the-baseline": (
        lambda t: judging_arena(t, model=[answer("q0", "base")]),
        ["base", "--name"],
    ),
    # options that a mode would ignore
    "alpaca-rescore-with-limit": (lambda t: alpaca(t, "--limit", "2"), ["--limit", "--annotations"]),
    "alpaca-rescore-with-eval-set-and-judge": (
        lambda t: alpaca(t, "--eval-set", str(eval_set(t)), "--judge-base-url", DEAD_JUDGE),
        ["--eval-set", "--judge-base-url", "--annotations"],
    ),
    "arena-rescore-with-model-and-limit": (
        lambda t: arena(t, "--model", "smollm2", "--limit", "1"),
        ["--model", "--limit", "--judgments"],
    ),
    "arena-rescore-with-questions": (
        lambda t: arena(t, "--questions", str(t / "q.jsonl")),
        ["--questions", "--judgments"],
    ),
    "arena-judging-with-answers-dir": (
        lambda t: [*judging_arena(t), "--answers-dir", str(answers_dir(t))],
        ["--answers-dir", "without --judgments"],
    ),
    # compare
    "compare-truncated-report": (
        lambda t: compare(t, json.dumps(ARENA_REPORT)[:40]),
        ["r1/report.json", "invalid JSON"],
    ),
    "compare-report-not-an-object": (lambda t: compare(t, "[1, 2]"), ["r1/report.json", "JSON object"]),
    "compare-no-metrics-nor-leaderboard": (
        lambda t: compare(t, {"benchmark": "AlpacaEval 2"}),
        ["r1/report.json", "metrics", "leaderboard"],
    ),
    "compare-metrics-without-win_rate": (
        lambda t: compare(t, {**ALPACA_REPORT, "metrics": {"standard_error": 1}}),
        ["r1/report.json", "win_rate"],
    ),
    "compare-metrics-not-an-object": (
        lambda t: compare(t, {**ALPACA_REPORT, "metrics": [40]}),
        ["r1/report.json", "metrics"],
    ),
    "compare-model-name-missing": (
        lambda t: compare(t, {**ALPACA_REPORT, "model": {}}),
        ["r1/report.json", "model.name"],
    ),
    "compare-leaderboard-row-without-score": (
        lambda t: compare(t, {**ARENA_REPORT, "leaderboard": [{"model": "ours", "lower": 1, "upper": 2}]}),
        ["r1/report.json", "leaderboard[0]", "score"],
    ),
    "compare-no-report-json": (lambda t: compare(t, None), ["r1", "no report.json"]),
    "compare-folder-missing": (lambda t: ["compare", str(t / "nope")], ["nope", "no such directory"]),
    "compare-reference-leaderboard-columns": (
        lambda t: compare(t, ARENA_REPORT, "--reference-leaderboard", str(write(t / "board.csv", "model,elo\nx,1\n"))),
        ["board.csv", "rating_q025"],
    ),
    "compare-output-is-a-file": (
        lambda t: compare(t, ARENA_REPORT, "-o", str(write(t / "taken", "x"))),
        ["-o", "taken"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    build, needles = CASES[case]
    args = build(tmp_path)
    if args[0] != "compare" and "-o" not in args:
        args = [*args, "-o", str(tmp_path / "report")]
    before = tree_digest(tmp_path)
    result = run_cli(*args, prog="realign-eval", env=env_for(tmp_path), timeout=120)
    assert_one_line_error(result, 2, *needles)
    assert tree_digest(tmp_path) == before, "a rejected run wrote or changed files"
    assert not (tmp_path / "report").exists() and not (tmp_path / "home").exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 35


# ------------------------------------------------------------------------------------------------- what must work


def run_ok(tmp_path: Path, *args: str):
    result = run_cli(*args, prog="realign-eval", env=env_for(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_documented_fields_only_give_a_report_with_hand_computed_numbers(tmp_path):
    ann = write_json(tmp_path / "ann.json", annotation_rows((2, 2, 1)))
    run_ok(tmp_path, "alpaca", "--annotations", str(ann), "-o", str(tmp_path / "plain"))
    report = strict_json(tmp_path / "plain" / "report.json")
    metrics = report["metrics"]
    # model better on 2 of 3: (1 + 1 + 0) / 3; standard error: sample sd of [1, 1, 0] / sqrt(3)
    assert metrics["win_rate"] == pytest.approx(66.6667, abs=1e-3)
    assert metrics["standard_error"] == pytest.approx(100 * math.sqrt(1 / 3) / math.sqrt(3), abs=1e-6)
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"], metrics["n_total"]) == (2, 1, 0, 3)
    assert metrics["discrete_win_rate"] == pytest.approx(66.6667, abs=1e-3)
    assert metrics["avg_length"] == len("model answer 0")  # every output_2 has 14 characters
    assert report["model"]["name"] == "model" and report["failures"] == 0 and report["n"] == 3
    assert "| model | 66.67 |" in (tmp_path / "plain" / "report.md").read_text()
    run_ok(tmp_path, "alpaca", "--annotations", str(ann), "--name", "ours", "-o", str(tmp_path / "named"))
    assert strict_json(tmp_path / "named" / "report.json")["model"]["name"] == "ours"


def test_some_null_preferences_are_failures_and_draws_count_half(tmp_path):
    ann = write_json(tmp_path / "ann.json", annotation_rows((2, None, 1, 1.5)))
    run_ok(tmp_path, "alpaca", "--annotations", str(ann), "-o", str(tmp_path / "r"))
    report = strict_json(tmp_path / "r" / "report.json")
    metrics = report["metrics"]
    assert report["failures"] == 1 and metrics["n_total"] == 3
    assert metrics["win_rate"] == pytest.approx(50.0)  # (1 + 0 + 0.5) / 3
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"]) == (1, 1, 1)
    assert "1 annotation(s) without a parseable preference" in (tmp_path / "r" / "report.md").read_text()


def test_bom_files_are_read(tmp_path):
    rows = [{**row, "generator_2": "bom-model"} for row in annotation_rows((2, 1.5, 1, 2))]
    ann = write_jsonl(tmp_path / "ann.jsonl", rows, bom=True)
    model_outputs = write_json(
        tmp_path / "outputs.json",
        [{"instruction": "Task 0", "output": "abcd"}, {"instruction": "Task 1", "output": "ab"}],
        bom=True,
    )
    run_ok(tmp_path, "alpaca", "--annotations", str(ann), "--outputs", str(model_outputs), "-o", str(tmp_path / "r"))
    report = strict_json(tmp_path / "r" / "report.json")
    assert report["metrics"]["win_rate"] == pytest.approx(62.5)  # (1 + 0.5 + 0 + 1) / 4
    assert report["metrics"]["avg_length"] == 3  # from --outputs: (4 + 2) / 2
    assert report["model"]["name"] == "bom-model"


def test_one_annotation_gives_null_not_nan_and_compare_reads_it(tmp_path):
    ann = write_json(tmp_path / "ann.json", annotation_rows((2,)))
    run_ok(tmp_path, "alpaca", "--annotations", str(ann), "-o", str(tmp_path / "r"))
    text = (tmp_path / "r" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    report = strict_json(tmp_path / "r" / "report.json")
    assert report["metrics"]["win_rate"] == pytest.approx(100.0) and report["metrics"]["standard_error"] is None
    result = run_ok(tmp_path, "compare", str(tmp_path / "r"))
    assert "| AlpacaEval 2 | model | 100 |  |  | 1 |" in result.stdout


def test_arena_bom_judgments_count_unparseable_games(tmp_path):
    records = [judgment("q0", "B>A", "A>B"), judgment("q1", None, "A>B"), judgment("q2", "A>B", "B>A")]
    folder = tmp_path / "judgments"
    write_jsonl(folder / "m.jsonl", records, bom=True)
    run_ok(tmp_path, "arena", "--judgments", str(folder), "--rounds", "3", "-o", str(tmp_path / "r"))
    report = strict_json(tmp_path / "r" / "report.json")
    assert report["n"] == 3 and report["failures"] == 1  # q1's first game has no verdict
    assert {row["model"] for row in report["leaderboard"]} == {"gpt-4-0314", "m"}


def test_compare_reads_hand_written_reports(tmp_path):
    arena_folder = report_folder(tmp_path, ARENA_REPORT, "arena")
    alpaca_folder = report_folder(tmp_path, ALPACA_REPORT, "alpaca")
    result = run_ok(tmp_path, "compare", str(arena_folder), str(alpaca_folder), "-o", str(tmp_path / "board"))
    # AlpacaEval: 40 -/+ 1.96 * 5; Arena rows sorted by score
    assert f"| AlpacaEval 2 | ours | 40 | 30.2 | 49.8 | 10 | {alpaca_folder} |" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("| Arena-Hard")]
    assert [line.split(" | ")[1] for line in lines] == ["ours", "base"]
    assert (tmp_path / "board" / "leaderboard.csv").read_text().splitlines()[
        0
    ] == "benchmark,model,score,lower,upper,n,source,judge"


def test_judge_retries_are_reported_and_url_credentials_dropped(tmp_path):
    eval_path = eval_set(tmp_path)
    outputs_path = outputs(tmp_path)

    def script(request, seen):  # every judge request is refused once with 429, then answered "M"
        if seen == 0:
            return Reply(status=429, headers={"Retry-After": "0"})
        return Reply(content="M")

    with ScriptedOpenAIServer(script) as server:
        url = server.url.replace("http://", "http://user:s3cret-pass@")
        run_ok(
            tmp_path,
            "alpaca",
            "--eval-set",
            str(eval_path),
            "--outputs",
            str(outputs_path),
            "--judge-base-url",
            url,
            "--judge-prices",
            "1,2",
            "--judge-mode",
            "discrete",
            "-o",
            str(tmp_path / "r"),
        )
        calls = server.calls
    report = strict_json(tmp_path / "r" / "report.json")
    usage = report["judge_usage"]
    assert calls == 6  # 3 instructions, each refused once
    assert usage["retries"] == {"RateLimitError": 3} and usage["retries_total"] == 3
    assert usage["calls"] == 3 and usage.get("failed", 0) == 0
    assert "s3cret-pass" not in (tmp_path / "r" / "report.json").read_text()
    assert report["judge"]["base_urls"] == [server.url]
    assert "3 retried (RateLimitError 3)" in (tmp_path / "r" / "report.md").read_text()


def test_arena_judge_retries_are_reported(tmp_path):
    def script(request, seen):  # a 500 first for every game, then the model (the longer answer) wins
        if seen == 0:
            return Reply(status=500)
        first = request["messages"][-1]["content"].split("\nA: ")[1].split("\nB: ")[0]
        return Reply(content="[[A>B]]" if first.startswith("the longer") else "[[B>A]]")

    model = [answer(f"q{i}", "ours", "the longer and better answer") for i in range(2)]
    with ScriptedOpenAIServer(script) as server:
        args = judging_arena(tmp_path, model=model)
        args[args.index(DEAD_JUDGE)] = server.url.replace("http://", "http://k:s3cret-pass@")
        run_ok(tmp_path, *args, "--rounds", "2", "-o", str(tmp_path / "r"))
        assert server.calls == 8  # 2 questions x 2 games, each refused once
    report = strict_json(tmp_path / "r" / "report.json")
    assert report["judge_usage"]["retries"] == {"InternalServerError": 4}
    assert report["judge_usage"]["retries_total"] == 4 and report["failures"] == 0
    assert report["judge"]["base_urls"] == [server.url]
    assert "s3cret-pass" not in (tmp_path / "r" / "report.json").read_text()
    assert "4 retried (InternalServerError 4)" in (tmp_path / "r" / "report.md").read_text()
    assert {row["model"]: row["score"] for row in report["leaderboard"]}["base"] == 50.0
