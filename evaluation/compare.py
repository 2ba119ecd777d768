"""A leaderboard across report folders, queried with DuckDB, plus published reference rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from evaluation.alpaca import annotator_label
from evaluation.alpaca_metrics import interval
from evaluation.records import read_table
from realign_data.errors import InputError
from realign_data.files import json_kind

ARENA_COLUMNS = ("model", "score", "rating_q025", "rating_q975")
ALPACA_COLUMNS = ("win_rate", "standard_error")


def _number(where: str, mapping: dict, field: str, optional: bool = False) -> float | None:
    value = mapping.get(field)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: field '{field}' must be a number, got {json_kind(value)}")
    return float(value)


def _mapping(where: str, mapping: dict, field: str) -> dict:
    value = mapping.get(field)
    if not isinstance(value, dict):
        raise InputError(f"{where}: field '{field}' must be an object, got {json_kind(value)}")
    return value


def _read_report(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "report.json"
    if not folder.is_dir():
        raise InputError(
            f"{folder}: "
            + ("not a directory" if folder.exists() else "no such directory")
            + " (compare takes report folders written by realign-eval alpaca or arena)"
        )
    if not path.is_file():
        raise InputError(f"{folder}: no report.json (is this a realign-eval report folder?)")
    try:
        report = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(report, dict):
        raise InputError(f"{path}: expected a JSON object, got {json_kind(report)}")
    if not isinstance(report.get("benchmark"), str):
        raise InputError(f"{path}: field 'benchmark' must be a string, got {json_kind(report.get('benchmark'))}")
    return path, report


def judge_label(report: dict[str, Any]) -> str | None:
    """The judge as reports name it: the annotator (labelled when it ran in discrete mode) or the
    judge model; older reports are labelled from their settings."""
    label = report.get("judge_label")
    if isinstance(label, str) and label:
        return label
    judge = report["judge"] if isinstance(report.get("judge"), dict) else {}
    settings = report["settings"] if isinstance(report.get("settings"), dict) else {}
    annotator = judge["annotator"] if isinstance(judge.get("annotator"), dict) else {}
    if "metrics" in report and isinstance(annotator.get("label"), str):
        return annotator["label"]
    if "metrics" in report and isinstance(settings.get("annotator"), str):
        return annotator_label(settings["annotator"], judge.get("mode"))
    return judge.get("model") if isinstance(judge.get("model"), str) else None


def _report_rows(folder: Path) -> list[dict]:
    path, report = _read_report(folder)
    judge = judge_label(report)
    if "leaderboard" in report:
        board = report["leaderboard"]
        if not isinstance(board, list) or not board:
            raise InputError(f"{path}: field 'leaderboard' must be a non-empty list, got {json_kind(board)}")
        rows = []
        for index, row in enumerate(board):
            where = f"{path}: leaderboard[{index}]"
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected an object, got {json_kind(row)}")
            if not isinstance(row.get("model"), str):
                raise InputError(f"{where}: field 'model' must be a string, got {json_kind(row.get('model'))}")
            category = row.get("category")
            rows.append(
                {
                    "benchmark": report["benchmark"] + (f" {category}" if category else ""),
                    "model": row["model"],
                    "score": _number(where, row, "score"),
                    "lower": _number(where, row, "lower", optional=True),
                    "upper": _number(where, row, "upper", optional=True),
                    "n": _number(str(path), report, "n", optional=True),
                    "source": str(folder),
                    "judge": judge,
                }
            )
        return rows
    if "metrics" not in report:
        raise InputError(f"{path}: neither field 'leaderboard' (Arena-Hard) nor field 'metrics' (AlpacaEval)")
    metrics = _mapping(str(path), report, "metrics")
    where = f"{path}: metrics"
    score = _number(where, metrics, "win_rate")
    assert score is not None  # not optional: _number raises InputError rather than return None
    error = _number(where, metrics, "standard_error", optional=True)
    model = _mapping(str(path), report, "model")
    if not isinstance(model.get("name"), str):
        raise InputError(f"{path}: field 'model.name' must be a string, got {json_kind(model.get('name'))}")
    lower, upper = interval(score, error)
    return [
        {
            "benchmark": report["benchmark"],
            "model": model["name"],
            "score": score,
            "lower": lower,
            "upper": upper,
            "n": _number(where, metrics, "n_total", optional=True),
            "source": str(folder),
            "judge": judge,
        }
    ]


def _published(path: Path) -> list[dict]:
    header = read_table(path, "--reference-leaderboard", ())
    if "win_rate" in header.columns:  # an AlpacaEval leaderboard (first column: model)
        table = read_table(
            path,
            "--reference-leaderboard (an AlpacaEval leaderboard CSV)",
            ALPACA_COLUMNS,
            ALPACA_COLUMNS + (("n_total",) if "n_total" in header.columns else ()),
        )
        return [
            {
                "benchmark": "AlpacaEval 2",
                "model": str(r.iloc[0]),
                "score": r["win_rate"],
                **dict(zip(("lower", "upper"), interval(r["win_rate"], r["standard_error"]), strict=True)),
                "n": r.get("n_total"),
                "source": "published",
                "judge": None,
            }
            for _, r in table.dropna(subset=list(ALPACA_COLUMNS)).iterrows()
        ]
    table = read_table(
        path, "--reference-leaderboard (an Arena-Hard or AlpacaEval leaderboard CSV)", ARENA_COLUMNS, ARENA_COLUMNS[1:]
    )
    return [
        {
            "benchmark": "Arena-Hard",
            "model": str(r["model"]),
            "score": r["score"],
            "lower": r["rating_q025"],
            "upper": r["rating_q975"],
            "n": None,
            "source": "published",
            "judge": None,
        }
        for _, r in table.dropna(subset=list(ARENA_COLUMNS)).iterrows()
    ]


def leaderboard_rows(folders: list[Path], reference: Path | None) -> tuple[list[str], list[list]]:
    rows = [row for folder in folders for row in _report_rows(folder)]
    if reference is not None:
        benchmarks = {row["benchmark"] for row in rows}
        rows += [row for row in _published(reference) if row["benchmark"] in benchmarks]
    frame = pd.DataFrame(rows).astype(  # noqa: F841 - the SQL below reads the frame by its name
        {
            "score": float,
            "lower": float,
            "upper": float,
            "n": float,
            "judge": object,
        }
    )
    result = duckdb.sql(
        "SELECT benchmark, model, round(score, 2) AS score, round(lower, 2) AS lower, "
        "round(upper, 2) AS upper, CAST(n AS BIGINT) AS n, source, judge FROM frame "
        "ORDER BY benchmark, score DESC"
    )
    assert result is not None  # a SELECT always gives a relation (None is for statements without a result)
    return result.columns, [
        [None if isinstance(v, float) and not math.isfinite(v) else v for v in row] for row in result.fetchall()
    ]
