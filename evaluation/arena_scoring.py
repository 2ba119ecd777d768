"""Arena-Hard v0.1 scoring: pairwise verdicts against a baseline -> Bradley-Terry scores with bootstrap CIs.

Each question is judged twice with the answers' positions swapped. A verdict for the model counts once, a strong
one (``>>``) three times, a tie as half a win for each side, an unparseable verdict not at all. Ratings come from
a Bradley-Terry fit (logistic regression without intercept, Elo scale 400, baseline anchored at 1000) and are
reported as the model's predicted win rate against the baseline, in percent. The confidence interval is the
2.5/97.5 percentile over bootstrap resamples of the pooled battles (numpy seed 42, 100 rounds).

Style control adds, per battle, the normalized differences of answer length and markdown use (headers, list
items, bold) as extra regressors; the ratings then measure preference with those style effects held out.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.records import json_kind, read_located, require
from realign_data.errors import InputError

STRONG_WEIGHT = 3
SCALE, BASE, ANCHOR = 400.0, 10.0, 1000.0
DEGENERATE_GAP = 10 * SCALE
# verdict label -> (winner when the model under test is assistant B, count)
GAME_ONE = {"A>>B": ("baseline", STRONG_WEIGHT), "A>B": ("baseline", 1), "A=B": ("tie", 1),
            "B>A": ("model", 1), "B>>A": ("model", STRONG_WEIGHT)}
SWAP = {"baseline": "model", "model": "baseline", "tie": "tie"}


def _check_games(where: str, record: dict) -> None:
    """``games``: the two games, each an object whose ``score`` is a verdict label or null (unparseable)."""
    games = record["games"]
    if not isinstance(games, list) or len(games) != 2:
        raise InputError(f"{where}: field 'games' must hold the two games (positions swapped), got "
                         f"{json_kind(games)}" + (f" of {len(games)}" if isinstance(games, list) else ""))
    for index, game in enumerate(games):
        if not isinstance(game, dict):
            raise InputError(f"{where}: field 'games' [{index}] must be an object with a 'score', got "
                             f"{json_kind(game)}")
        if "score" not in game:
            raise InputError(f"{where}: field 'games' [{index}] has no 'score' (the verdict label, e.g. \"A>B\", "
                             "or null)")
        if game["score"] is not None and not isinstance(game["score"], str):
            raise InputError(f"{where}: field 'games' [{index}] 'score' must be a verdict label or null, got "
                             f"{json_kind(game['score'])}")


def read_judgments(directory: Path) -> list[dict]:
    """Every ``*.jsonl`` judgment file of a directory (official layout), files in name order."""
    if not directory.exists():
        raise InputError(f"{directory}: no such directory (--judgments takes a folder of *.jsonl judgment files)")
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory (--judgments takes a folder of *.jsonl judgment files)")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise InputError(f"{directory}: no judgment files (*.jsonl)")
    located = [item for file in files for item in read_located(file)]
    if not located:
        raise InputError(f"{directory}: the judgment files hold no records")
    for where, record in located:  # every record's fields first, then the games' contents
        require(where, record, ("question_id", "model", "games"))
        qid = record["question_id"]
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise InputError(f"{where}: field 'question_id' must be a string or integer, got {json_kind(qid)}")
        if not isinstance(record["model"], str) or not record["model"]:
            raise InputError(f"{where}: field 'model' must be a model name (string), got "
                             f"{json_kind(record['model'])}")
        for field in ("baseline", "category"):
            if record.get(field) is not None and not isinstance(record[field], str):
                raise InputError(f"{where}: field '{field}' must be a string, got {json_kind(record[field])}")
    for where, record in located:
        _check_games(where, record)
    return [record for _, record in located]


def battles_from_judgments(records: list[dict], baseline: str) -> pd.DataFrame:
    """One row per counted outcome: model_a is the baseline, model_b the judged model, winner in a/b/tie."""
    rows = []
    for record in records:
        for game_index, game in enumerate(record["games"]):
            outcome = GAME_ONE.get(game.get("score"))
            if outcome is None:  # unparseable verdict: not counted
                continue
            side, count = outcome
            side = SWAP[side] if game_index == 1 else side  # game two puts the model in position A
            winner = {"baseline": "model_a", "model": "model_b", "tie": "tie"}[side]
            rows += [{"question_id": str(record["question_id"]), "model_a": record.get("baseline") or baseline,
                      "model_b": record["model"], "winner": winner, "category": record.get("category")}] * count
    if not rows:
        raise InputError("no parseable verdicts in the judgments")
    return pd.DataFrame(rows)


STYLE_PATTERNS = {"length": None, "headers": re.compile(r"^#{1,6} ", re.M),
                  "list_items": re.compile(r"^\s*(?:[-*+]|\d+\.) ", re.M), "bold": re.compile(r"\*\*[^*\n]+\*\*")}


def style_counts(text: str) -> np.ndarray:
    return np.array([len(text) if pattern is None else len(pattern.findall(text))
                     for pattern in STYLE_PATTERNS.values()], dtype=float)


def style_matrix(battles: pd.DataFrame, answers: dict[str, dict[str, str]]) -> np.ndarray:
    """Per battle, (baseline - model) / (baseline + model) for each style feature, scaled to unit spread.

    Not centred: zero means "both answers have the same style", so the ratings are what the judge would give at
    equal style. (Centring would hand a model's average style advantage back to its rating.)"""
    rows = []
    for battle in battles.itertuples():
        try:
            a = style_counts(answers[battle.model_a][battle.question_id])
            b = style_counts(answers[battle.model_b][battle.question_id])
        except KeyError as exc:
            raise InputError(f"style control needs every answer; missing {exc} for question "
                             f"{battle.question_id!r}") from None
        total = a + b
        rows.append(np.divide(a - b, total, out=np.zeros_like(total), where=total > 0))
    matrix = np.array(rows)
    spread = matrix.std(axis=0)
    return matrix / np.where(spread > 0, spread, 1.0)


def bradley_terry(battles: pd.DataFrame, baseline: str, style: np.ndarray | None = None) -> pd.Series:
    """Elo-scale Bradley-Terry ratings (maximum likelihood, ties as half a win), baseline anchored at 1000."""
    from sklearn.linear_model import LogisticRegression

    names = pd.unique(battles[["model_a", "model_b"]].to_numpy().ravel("F"))
    models = pd.Series(range(len(names)), index=names)
    doubled = pd.concat([battles, battles], ignore_index=True)
    rows = np.arange(len(doubled))
    features = np.zeros((len(doubled), len(models)))
    features[rows, models[doubled["model_a"]].to_numpy()] = math.log(BASE)
    features[rows, models[doubled["model_b"]].to_numpy()] = -math.log(BASE)
    if style is not None:
        features = np.hstack([features, np.vstack([style, style])])
    target = (doubled["winner"] == "model_a").to_numpy().astype(float)
    is_tie = (doubled["winner"] == "tie").to_numpy().copy()
    is_tie[len(is_tie) // 2:] = False  # a tie is an A win in the first copy and a B win in the second
    target[is_tie] = 1.0
    if np.unique(target).size < 2:  # one side won every battle: no finite maximum; use odds of 10^10 to 1
        ratings = np.full(len(models), ANCHOR + (-DEGENERATE_GAP if target[0] == 1.0 else DEGENERATE_GAP))
        ratings[models[baseline]] = ANCHOR
        return pd.Series(ratings, index=models.index)
    fit = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8).fit(features, target)  # unpenalized
    ratings = SCALE * fit.coef_[0][:len(models)] + ANCHOR  # style coefficients, if any, are left out
    ratings += ANCHOR - ratings[models[baseline]]
    return pd.Series(ratings, index=models.index)


def win_rate_vs(rating: float, baseline_rating: float) -> float:
    """Predicted win rate (percent) of a rating against the baseline's."""
    return 100.0 / (1.0 + BASE ** ((baseline_rating - rating) / SCALE))


def leaderboard(battles: pd.DataFrame, baseline: str, rounds: int = 100, seed: int = 42,
                style: np.ndarray | None = None) -> list[dict]:
    """Scores and bootstrap CIs as win rates against the baseline, sorted by model name."""
    ratings = bradley_terry(battles, baseline, style)
    generator = np.random.RandomState(seed)
    samples = []
    for _ in range(rounds):
        picked = generator.choice(len(battles), len(battles))
        samples.append(bradley_terry(battles.iloc[picked], baseline, None if style is None else style[picked]))
    samples = pd.DataFrame(samples)
    board = []
    for model in sorted(ratings.index):
        lower, upper = np.percentile(samples[model], [2.5, 97.5])
        board.append({"model": model,
                      "score": round(win_rate_vs(ratings[model], ratings[baseline]), 2),
                      "lower": round(win_rate_vs(lower, np.percentile(samples[baseline], 2.5)), 2),
                      "upper": round(win_rate_vs(upper, np.percentile(samples[baseline], 97.5)), 2)})
    return board
