"""Arena-Hard scoring from pairwise judgments, as each version's official ``show_result.py`` does it.

Each question is judged twice with the answers' positions swapped: game 1 shows the baseline as assistant A and the
model as B, game 2 the other way round.

v0.1 (lm-sys/arena-hard-auto @ efc012e): a verdict counts once, a strong one (``>>``) three times, a tie as half a
win for each side, an unparseable verdict not at all. Ratings come from a Bradley-Terry fit (logistic regression
without intercept, Elo scale 400) and are reported as the model's predicted win rate against the baseline, in
percent. The interval is the 2.5/97.5 percentile over bootstrap resamples of the pooled battles (numpy seed 42,
100 rounds). Style control adds the centred, normalized differences (baseline - model) / (baseline + model + 1) of
answer length in tokens and of the header, list and bold counts as regressors, fitted with scikit-learn's default
L2 penalty (C = 1) as upstream's ``fit_bt`` does; ties are kept as one win and one loss in every bootstrap sample.

v2.0 (lmarena/arena-hard-auto): per question category, against that category's baseline. A question is dropped
when either of its games is null or unparseable; otherwise its battle scores are the model's share of each game
(``label_to_score``: 1, 0.5 or 0, strong verdicts three times). The score is the mean of 100 bootstrap means, each
resampling every model's battle scores separately, and the interval the 5/95 percentiles. Style control fits a
Bradley-Terry model (torch L-BFGS, no penalty) on the battle scores with the normalized differences of length
(model - baseline) / (model + baseline) and of markdown density (count / (tokens + 1)) as regressors; score and
interval are the median and 5/95 percentiles of 100 bootstrap fits.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.records import read_located, require
from realign_data.errors import InputError
from realign_data.files import json_kind

V01, V2 = "v0.1", "v2.0"
STRONG_WEIGHT = 3
SCALE, BASE, ANCHOR = 400.0, 10.0, 1000.0
DEGENERATE_GAP = 10 * SCALE
# v0.1: verdict label -> (winner when the model under test is assistant B, count)
GAME_ONE = {
    "A>>B": ("baseline", STRONG_WEIGHT),
    "A>B": ("baseline", 1),
    "A=B": ("tie", 1),
    "B>A": ("model", 1),
    "B>>A": ("model", STRONG_WEIGHT),
}
SWAP = {"baseline": "model", "model": "baseline", "tie": "tie"}
# v2.0: verdict label -> score of assistant A (upstream's label_to_score); strong labels count three times
A_SCORE = {
    "A>B": 1.0,
    "A>>B": 1.0,
    "A=B": 0.5,
    "A<<B": 0.0,
    "A<B": 0.0,
    "B>A": 0.0,
    "B>>A": 0.0,
    "B=A": 0.5,
    "B<<A": 1.0,
    "B<A": 1.0,
}
STRONG = {"A>>B", "A<<B", "B>>A", "B<<A"}
LABELS = {V01: set(GAME_ONE), V2: set(A_SCORE)}
# the position a label favours: the answer shown first (A), second (B), or neither
POSITION = {
    V01: {"A>>B": "first", "A>B": "first", "A=B": "tie", "B>A": "second", "B>>A": "second"},
    V2: {label: {1.0: "first", 0.0: "second", 0.5: "tie"}[score] for label, score in A_SCORE.items()},
}
DEGENERATE_SHARE = 0.9


def question_id(record: dict) -> str:
    return str(record["question_id"] if "question_id" in record else record["uid"])


def _check_games(where: str, record: dict) -> None:
    """``games``: the two games, each null (v2.0: not judged) or an object whose ``score`` is a label or null."""
    games = record["games"]
    if not isinstance(games, list) or len(games) != 2:
        raise InputError(
            f"{where}: field 'games' must hold the two games (positions swapped), got "
            f"{json_kind(games)}" + (f" of {len(games)}" if isinstance(games, list) else "")
        )
    for index, game in enumerate(games):
        if game is None:
            continue
        if not isinstance(game, dict):
            raise InputError(
                f"{where}: field 'games' [{index}] must be an object with a 'score' (or null), got {json_kind(game)}"
            )
        if "score" not in game:
            raise InputError(
                f"{where}: field 'games' [{index}] has no 'score' (the verdict label, e.g. \"A>B\", or null)"
            )
        if game["score"] is not None and not isinstance(game["score"], str):
            raise InputError(
                f"{where}: field 'games' [{index}] 'score' must be a verdict label or null, got "
                f"{json_kind(game['score'])}"
            )


def read_judgments(directory: Path) -> list[dict]:
    """Every ``*.jsonl`` judgment file of a directory (v0.1 or v2.0 layout), files in name order."""
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
        if "question_id" not in record and "uid" not in record:
            raise InputError(f"{where}: missing field 'question_id' (or 'uid', as v2.0 writes it)")
        require(where, record, ("model", "games"))
        field = "question_id" if "question_id" in record else "uid"
        qid = record[field]
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise InputError(f"{where}: field '{field}' must be a string or integer, got {json_kind(qid)}")
        if not isinstance(record["model"], str) or not record["model"]:
            raise InputError(f"{where}: field 'model' must be a model name (string), got {json_kind(record['model'])}")
        for name in ("baseline", "category", "judge"):
            if record.get(name) is not None and not isinstance(record[name], str):
                raise InputError(f"{where}: field '{name}' must be a string, got {json_kind(record[name])}")
    for where, record in located:
        _check_games(where, record)
    return [record for _, record in located]


def labels(record: dict) -> tuple[str | None, str | None]:
    """The two games' verdict labels (None for a null game or score)."""
    # records come from read_judgments (or the judge), which hold exactly two games
    first, second = (game.get("score") if isinstance(game, dict) else None for game in record["games"])
    return first, second


