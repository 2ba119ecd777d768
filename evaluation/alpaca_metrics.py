"""AlpacaEval 2 metrics from annotations, computed by the alpaca_eval library itself.

``preference`` is 1 (reference wins) .. 2 (model wins), 0 or 1.5 a draw. The length-controlled win rate needs
``df_gamed.csv`` (instruction difficulties and the gamed baselines) from the Hub dataset tatsu-lab/alpaca_eval;
without it the report says so instead of inventing a number.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.records import read_located_records, read_records, read_table
from realign_data.errors import InputError
from realign_data.files import json_kind, json_safe
from realign_data.official import hub_unreachable

ANNOTATION_FIELDS = ("instruction", "output_1", "output_2", "preference")
LC_FILE = "df_gamed.csv"
LC_COLUMNS = ("model", "index", "instruction_difficulty")
SWITCH_FIELDS = ("is_switched_outputs", "is_switch_output_1_output_2")  # alpaca_eval's order flag (and old name)
DEGENERATE_SHARE = 0.9


def interval(score: float, error: float | None) -> tuple[float | None, float | None]:
    """The normal 95% interval of a win rate (score -+ 1.96 standard errors); unknown bounds without an error."""
    if error is None:
        return None, None
    return score - 1.96 * error, score + 1.96 * error


def import_alpaca_eval():
    """alpaca_eval 0.6.6 imports pkg_resources (setuptools < 81): import it once, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            import alpaca_eval.metrics
        except ModuleNotFoundError as exc:
            raise InputError(
                f"alpaca_eval cannot be imported ({exc}); it needs setuptools<81 (pip install 'setuptools<81')"
            ) from None
    return alpaca_eval


def read_frame(path: Path, fields: tuple[str, ...], strings: tuple[str, ...] = ()) -> pd.DataFrame:
    """A JSON array (or JSONL) of objects with ``fields`` as a DataFrame; errors name the file, row and field."""
    return pd.DataFrame(read_records(path, fields, strings))


def preference_value(where: str, value: Any) -> float | None:
    """A row's preference as a float (None when missing); anything else is an error naming the row."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(
            f"{where}: field 'preference' must be a number (1 = reference better .. 2 = model better, "
            f"0 or 1.5 a draw) or null, got {json_kind(value)} {value!r}"
        )
    if not (value == 0 or 1 <= value <= 2):
        raise InputError(
            f"{where}: field 'preference' {value!r} is out of range (1 = reference better .. "
            "2 = model better, 0 or 1.5 a draw)"
        )
    return float(value)


def read_annotations(path: Path) -> pd.DataFrame:
    """alpaca_eval annotations: instruction, output_1, output_2 (strings) and preference (number or null) per row.

    Rows whose preference is null are kept (they count as failures); a file where every preference is null is an
    error. generator_1 and generator_2 are optional."""
    located = read_located_records(path, ANNOTATION_FIELDS, ANNOTATION_FIELDS[:3])
    records = []
    for where, record in located:
        for field in ("generator_1", "generator_2"):
            if record.get(field) is not None and not isinstance(record[field], str):
                raise InputError(f"{where}: field '{field}' must be a string, got {json_kind(record[field])}")
        index = record.get("index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise InputError(
                f"{where}: field 'index' (the row's place in the AlpacaEval set) must be a "
                f"non-negative integer, got {json_kind(index)} {index!r}"
            )
        for field in SWITCH_FIELDS:
            if record.get(field) is not None and not isinstance(record[field], bool):
                raise InputError(
                    f"{where}: field '{field}' must be true, false or null, got {json_kind(record[field])}"
                )
        records.append({**record, "preference": preference_value(where, record["preference"])})
    if all(record["preference"] is None for record in records):
        raise InputError(f"{path}: field 'preference' is null in all {len(records)} row(s); nothing to score")
    frame = pd.DataFrame(records)
    frame["preference"] = frame["preference"].astype(float)
    return frame


def read_outputs(path: Path) -> pd.DataFrame:
    """Model outputs (or an eval set): instruction and output strings per row; generator optional."""
    return read_frame(path, ("instruction", "output"), ("instruction", "output"))


def model_name(frame: pd.DataFrame, column: str) -> str | None:
    """The first non-empty string of ``column``, when the frame has it."""
    if column not in frame:
        return None
    names = [value for value in frame[column] if isinstance(value, str) and value]
    return names[0] if names else None


def _lc_unavailable(reason: str) -> dict[str, Any]:
    return {"length_controlled_winrate": None, "lc_standard_error": None, "lc_unavailable": reason}


@contextmanager
def _local_lc_file(path: Path):
    """Point alpaca_eval's download of df_gamed.csv at a local copy."""
    import alpaca_eval.metrics.glm_winrate as glm

    original = glm.hf_hub_download
    glm.hf_hub_download = lambda *args, **kwargs: str(path)
    try:
        yield
    finally:
        glm.hf_hub_download = original


