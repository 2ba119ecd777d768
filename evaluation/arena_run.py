"""`realign-eval arena`: answers -> pairwise judgments -> Bradley-Terry leaderboards -> report folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.arena import judge_pairs, load_judge_config, question_fields, read_answers
from evaluation.arena_scoring import battles_from_judgments, leaderboard, read_judgments, style_matrix
from evaluation.official import arena_file
from evaluation.records import read_located_records, read_table
from evaluation.report import (
    check_output,
    file_sha256,
    plot_length_vs_preference,
    plot_scores,
    usage_note,
    write_report,
)
from realign_data.errors import InputError, RealignError

LEADERBOARD_COLUMNS = ("model", "score", "rating_q025", "rating_q975")
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


def _answer_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: " + ("not a directory" if folder.exists() else "no such directory")
                         + " (--answers-dir takes a folder of *.jsonl answer files)")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise InputError(f"{folder}: no answer files (*.jsonl) (--answers-dir)")
    return files


def run_arena(output: Path, judgments: Path | None, judge_config: Path | None, judge_settings: Path | None,
              questions: Path | None, baseline_answers: list[Path] | None, answers_dir: Path | None,
              outputs: Path | None, limit: int | None, name: str | None, baseline: str, rounds: int,
              style_control: bool, reference_leaderboard: Path | None, make_answers, make_judge,
              check_servers=lambda: None) -> dict[str, Any]:
    check_output(output)
    published = read_table(reference_leaderboard, "--reference-leaderboard (an Arena-Hard leaderboard CSV)",
                           LEADERBOARD_COLUMNS, LEADERBOARD_COLUMNS[1:]) if reference_leaderboard is not None else None
    settings: dict[str, Any] = {"baseline": baseline, "bootstrap_rounds": rounds, "limit": limit,
                                "style_control": style_control}
    judge_info, usage, answer_settings, lengths = None, None, None, []
    all_answers: dict[str, dict[str, str]] = {}
    if judgments is not None:
        records = read_judgments(judgments)
        settings["judgments"] = {"path": str(judgments), "files": sorted(p.name for p in judgments.glob("*.jsonl"))}
        if style_control and answers_dir is None:
            raise InputError("--style-control with --judgments needs --answers-dir DIR (every model's answers)")
        if answers_dir is not None:
            all_answers = dict(read_answers(path) for path in _answer_files(answers_dir))
        if not any(game["score"] in WIN for record in records for game in record["games"]):
            raise InputError(f"{judgments}: no game has a verdict in field 'score' (one of {', '.join(WIN)})")
    else:
        config_path = arena_file("judge_config", judge_config, "--judge-config")
        spec = load_judge_config(config_path, judge_settings)
        question_path = arena_file("questions", questions, "--questions")
        located = read_located_records(question_path)[:limit]
        items = [record for _, record in located]
        wanted = {}  # question id -> baseline model
        for where, record in located:
            qid, _, category = question_fields(record, where)
            try:
                wanted[qid] = spec.setting(category)["baseline"]
            except InputError as exc:
                raise InputError(f"{where}: {exc} (in {judge_settings or config_path})") from None
        for path in baseline_answers or [arena_file("baseline_answers", None, "--baseline-answers")]:
            model_name, answers = read_answers(path)
            all_answers[model_name] = answers
        if not any(qid in all_answers.get(model, {}) for qid, model in wanted.items()):
            raise InputError(f"--baseline-answers: no answer of the baseline model(s) "
                             f"{', '.join(sorted(set(wanted.values())))} to any question of {question_path} (the "
                             f"files hold {', '.join(sorted(all_answers)) or 'none'})")
        if outputs is not None:
            model_name, answers = read_answers(outputs)
            name = name or model_name
            if not any(qid in answers and qid in all_answers.get(model, {}) for qid, model in wanted.items()):
                raise InputError(f"{outputs}: none of its answers is to a question of {question_path} that has a "
                                 "baseline answer")
            if name in all_answers:
                raise InputError(f"the model under test is named {name!r}, like a baseline; pass --name NAME")
        check_servers()  # the judge's (and the model's) servers are named: the inputs are read and valid
        if outputs is None:
            prompts = dict(question_fields(record, where)[:2] for where, record in located)
            answers, answer_settings = make_answers(prompts)
            name = name or answer_settings["model"]
        if name in all_answers:
            raise InputError(f"the model under test is named {name!r}, like a baseline; pass --name NAME")
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
        if not any(game["score"] in WIN for record in records for game in record["games"]):
            raise RealignError(f"the judge gave no parseable verdict in any of the {2 * len(records)} game(s) "
                               f"(judgments saved in {folder})")
    board = score_by_category(records, baseline, rounds, all_answers if style_control else None)
    failures = sum(g["score"] not in WIN for r in records for g in r["games"])
    output.mkdir(parents=True, exist_ok=True)
    rows = [{"label": f"{r['model']} ({r['category']})" if "category" in r else r["model"], "score": r["score"],
             "lower": r["lower"], "upper": r["upper"], "ours": True} for r in board]
    if published is not None:
        rows += [{"label": str(r.model), "score": float(r.score), "lower": float(r.rating_q025),
                  "upper": float(r.rating_q975)}
                 for r in published.dropna(subset=list(LEADERBOARD_COLUMNS)).head(15).itertuples()]
    plot_scores(rows, "Arena-Hard score vs baseline (%) with 95% CI", output / "score_ci.png")
    notes = [f"{failures} game(s) without a parseable verdict were not counted"]
    if usage is not None:
        notes.append(usage_note(usage))
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
