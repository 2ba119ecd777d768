"""A leaderboard across report folders, queried with DuckDB, plus published reference rows."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from realign_data.errors import InputError


def _report_rows(folder: Path) -> list[dict]:
    path = folder / "report.json"
    if not path.is_file():
        raise InputError(f"{folder}: no report.json (is this a realign-eval report folder?)")
    report = json.loads(path.read_text())
    if "leaderboard" in report:
        return [{"benchmark": report["benchmark"] + (f" {r['category']}" if r.get("category") else ""),
                 "model": r["model"], "score": r["score"], "lower": r["lower"],
                 "upper": r["upper"], "n": report["n"], "source": str(folder)} for r in report["leaderboard"]]
    metrics = report["metrics"]
    return [{"benchmark": report["benchmark"], "model": report["model"]["name"], "score": metrics["win_rate"],
             "lower": metrics["win_rate"] - 1.96 * metrics["standard_error"],
             "upper": metrics["win_rate"] + 1.96 * metrics["standard_error"], "n": metrics["n_total"],
             "source": str(folder)}]


def _published(path: Path) -> list[dict]:
    table = pd.read_csv(path)
    if "win_rate" in table.columns:  # an AlpacaEval leaderboard (first column: model)
        return [{"benchmark": "AlpacaEval 2", "model": r.iloc[0], "score": r["win_rate"],
                 "lower": r["win_rate"] - 1.96 * r["standard_error"],
                 "upper": r["win_rate"] + 1.96 * r["standard_error"], "n": r["n_total"], "source": "published"}
                for _, r in table.iterrows()]
    return [{"benchmark": "Arena-Hard", "model": r["model"], "score": r["score"], "lower": r["rating_q025"],
             "upper": r["rating_q975"], "n": None, "source": "published"} for _, r in table.iterrows()]


def leaderboard_rows(folders: list[Path], reference: Path | None) -> tuple[list[str], list[list]]:
    rows = [row for folder in folders for row in _report_rows(folder)]
    if reference is not None:
        benchmarks = {row["benchmark"] for row in rows}
        rows += [row for row in _published(reference) if row["benchmark"] in benchmarks]
    frame = pd.DataFrame(rows)  # noqa: F841 (queried by name below)
    result = duckdb.sql("SELECT benchmark, model, round(score, 2) AS score, round(lower, 2) AS lower, "
                        "round(upper, 2) AS upper, n, source FROM frame ORDER BY benchmark, score DESC")
    return result.columns, [list(row) for row in result.fetchall()]