def find_lc_data(lc_data: Path | None) -> tuple[Path | None, str]:
    """The df_gamed.csv to use: the given file, else the Hugging Face cache, else the Hub when it can be reached;
    with a one-line reason when there is none (no retries against an unreachable Hub)."""
    if lc_data is not None:
        read_table(lc_data, f"--lc-data (tatsu-lab/alpaca_eval's {LC_FILE})", LC_COLUMNS, ("index",))
        return lc_data, ""
    from huggingface_hub import hf_hub_download

    advice = f"pass --lc-data FILE (tatsu-lab/alpaca_eval's {LC_FILE}) to compute the length-controlled win rate"
    try:
        return Path(hf_hub_download("tatsu-lab/alpaca_eval", LC_FILE, repo_type="dataset", local_files_only=True)), ""
    except Exception:
        pass
    reason = hub_unreachable()
    if reason is not None:
        return None, (
            f"{LC_FILE} of the Hub dataset tatsu-lab/alpaca_eval is not in the Hugging Face cache and the "
            f"Hub cannot be reached ({reason}); {advice}"
        )
    try:
        return Path(hf_hub_download("tatsu-lab/alpaca_eval", LC_FILE, repo_type="dataset")), ""
    except Exception as exc:  # gated, missing, or the connection failed
        return None, (
            f"{LC_FILE} from the Hub dataset tatsu-lab/alpaca_eval is not available ({type(exc).__name__}); {advice}"
        )


@contextmanager
def _quiet_info():
    """alpaca_eval logs an INFO line each time it drops unparseable rows; the report counts them instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _single(frame: pd.DataFrame, column: str, default: str) -> pd.Series:
    """alpaca_eval's LC fit wants one generator name per side: the file's, when it has exactly one."""
    names = frame[column].dropna().unique() if column in frame else []
    return pd.Series(names[0] if len(names) == 1 else default, index=frame.index)


def compute_metrics(
    annotations: pd.DataFrame, model_outputs: pd.DataFrame | None, lc_path: Path | None, lc_reason: str, name: str
) -> dict[str, Any]:
    """win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total, discrete_win_rate, avg_length, and LC.

    ``annotations`` holds every row, those without a preference (NaN) too, as alpaca_eval's ``evaluate`` passes
    them: ``get_winrate`` leaves the NaN rows out itself, and ``get_length_controlled_winrate`` fits on the scored
    rows but predicts (and averages) over all of them. The LC fit looks up each instruction's difficulty by the
    frame's row label (its ``index`` column when it has one): the row's place in the AlpacaEval set. Values that
    are not finite (the standard error of a single row, say) are None."""
    alpaca_eval = import_alpaca_eval()
    with _quiet_info():
        metrics = json_safe(dict(alpaca_eval.metrics.get_winrate(annotations)))
    outputs = model_outputs["output"] if model_outputs is not None else annotations["output_2"]
    metrics["avg_length"] = int(outputs.str.len().mean())  # as the leaderboard computes it
    if lc_path is None:
        return {**metrics, **_lc_unavailable(lc_reason)}
    frame = annotations.copy()
    frame["annotator"] = _single(frame, "annotator", "realign-judge")
    frame["generator_1"] = _single(frame, "generator_1", "reference")
    frame["generator_2"] = _single(frame, "generator_2", name)
    positions = frame["index"] if "index" in frame else pd.Series(frame.index, index=frame.index)
    gamed = pd.read_csv(lc_path)
    known = set(gamed.drop_duplicates("index").index)  # alpaca_eval looks difficulties up by these labels
    unknown = sorted({int(p) for p in positions} - known)
    if unknown:
        return {
            **metrics,
            **_lc_unavailable(
                f"{lc_path} gives no instruction difficulty for set position(s) "
                f"{', '.join(map(str, unknown[:5]))}"
                + (" ..." if len(unknown) > 5 else "")
                + f" ({len(known)} instructions described)"
            ),
        }
    with _local_lc_file(lc_path), _quiet_info(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notices about alpaca_eval's arguments
        lc = alpaca_eval.metrics.get_length_controlled_winrate(
            frame, save_weights_dir=None, is_warn_extreme_changes=False
        )
    return {
        **metrics,
        **json_safe(
            {
                "length_controlled_winrate": float(lc["length_controlled_winrate"]),
                "lc_standard_error": float(lc["lc_standard_error"]),
            }
        ),
    }


def position_bias(annotations: pd.DataFrame) -> dict[str, Any]:
    """Share of verdicts for the output shown first or second, from alpaca_eval's order flag (output order is
    randomized, so a fair judge is near 50/50); unknown when the annotations do not record the order."""
    field = next((f for f in SWITCH_FIELDS if f in annotations and annotations[f].notna().any()), None)
    if field is None:
        return {
            "known": False,
            "reason": "the annotations do not record the order the judge saw the outputs in "
            "(alpaca_eval's is_switched_outputs)",
        }
    rows = annotations[annotations[field].notna() & annotations["preference"].notna()]
    preference = rows["preference"].astype(float).replace({0.0: 1.5})
    switched = rows[field].astype(bool)
    first = int((((preference < 1.5) & ~switched) | ((preference > 1.5) & switched)).sum())
    second = int((((preference > 1.5) & ~switched) | ((preference < 1.5) & switched)).sum())
    total = len(rows)
    if total == 0:
        return {"known": False, "reason": "no annotation has both a preference and the order flag"}
    share = {"first": first / total, "second": second / total, "tie": (total - first - second) / total}
    return {
        "known": True,
        "n_verdicts": total,
        **share,
        "degenerate": max(share["first"], share["second"]) > DEGENERATE_SHARE,
    }