def has_verdict(records: list[dict], version: str) -> bool:
    return any(label in LABELS[version] for record in records for label in labels(record))


def failed_games(records: list[dict], version: str) -> int:
    return sum(label not in LABELS[version] for record in records for label in labels(record))


# ---------------------------------------------------------------------------------------------------------- v0.1


def battles_from_judgments(records: list[dict], baseline: str) -> pd.DataFrame:
    """v0.1: one row per counted outcome: model_a is the baseline, model_b the judged model, winner in a/b/tie."""
    rows = []
    for record in records:
        for game_index, label in enumerate(labels(record)):
            outcome = GAME_ONE.get(label) if label is not None else None
            if outcome is None:  # unparseable verdict: not counted
                continue
            side, count = outcome
            side = SWAP[side] if game_index == 1 else side  # game two puts the model in position A
            winner = {"baseline": "model_a", "model": "model_b", "tie": "tie"}[side]
            rows += [
                {
                    "question_id": question_id(record),
                    "model_a": record.get("baseline") or baseline,
                    "model_b": record["model"],
                    "winner": winner,
                    "category": record.get("category"),
                }
            ] * count
    if not rows:
        raise InputError("no parseable verdicts in the judgments")
    return pd.DataFrame(rows)


def _normalized(matrix: np.ndarray, ddof: int, notes: set[str]) -> np.ndarray:
    """Columns centred and divided by their standard deviation; a column that does not vary is left at zero."""
    spread = matrix.std(axis=0, ddof=ddof) if len(matrix) > ddof else np.zeros(matrix.shape[1])
    if (spread == 0).any():
        notes.add(
            "style control: a style feature that does not vary across the battles is left out (upstream "
            "divides by its zero spread and stops)"
        )
    return np.divide(matrix - matrix.mean(axis=0), spread, out=np.zeros_like(matrix), where=spread > 0)


def style_matrix(battles: pd.DataFrame, styles: dict[str, dict[str, np.ndarray]], notes: set[str]) -> np.ndarray:
    """v0.1, per battle: (baseline - model) / (baseline + model + 1) for tokens, headers, list items and bold,
    centred and divided by the standard deviation (upstream's ``construct_style_matrices``)."""
    baseline = _style_rows(battles, styles, "model_a")
    model = _style_rows(battles, styles, "model_b")
    return _normalized((baseline - model) / (baseline + model + 1), 0, notes)


