"""`realign-eval arena`: answers -> pairwise judgments -> Bradley-Terry leaderboards -> report folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.arena import judge_pairs, load_judge_config, question_fields, read_answers
from evaluation.arena_scoring import battles_from_judgments, leaderboard, read_judgments, style_matrix
from evaluation.official import arena_file
from evaluation.records import read_records
from evaluation.report import file_sha256, plot_length_vs_preference, plot_scores, write_report

WIN = {"A>>B": 0.0, "A>B": 0.25, "A=B": 0.5, "B>A": 0.75, "B>>A": 1.0}  # model's share, game 1 (model is B)


def score_by_category(records: list[dict], baseline: str, rounds: int, answers: dict[str, dict[str, str]] | None) \
        -> list[dict]:
    """One leaderboard per (category, baseline); rows carry their category when there are several."""
    battles = battles_from_judgments(records, baseline)
    groups = list(battles.groupby(["category", "model_a"], dropna=False, sort=True))
    board = []
    for (category, group_baseline), group in groups:
        group = group.reset_index(drop=True)
        style = style_matrix(group, answers) if answers is not None else None
        for row in leaderboard(group, group_baseline, rounds, style=style):
            board.append({**row, "category": category} if len(groups) > 1 else row)
    return board


def run_arena(output: Path, judgments: Path | None, judge_config: Path | None, judge_settings: Path | None,
              questions: Path | None, baseline_answers: list[Path] | None, answers_dir: Path | None,
              outputs: Path | None, limit: int | None, name: str | None, baseline: str, rounds: int,
              style_control: bool, reference_leaderboard: Path | None, make_answers, make_judge) -> dict[str, Any]:
    settings: dict[str, Any] = {"baseline": baseline, "bootstrap_rounds": rounds, "limit": limit,
                                "style_control": style_control}
    judge_info, usage, answer_settings, lengths = None, None, None, []
    all_answers: dict[str, dict[str, str]] = {}
    if judgments is not None:
        records = read_judgments(judgments)
        settings["judgments"] = {"path": str(judgments), "files": sorted(p.name for p in judgments.glob("*.jsonl"))}
        if answers_dir is not None:
            all_answers = dict(read_answers(path) for path in sorted(answers_dir.glob("*.jsonl")))
    else:
        config_path = arena_file("judge_config", judge_config, "--judge-config")
        spec = load_judge_config(config_path, judge_settings)
        question_path = arena_file("questions", questions, "--questions")
        items = read_records(question_path)[:limit]
        for path in baseline_answers or [arena_file("baseline_answers", None, "--baseline-answers")]:
            model_name, answers = read_answers(path)
            all_answers[model_name] = answers
        if outputs is not None:
            model_name, answers = read_answers(outputs)
            name = name or model_name
        else:
            prompts = dict(question_fields(q, str(question_path))[:2] for q in items)
            answers, answer_settings = make_answers(prompts)
            name = name or answer_settings["model"]
        all_answers[name] = answers
        judge, judge_info = make_judge(spec)
        records = judge_pairs(spec, items, all_answers, answers, name, judge)
        usage = judge.usage()
        settings.update({"bench": spec.bench, "judge_config": {"path": str(config_path),
                                                               "sha256": file_sha256(config_path)},
                         "judge_settings": {"path": str(judge_settings), "sha256": file_sha256(judge_settings)}
                         if judge_settings else None,
                         "questions": {"path": str(question_path), "sha256": file_sha256(question_path),
                                       "n": len(items)}})
        folder = output / "judgments"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name.replace('/', '__')}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (output / "answers.jsonl").write_text("".join(json.dumps({"question_id": q, "model_id": name, "choices": [
            {"index": 0, "turns": [{"content": a}]}]}) + "\n" for q, a in answers.items()))
        lengths = [(len(answers[r["question_id"]]), WIN.get(r["games"][0]["score"])) for r in records]
    board = score_by_category(records, baseline, rounds, all_answers if style_control else None)
    failures = sum(g["score"] not in WIN for r in records for g in r["games"])
    output.mkdir(parents=True, exist_ok=True)
    rows = [{"label": f"{r['model']} ({r['category']})" if "category" in r else r["model"], "score": r["score"],
             "lower": r["lower"], "upper": r["upper"], "ours": True} for r in board]
    if reference_leaderboard is not None:
        published = pd.read_csv(reference_leaderboard).head(15)
        rows += [{"label": r.model, "score": r.score, "lower": r.rating_q025, "upper": r.rating_q975}
                 for r in published.itertuples()]
    plot_scores(rows, "Arena-Hard score vs baseline (%) with 95% CI", output / "score_ci.png")
    notes = [f"{failures} game(s) without a parseable verdict were not counted"]
    if style_control:
        notes.append("style control: answer length and markdown (headers, lists, bold) held out")
    if lengths:
        plot_length_vs_preference([n for n, _ in lengths], [w if w is not None else float("nan") for _, w in lengths],
                                  "model's share of the verdict (game 1)", output / "length_vs_preference.png")
    columns = ["model", *(["category"] if board and "category" in board[0] else []), "score", "lower", "upper"]
    return write_report(output, "Arena-Hard", {
        "model": {"name": name, **(answer_settings or {})}, "leaderboard": board, "n": len(records),
        "failures": failures, "settings": settings, "judge": judge_info, "judge_usage": usage},
        (columns, [[r.get(c) for c in columns] for r in board]), notes)
