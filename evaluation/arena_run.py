"""`realign-eval arena`: answers -> pairwise judgments -> Bradley-Terry leaderboard -> report folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.arena import answers_by_question, first_turn, judge_pairs, load_judge_config
from evaluation.arena_scoring import battles_from_judgments, leaderboard, read_judgments
from evaluation.judging import read_jsonl
from evaluation.official import arena_file
from evaluation.report import file_sha256, plot_length_vs_preference, plot_scores, write_report

WIN = {"A>>B": 0.0, "A>B": 0.25, "A=B": 0.5, "B>A": 0.75, "B>>A": 1.0}


def run_arena(output: Path, judgments: Path | None, judge_config: Path | None, questions: Path | None,
              baseline_answers: Path | None, outputs: Path | None, limit: int | None, name: str | None,
              baseline: str, rounds: int, reference_leaderboard: Path | None, make_answers, make_judge) \
        -> dict[str, Any]:
    settings: dict[str, Any] = {"baseline": baseline, "bootstrap_rounds": rounds, "limit": limit}
    judge_info, usage, answer_settings, lengths = None, None, None, None
    if judgments is not None:
        records = read_judgments(judgments)
        settings["judgments"] = {"path": str(judgments), "files": sorted(p.name for p in judgments.glob("*.jsonl"))}
    else:
        config_path = arena_file("judge_config", judge_config, "--judge-config")
        config = load_judge_config(config_path)
        baseline = config.get("baseline_model", baseline)
        question_path = arena_file("questions", questions, "--questions")
        items = read_jsonl(question_path)[:limit]
        reference = answers_by_question(arena_file("baseline_answers", baseline_answers, "--baseline-answers"))
        if outputs is not None:
            answers = answers_by_question(outputs)
            name = name or read_jsonl(outputs)[0].get("model_id", "model")
        else:
            answers, answer_settings = make_answers({q["question_id"]: first_turn(q, str(question_path))
                                                     for q in items})
            name = name or answer_settings["model"]
        judge, judge_info = make_judge(config)
        records = judge_pairs(config, items, reference, answers, name, judge)
        usage = judge.usage()
        settings.update({"judge_config": {"path": str(config_path), "sha256": file_sha256(config_path)},
                         "questions": {"path": str(question_path), "sha256": file_sha256(question_path),
                                       "n": len(items)}})
        folder = output / "judgments"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name.replace('/', '__')}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (output / "answers.jsonl").write_text("".join(json.dumps({"question_id": q, "model_id": name, "choices": [
            {"index": 0, "turns": [{"content": a}]}]}) + "\n" for q, a in answers.items()))
        lengths = [(len(answers[r["question_id"]]), WIN.get(g["score"])) for r in records for i, g in
                   enumerate(r["games"][:1])]
    battles = battles_from_judgments(records, baseline)
    board = leaderboard(battles, baseline, rounds)
    failures = sum(g["score"] not in WIN for r in records for g in r["games"])
    output.mkdir(parents=True, exist_ok=True)
    rows = [{"label": r["model"], "score": r["score"], "lower": r["lower"], "upper": r["upper"], "ours": True}
            for r in board]
    if reference_leaderboard is not None:
        published = pd.read_csv(reference_leaderboard).head(15)
        rows += [{"label": r.model, "score": r.score, "lower": r.rating_q025, "upper": r.rating_q975}
                 for r in published.itertuples()]
    plot_scores(rows, f"Arena-Hard score vs {baseline} (%) with 95% CI", output / "score_ci.png")
    notes = [f"{failures} game(s) without a parseable verdict were not counted"]
    if lengths:
        plot_length_vs_preference([n for n, _ in lengths], [w if w is not None else float("nan") for _, w in lengths],
                                  "model win (game 1)", output / "length_vs_preference.png")
    return write_report(output, "Arena-Hard v0.1", {
        "model": {"name": name, **(answer_settings or {})}, "leaderboard": board, "n": len(records),
        "failures": failures, "settings": settings, "judge": judge_info, "judge_usage": usage},
        (["model", "score", "lower", "upper"], [[r["model"], r["score"], r["lower"], r["upper"]] for r in board]),
        notes)
