"""`realign-eval arena`: answers -> pairwise judgments -> each version's official scores -> report folder.

The scoring method follows the judge config's layout: lm-sys v0.1 (``judge_config.yaml``) is scored as its
``show_result.py`` does (Bradley-Terry, pooled bootstrap), lmarena's (``arena-hard-v2.0.yaml``) as lmarena's
``show_result.py`` does (per category, bootstrap means). Rescored judgments without a config follow their layout
(``uid`` records are lmarena's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.arena import (
    _yaml,
    continuation_message,
    judge_pairs,
    load_judge_config,
    question_fields,
    read_answers,
)
from evaluation.arena_scoring import (
    A_SCORE,
    LABELS,
    V01,
    V2,
    battles_from_judgments,
    failed_games,
    has_verdict,
    leaderboard,
    position_bias,
    read_judgments,
    style_matrix,
    v2_battles,
    v2_leaderboard,
    v2_style_features,
    v2_style_leaderboard,
)
from evaluation.arena_settings import read_judge_settings
from evaluation.arena_style import read_answer_styles, text_style, token_lengths
from evaluation.config import ArenaEvalConfig
from evaluation.official import arena_file
from evaluation.records import read_located_records, read_table
from evaluation.report import (
    check_output,
    file_sha256,
    plot_length_vs_preference,
    plot_scores,
    position_lines,
    usage_note,
    write_report,
)
from realign_data.config import config_to_dict
from realign_data.errors import InputError, RealignError
from realign_data.files import json_text

LEADERBOARD_COLUMNS = ("model", "score", "rating_q025", "rating_q975")
# the model's share of a game-1 verdict (the model is B), for the length plot; v0.1 and v2.0 spellings
WIN = {label: 1.0 - score for label, score in A_SCORE.items()} | {"A>B": 0.25, "B>A": 0.75, "A<B": 0.75, "B<A": 0.25}
METHODS = {
    V01: "lm-sys/arena-hard-auto@efc012e show_result.py: Bradley-Terry, pooled bootstrap, 2.5/97.5 percentiles",
    V2: "lmarena/arena-hard-auto show_result.py: per category, mean of per-model bootstrap means of the "
    "battle scores, 5/95 percentiles",
}
V2_SEEDED = (
    "bootstrap seeded (numpy seed 42) so that a report can be reproduced; upstream's v2.0 bootstrap is "
    "unseeded, so its own numbers move from run to run by the bootstrap noise"
)


def jsonl(records: list[dict]) -> str:
    """Strict JSON lines: non-finite numbers as null, never NaN."""
    return "".join(json_text(record) + "\n" for record in records)


def config_version(path: Path) -> str:
    """v0.1 for lm-sys's judge_config.yaml layout (prompt_template a list), v2.0 for lmarena's."""
    return V01 if isinstance(_yaml(path, "judge config").get("prompt_template"), list) else V2


def judgments_version(records: list[dict]) -> str:
    return V2 if any("uid" in record and "question_id" not in record for record in records) else V01


def baselines_for(version: str, settings: dict | None, settings_path: Path | None, default: str):
    """The baseline of a judgment record: its category's in the judge settings, else the record's own."""

    def baseline_of(record: dict) -> str:
        if version == V2 and settings is not None:
            category = record.get("category")
            if category not in settings:
                raise InputError(
                    f"{settings_path}: no judge setting for category {category!r} of the judgments "
                    f"(settings for {', '.join(settings)})"
                )
            return settings[category]["baseline"]
        return record.get("baseline") or default

    return baseline_of


def _style_table(styles: dict[str, dict], version: str, notes: set[str]) -> dict[str, dict[str, np.ndarray]]:
    tokens, note = token_lengths(styles, version)
    if note:
        notes.add(note)
    return {
        model: {
            qid: np.array([tokens[model][qid], style.headers, style.lists, style.bold], dtype=float)
            for qid, style in answers.items()
        }
        for model, answers in styles.items()
    }


def score_judgments(
    records: list[dict],
    version: str,
    baseline: str,
    rounds: int,
    baseline_of,
    styles: dict[str, dict] | None,
    notes: set[str],
) -> tuple[list[dict], dict[str, Any]]:
    """The leaderboard rows, and what was left out (dropped questions, labels outside the table)."""
    table = _style_table(styles, version, notes) if styles is not None else None
    if version == V01:
        battles = battles_from_judgments(records, baseline)
        groups = list(battles.groupby(["category", "model_a"], dropna=False, sort=True))
        board = []
        for (category, group_baseline), group in groups:
            group = group.reset_index(drop=True)
            style = style_matrix(group, table, notes) if table is not None else None
            for row in leaderboard(group, group_baseline, rounds, style=style):
                board.append({**row, "category": category} if len(groups) > 1 else row)
            if set(group["winner"]) in ({"model_a"}, {"model_b"}):
                notes.add(
                    "one side won every counted battle: the ratings are set at odds of 10^10 to 1 (upstream's "
                    "unpenalized fit has no finite optimum there)"
                )
        return board, {}
    battles, dropped, unknown = v2_battles(records, baseline_of)
    if battles.empty:
        raise InputError("no question has two parseable games (v2.0 drops a question when either game is null)")
    if unknown:
        notes.add(
            f"{sum(unknown.values())} verdict label(s) outside upstream's table ("
            + ", ".join(f"{label!r} x{count}" for label, count in unknown.most_common(5))
            + "): their questions are dropped, where upstream's show_result.py stops with a KeyError"
        )
    notes.add(V2_SEEDED)
    board = []
    for (category, group_baseline), group in battles.groupby(["category", "baseline"], dropna=False, sort=True):
        group = group.reset_index(drop=True)
        if table is not None:
            rows = v2_style_leaderboard(group, group_baseline, v2_style_features(group, table, notes), rounds)
        else:
            rows = v2_leaderboard(group, group_baseline, rounds)
        board += [{"category": None if category != category else category, **row} for row in rows]
    return board, {"questions_dropped_null_game": dropped, "unknown_labels": dict(unknown)}


def _answer_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(
            f"{folder}: "
            + ("not a directory" if folder.exists() else "no such directory")
            + " (--answers-dir takes a folder of *.jsonl answer files)"
        )
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise InputError(f"{folder}: no answer files (*.jsonl) (--answers-dir)")
    return files


def run_arena(config: ArenaEvalConfig) -> dict[str, Any]:
    """Evaluate as ``config`` says and write the report folder; report.json stores the effective config."""
    config.refuse_unused()
    output = config.report_folder()
    bench = config.benchmark
    judgments, judge_config, judge_settings = bench.judgments, bench.judge_config, bench.judge_settings
    questions, baseline_answers, answers_dir = bench.questions, bench.baseline_answers, bench.answers_dir
    limit, baseline, rounds, style_control = bench.limit, bench.baseline, bench.rounds, bench.style_control
    reference_leaderboard, judge_code = bench.reference_leaderboard, bench.judge_code
    outputs, name = config.answers.outputs, config.answers.name
    check_output(output)
    published = (
        read_table(
            reference_leaderboard,
            "--reference-leaderboard (an Arena-Hard leaderboard CSV)",
            LEADERBOARD_COLUMNS,
            LEADERBOARD_COLUMNS[1:],
        )
        if reference_leaderboard is not None
        else None
    )
    settings: dict[str, Any] = {
        "baseline": baseline,
        "bootstrap_rounds": rounds,
        "limit": limit,
        "style_control": style_control,
    }
    judge_info, usage, answer_settings, lengths = None, None, None, []
    all_answers: dict[str, dict[str, str]] = {}
    styles: dict[str, dict] = {}
    deviations: set[str] = set()
    if judgments is not None:
        records = read_judgments(judgments)
        version = config_version(judge_config) if judge_config is not None else judgments_version(records)
        judge_set = read_judge_settings(judge_settings) if judge_settings is not None else None
        if judge_set is not None and version == V01:
            raise InputError(
                f"--judge-settings {judge_settings}: not used to score v0.1 judgments (their baseline "
                "is --baseline); pass an lmarena config (e.g. arena-hard-v2.0.yaml) with --judge-config"
            )
        baseline_of = baselines_for(version, judge_set, judge_settings, baseline)
        settings["judgments"] = {
            "path": str(judgments),
            "files": sorted(p.name for p in judgments.glob("*.jsonl")),
            "judges": sorted({r["judge"] for r in records if r.get("judge")}),
        }
        settings.update(
            {
                "judge_config": {"path": str(judge_config), "sha256": file_sha256(judge_config)}
                if judge_config
                else None,
                "judge_settings": {"path": str(judge_settings), "sha256": file_sha256(judge_settings)}
                if judge_settings
                else None,
            }
        )
        if style_control and answers_dir is None:
            raise InputError("--style-control with --judgments needs --answers-dir DIR (every model's answers)")
        if answers_dir is not None:
            styles = dict(read_answer_styles(path, version) for path in _answer_files(answers_dir))
        if not has_verdict(records, version):
            raise InputError(
                f"{judgments}: no game has a verdict in field 'score' (one of {', '.join(sorted(LABELS[version]))})"
            )
    else:
        config_path = arena_file("judge_config", judge_config, "--judge-config")
        spec = load_judge_config(config_path, judge_settings)
        version = config_version(config_path)
        if judge_code is not None and not (spec.version == V01 and spec.attempts > 1):
            raise InputError(
                f"--judge-code {judge_code}: not used ({config_path} asks the judge once per game; "
                "only v0.1's number_of_judgment_attempts > 1 continues a judgment)"
            )
        baseline_of = baselines_for(version, None, None, baseline)  # judged records carry their baseline
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
            raise InputError(
                f"--baseline-answers: no answer of the baseline model(s) "
                f"{', '.join(sorted(set(wanted.values())))} to any question of {question_path} (the "
                f"files hold {', '.join(sorted(all_answers)) or 'none'})"
            )
        if outputs is not None:
            model_name, answers = read_answers(outputs)
            name = name or model_name
            if not any(qid in answers and qid in all_answers.get(model, {}) for qid, model in wanted.items()):
                raise InputError(
                    f"{outputs}: none of its answers is to a question of {question_path} that has a baseline answer"
                )
            if name in all_answers:
                raise InputError(f"the model under test is named {name!r}, like a baseline; pass --name NAME")
        config.check_servers()  # the judge's (and the model's) servers are named: the inputs are read and valid
        continuation, code_path = None, None
        if spec.version == V01 and spec.attempts > 1:  # upstream's continuation message, from its gen_judgment.py
            code_path = arena_file("judge_code", judge_code, "--judge-code")
            continuation = continuation_message(code_path)
        if outputs is None:
            prompts = dict(question_fields(record, where)[:2] for where, record in located)
            answers, answer_settings = config.answers.generate(prompts)
            name = name or answer_settings["model"]
        assert name is not None  # --name, the answer file's model, or the generating model's spec
        if name in all_answers:
            raise InputError(f"the model under test is named {name!r}, like a baseline; pass --name NAME")
        all_answers[name] = answers
        judge, judge_info = config.judge.create(spec.judge_model)
        records = judge_pairs(spec, items, all_answers, answers, name, judge, continuation)
        usage = judge.usage()
        settings["judge_request"] = {
            "temperature": spec.temperature,
            "max_tokens": spec.max_tokens,
            "top_p": 1.0,
            "attempts": spec.attempts,
            "continuation": continuation,
            "judge_code": {"path": str(code_path), "sha256": file_sha256(code_path)} if code_path else None,
        }
        settings.update(
            {
                "bench": spec.bench,
                "judge_config": {"path": str(config_path), "sha256": file_sha256(config_path)},
                "judge_settings": {"path": str(judge_settings), "sha256": file_sha256(judge_settings)}
                if judge_settings
                else None,
                "questions": {"path": str(question_path), "sha256": file_sha256(question_path), "n": len(items)},
            }
        )
        folder = output / "judgments"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name.replace('/', '__')}.jsonl").write_text(jsonl(records))
        if version == V01:
            answer_records = [
                {"question_id": q, "model_id": name, "choices": [{"index": 0, "turns": [{"content": a}]}]}
                for q, a in answers.items()
            ]
        else:  # lmarena's layout: the question, then the answer under content.answer
            texts = dict(question_fields(record, where)[:2] for where, record in located)
            answer_records = [
                {
                    "uid": q,
                    "model": name,
                    "messages": [
                        {"role": "user", "content": texts.get(q, "")},
                        {"role": "assistant", "content": {"answer": a}},
                    ],
                }
                for q, a in answers.items()
            ]
        (output / "answers.jsonl").write_text(jsonl(answer_records))
        lengths = [
            (len(answers[str(r.get("question_id", r.get("uid")))]), WIN.get((r["games"][0] or {}).get("score") or ""))
            for r in records
        ]
        if not has_verdict(records, version):
            raise RealignError(
                f"the judge gave no parseable verdict in any of the {2 * len(records)} game(s) "
                f"(judgments saved in {folder})"
            )
        if style_control:  # the answer files' own style metadata where they have it
            for path in baseline_answers or [arena_file("baseline_answers", None, "--baseline-answers")]:
                model_name, baseline_styles = read_answer_styles(path, version)
                styles[model_name] = baseline_styles
            styles[name] = {qid: text_style(text) for qid, text in answers.items()}
    board, left_out = score_judgments(
        records, version, baseline, rounds, baseline_of, styles if style_control else None, deviations
    )
    failures = failed_games(records, version)
    bias = position_bias(records, version)
    output.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "label": f"{r['model']} ({r['category']})" if "category" in r else r["model"],
            "score": r["score"],
            "lower": r["lower"],
            "upper": r["upper"],
            "ours": True,
        }
        for r in board
    ]
    if published is not None:
        rows += [
            {
                "label": str(r.model),
                "score": float(r.score),
                "lower": float(r.rating_q025),
                "upper": float(r.rating_q975),
            }
            for r in published.dropna(subset=list(LEADERBOARD_COLUMNS)).head(15).itertuples()
        ]
    plot_scores(rows, "Arena-Hard score vs baseline (%) with 95% CI", output / "score_ci.png")
    judge_label = (judge_info or {}).get("model") or ", ".join(settings.get("judgments", {}).get("judges", [])) or None
    notes = [f"scoring: {version} method ({METHODS[version]})"] + ([f"judge: {judge_label}"] if judge_label else [])
    notes.append(f"{failures} game(s) without a parseable verdict were not counted")
    if version == V2 and left_out.get("questions_dropped_null_game"):
        notes.append(
            f"{left_out['questions_dropped_null_game']} question(s) dropped because one of their games is "
            "null or unparseable (as upstream)"
        )
    if usage is not None:
        notes.append(usage_note(usage))
    if style_control:
        notes.append(
            "style control: answer length in tokens and markdown (headers, lists, bold) held out, "
            + (
                "as counts relative to the pair, L2-penalized fit (v0.1)"
                if version == V01
                else "markdown as density per token, unpenalized fit, median of the bootstrap (v2.0)"
            )
        )
    notes += position_lines(bias)
    notes += [f"deviation from upstream: {text}" for text in sorted(deviations)]
    if lengths:
        plot_length_vs_preference(
            [n for n, _ in lengths],
            [w if w is not None else float("nan") for _, w in lengths],
            "model's share of the verdict (game 1)",
            output / "length_vs_preference.png",
        )
    columns = ["model", *(["category"] if board and "category" in board[0] else []), "score", "lower", "upper"]
    return write_report(
        output,
        "Arena-Hard",
        {
            "model": {"name": name, **(answer_settings or {})},
            "leaderboard": board,
            "n": len(records),
            "failures": failures,
            "left_out": left_out,
            "method": {"version": version, "description": METHODS[version]},
            "position_bias": bias,
            "deviations": sorted(deviations),
            "judge_label": judge_label,
            "settings": settings,
            "judge": judge_info,
            "judge_usage": usage,
            "config": config_to_dict(config),
        },
        (columns, [[r.get(c) for c in columns] for r in board]),
        notes,
    )