def _style_rows(
    battles: pd.DataFrame, styles: dict[str, dict[str, np.ndarray]], column: str, names: str | None = None
) -> np.ndarray:
    rows = []
    for model, qid in zip(battles[names or column], battles["question_id"], strict=True):
        try:
            rows.append(styles[model][qid])
        except KeyError:
            raise InputError(
                f"style control needs every answer: no answer of {model!r} to question {qid!r} (--answers-dir)"
            ) from None
    return np.array(rows, dtype=float).reshape(len(rows), 4)


def _design(battles: pd.DataFrame, models: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's doubled battles: X with +log(10) for model_a and -log(10) for model_b; a tie is an A win in the
    first copy and a B win in the second."""
    doubled = pd.concat([battles, battles], ignore_index=True)
    rows = np.arange(len(doubled))
    features = np.zeros((len(doubled), len(models)))
    features[rows, models[doubled["model_a"]].to_numpy()] = math.log(BASE)
    features[rows, models[doubled["model_b"]].to_numpy()] = -math.log(BASE)
    target = (doubled["winner"] == "model_a").to_numpy().astype(float)
    is_tie = (doubled["winner"] == "tie").to_numpy().copy()
    is_tie[len(is_tie) // 2 :] = False
    target[is_tie] = 1.0
    return features, target


def _ratings(features: np.ndarray, target: np.ndarray, models: pd.Series, baseline: str, penalized: bool) -> pd.Series:
    """Elo-scale ratings from the fit, baseline anchored at 1000 (style coefficients left out)."""
    from sklearn.linear_model import LogisticRegression

    if np.unique(target).size < 2:  # one side won every battle: no finite maximum; use odds of 10^10 to 1
        ratings = np.full(len(models), ANCHOR + (-DEGENERATE_GAP if target[0] == 1.0 else DEGENERATE_GAP))
        ratings[models[baseline]] = ANCHOR
        return pd.Series(ratings, index=models.index)
    if penalized:  # upstream's fit_bt: scikit-learn's defaults (L2, C = 1)
        fit = LogisticRegression(fit_intercept=False).fit(features, target)
    else:  # upstream's compute_mle_elo: unpenalized
        fit = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8).fit(features, target)
    ratings = SCALE * fit.coef_[0][: len(models)] + ANCHOR
    ratings += ANCHOR - ratings[models[baseline]]
    return pd.Series(ratings, index=models.index)


def _models(battles: pd.DataFrame) -> pd.Series:
    names = pd.unique(battles[["model_a", "model_b"]].to_numpy().ravel("F"))
    return pd.Series(range(len(names)), index=names)


def bradley_terry(battles: pd.DataFrame, baseline: str, style: np.ndarray | None = None) -> pd.Series:
    """Elo-scale Bradley-Terry ratings (ties as half a win), baseline anchored at 1000; with ``style``, the
    style-controlled fit (L2-penalized, as upstream)."""
    models = _models(battles)
    features, target = _design(battles, models)
    if style is not None:
        features = np.hstack([features, np.vstack([style, style])])
    return _ratings(features, target, models, baseline, penalized=style is not None)


def win_rate_vs(rating: float, baseline_rating: float) -> float:
    """Predicted win rate (percent) of a rating against the baseline's."""
    return 100.0 / (1.0 + BASE ** ((baseline_rating - rating) / SCALE))


def _style_samples(
    battles: pd.DataFrame, baseline: str, style: np.ndarray, rounds: int, generator: np.random.RandomState
) -> list[pd.Series]:
    """Upstream's get_bootstrap_result_style_control: resample battles; a sampled tie keeps its win and its loss."""
    models = _models(battles)
    features, target = _design(battles, models)
    features = np.hstack([features, np.vstack([style, style])])
    count = len(battles)
    is_tie = (battles["winner"] == "tie").to_numpy()
    samples = []
    for _ in range(rounds):
        picked = generator.choice(count, count)
        plain, ties = picked[~is_tie[picked]], picked[is_tie[picked]]
        rows = np.concatenate([plain, plain, ties, ties + count])
        samples.append(_ratings(features[rows], target[rows], models, baseline, penalized=True))
    return samples


def leaderboard(
    battles: pd.DataFrame, baseline: str, rounds: int = 100, seed: int = 42, style: np.ndarray | None = None
) -> list[dict]:
    """v0.1 scores and bootstrap CIs as win rates against the baseline, sorted by model name."""
    ratings = bradley_terry(battles, baseline, style)
    generator = np.random.RandomState(seed)
    if style is None:
        samples = []
        for _ in range(rounds):
            picked = generator.choice(len(battles), len(battles))
            samples.append(bradley_terry(battles.iloc[picked], baseline))
    else:
        samples = _style_samples(battles, baseline, style, rounds, generator)
    samples = pd.DataFrame(samples)
    board = []
    for model in sorted(ratings.index):
        lower, upper = np.percentile(samples[model], [2.5, 97.5])
        board.append(
            {
                "model": model,
                "score": round(win_rate_vs(ratings[model], ratings[baseline]), 2),
                "lower": round(win_rate_vs(lower, np.percentile(samples[baseline], 2.5)), 2),
                "upper": round(win_rate_vs(upper, np.percentile(samples[baseline], 97.5)), 2),
            }
        )
    return board


# ---------------------------------------------------------------------------------------------------------- v2.0


def v2_battles(records: list[dict], baseline_of) -> tuple[pd.DataFrame, int, Counter]:
    """v2.0 battle scores (the model's share per counted game), questions with a null game dropped.

    Returns the battles (question_id, model, name, category, baseline, score), the number of questions dropped
    for a null game, and the labels outside upstream's table (those questions are dropped too)."""
    unknown: Counter[str] = Counter()
    rows, dropped = [], 0
    for record in records:
        first, second = labels(record)
        if first is None or second is None:
            dropped += 1
            continue
        if first not in A_SCORE or second not in A_SCORE:
            unknown.update(label for label in (first, second) if label not in A_SCORE)
            continue
        scores = [A_SCORE[second]] * (STRONG_WEIGHT if second in STRONG else 1) + [1.0 - A_SCORE[first]] * (
            STRONG_WEIGHT if first in STRONG else 1
        )  # game 2 shows the model as A
        category = record.get("category")
        common = {
            "question_id": question_id(record),
            "model": record["model"].split("/")[-1],
            "name": record["model"],
            "category": category,
            "baseline": baseline_of(record),
        }
        rows += [{**common, "score": score} for score in scores]
    columns = ["question_id", "model", "name", "category", "baseline", "score"]
    return pd.DataFrame(rows, columns=columns), dropped, unknown


def v2_leaderboard(battles: pd.DataFrame, baseline: str, rounds: int = 100, seed: int = 42) -> list[dict]:
    """Mean of the per-model bootstrap means of the battle scores, 5/95 percentiles; the baseline at 50."""
    generator = np.random.RandomState(seed)
    board = []
    for model, group in sorted(battles.groupby("model"), key=lambda item: item[0]):
        scores = group["score"].to_numpy(dtype=float)
        means = np.array([scores[generator.randint(0, len(scores), len(scores))].mean() for _ in range(rounds)])
        board.append(
            {
                "model": model,
                "score": round(100 * means.mean(), 2),
                "lower": round(100 * np.percentile(means, 5), 2),
                "upper": round(100 * np.percentile(means, 95), 2),
                "n_battles": len(scores),
            }
        )
    if baseline not in {row["model"] for row in board}:
        board.append({"model": baseline, "score": 50.0, "lower": 50.0, "upper": 50.0, "n_battles": 0})
    return sorted(board, key=lambda row: row["model"])


def v2_style_features(battles: pd.DataFrame, styles: dict[str, dict[str, np.ndarray]], notes: set[str]) -> np.ndarray:
    """Per battle: (model - baseline) / (model + baseline) of tokens, and of each markdown density
    (count / (tokens + 1)) (m - b) / (m + b + 1); centred and divided by the (sample) standard deviation."""
    model = _style_rows(battles, styles, "model", names="name")
    base = _style_rows(battles, styles, "baseline")
    features = np.zeros_like(model)
    total = model[:, 0] + base[:, 0]
    if (total == 0).any():
        notes.add(
            "style control: a battle where both answers have no tokens gets a length difference of 0 "
            "(upstream divides by zero and stops)"
        )
    features[:, 0] = np.divide(model[:, 0] - base[:, 0], total, out=np.zeros_like(total), where=total > 0)
    model_density = model[:, 1:] / (model[:, :1] + 1)
    base_density = base[:, 1:] / (base[:, :1] + 1)
    features[:, 1:] = (model_density - base_density) / (model_density + base_density + 1)
    return _normalized(features, 1, notes)


def _fit_bt_torch(features, outcomes):
    """Upstream's fit_pairwise_model ("bt"): coefficients from 0.5, L-BFGS on the summed logistic loss."""
    import torch
    import torch.nn.functional as functional

    logits = torch.nn.Parameter(torch.full((features.shape[1],), 0.5))
    optimizer = torch.optim.LBFGS([logits], lr=0.1, max_iter=50, tolerance_grad=1e-9, tolerance_change=1e-9)

    def closure():
        optimizer.zero_grad()
        loss = functional.binary_cross_entropy_with_logits(features @ logits, outcomes, reduction="sum")
        loss.backward()
        return loss

    optimizer.step(closure)
    return logits.detach()


def v2_style_leaderboard(
    battles: pd.DataFrame, baseline: str, style: np.ndarray, rounds: int = 100, seed: int = 42
) -> list[dict]:
    """Median and 5/95 percentiles over bootstrap Bradley-Terry fits of the win probability against the baseline."""
    import torch

    models = sorted(set(battles["model"]) | {baseline})
    column = {model: index for index, model in enumerate(models)}
    one_hot = np.zeros((len(battles), len(models)), dtype=np.float32)
    one_hot[np.arange(len(battles)), battles["model"].map(column).to_numpy()] = 1
    one_hot[:, column[baseline]] = -1
    features = torch.tensor(np.hstack([one_hot, style.astype(np.float32)]))
    outcomes = torch.tensor(battles["score"].to_numpy(dtype=np.float32))
    picks = np.random.RandomState(seed).randint(0, len(battles), size=(rounds, len(battles)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small fits: one thread is several times faster than contending ones
    try:
        coefs = torch.stack(
            [_fit_bt_torch(features[torch.from_numpy(p)], outcomes[torch.from_numpy(p)]) for p in picks]
        )[:, : len(models)]
    finally:
        torch.set_num_threads(threads)
    probs = torch.sigmoid(coefs - coefs[:, column[baseline] : column[baseline] + 1]).double().numpy()
    board = []
    for model in models:
        values = probs[:, column[model]]
        board.append(
            {
                "model": model,
                "score": round(100 * float(np.percentile(values, 50)), 2),
                "lower": round(100 * float(np.percentile(values, 5)), 2),
                "upper": round(100 * float(np.percentile(values, 95)), 2),
                "n_battles": int((battles["model"] == model).sum()),
            }
        )
    return board


# ------------------------------------------------------------------------------------------------- position bias


def position_bias(records: list[dict], version: str) -> dict:
    """Share of verdicts for the answer shown first (A) or second (B), and how often a question's two games
    (positions swapped) name the same winner; ``degenerate`` when one position takes over 90% of the verdicts."""
    table = POSITION[version]
    counts: Counter = Counter()
    pairs = agree = 0
    for record in records:
        first, second = (table.get(label) if label is not None else None for label in labels(record))
        counts.update(position for position in (first, second) if position is not None)
        if first is not None and second is not None:
            pairs += 1
            # game 1 shows the model second, game 2 first: the same winner means opposite positions (or two ties)
            agree += (first, second) in (("first", "second"), ("second", "first"), ("tie", "tie"))
    total = sum(counts.values())
    share = {key: (counts[key] / total if total else None) for key in ("first", "second", "tie")}
    degenerate = total > 0 and max(counts["first"], counts["second"]) / total > DEGENERATE_SHARE  # = max of shares
    return {
        "known": total > 0,
        "n_verdicts": total,
        "first": share["first"],
        "second": share["second"],
        "tie": share["tie"],
        "n_questions_both_games": pairs,
        "agreement": agree / pairs if pairs else None,
        "degenerate": bool(degenerate),
    }
