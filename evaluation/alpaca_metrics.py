"""AlpacaEval 2 metrics from annotations, computed by the alpaca_eval library itself.

``preference`` is 1 (reference wins) .. 2 (model wins), 0 or 1.5 a draw. The length-controlled win rate needs
``df_gamed.csv`` (instruction difficulties and the gamed baselines) from the Hub dataset tatsu-lab/alpaca_eval;
without it the report says so instead of inventing a number.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.records import json_kind, read_located_records, read_records, read_table
from realign_data.errors import InputError
from realign_data.store import json_safe

ANNOTATION_FIELDS = ("instruction", "output_1", "output_2", "preference")
LC_FILE = "df_gamed.csv"
LC_COLUMNS = ("model", "index", "instruction_difficulty")


def import_alpaca_eval():
    """alpaca_eval 0.6.6 imports pkg_resources (setuptools < 81): import it once, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            import alpaca_eval.metrics
        except ModuleNotFoundError as exc:
            raise InputError(f"alpaca_eval cannot be imported ({exc}); it needs setuptools<81 "
                             "(pip install 'setuptools<81')") from None
    return alpaca_eval


def read_frame(path: Path, fields: tuple[str, ...], strings: tuple[str, ...] = ()) -> pd.DataFrame:
    """A JSON array (or JSONL) of objects with ``fields`` as a DataFrame; errors name the file, row and field."""
    return pd.DataFrame(read_records(path, fields, strings))


def preference_value(where: str, value: Any) -> float | None:
    """A row's preference as a float (None when missing); anything else is an error naming the row."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: field 'preference' must be a number (1 = reference better .. 2 = model better, "
                         f"0 or 1.5 a draw) or null, got {json_kind(value)} {value!r}")
    if not (value == 0 or 1 <= value <= 2):
        raise InputError(f"{where}: field 'preference' {value!r} is out of range (1 = reference better .. "
                         "2 = model better, 0 or 1.5 a draw)")
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
    """The df_gamed.csv to use: the given file, else the Hugging Face cache; with the reason when there is none."""
    if lc_data is not None:
        read_table(lc_data, f"--lc-data (tatsu-lab/alpaca_eval's {LC_FILE})", LC_COLUMNS, ("index",))
        return lc_data, ""
    from huggingface_hub import hf_hub_download

    try:  # the Hugging Face cache first; the Hub only when it is reachable
        return Path(hf_hub_download("tatsu-lab/alpaca_eval", LC_FILE, repo_type="dataset",
                                    local_files_only=True)), ""
    except Exception:
        pass
    try:
        return Path(hf_hub_download("tatsu-lab/alpaca_eval", LC_FILE, repo_type="dataset")), ""
    except Exception as exc:  # offline, gated or missing: LC cannot be computed
        return None, (f"{LC_FILE} from the Hub dataset tatsu-lab/alpaca_eval is not available "
                      f"({type(exc).__name__}); pass --lc-data FILE to compute the length-controlled win rate")


def _single(frame: pd.DataFrame, column: str, default: str) -> pd.Series:
    """alpaca_eval's LC fit wants one generator name per side: the file's, when it has exactly one."""
    names = frame[column].dropna().unique() if column in frame else []
    return pd.Series(names[0] if len(names) == 1 else default, index=frame.index)


def compute_metrics(annotations: pd.DataFrame, model_outputs: pd.DataFrame | None, lc_path: Path | None,
                    lc_reason: str, name: str) -> dict[str, Any]:
    """win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total, discrete_win_rate, avg_length, and LC.

    ``annotations`` holds the scored rows only; its ``index`` column (when present) is each row's position in the
    AlpacaEval set, which the LC fit uses to look up the instruction's difficulty. Values that are not finite
    (the standard error of a single row, say) are None."""
    alpaca_eval = import_alpaca_eval()
    metrics = json_safe(dict(alpaca_eval.metrics.get_winrate(annotations)))
    outputs = model_outputs["output"] if model_outputs is not None else annotations["output_2"]
    metrics["avg_length"] = int(outputs.str.len().mean())  # as the leaderboard computes it
    if lc_path is None:
        return {**metrics, **_lc_unavailable(lc_reason)}
    frame = annotations.copy()
    if "index" not in frame:
        frame["index"] = range(len(frame))
    frame["annotator"] = _single(frame, "annotator", "realign-judge")
    frame["generator_1"] = _single(frame, "generator_1", "reference")
    frame["generator_2"] = _single(frame, "generator_2", name)
    known = pd.read_csv(lc_path, usecols=["index"])["index"].nunique()
    if int(frame["index"].max()) >= known:
        return {**metrics, **_lc_unavailable(f"{lc_path} describes {known} instructions, the annotations have "
                                              f"{int(frame['index'].max()) + 1} rows")}
    with _local_lc_file(lc_path):
        lc = alpaca_eval.metrics.get_length_controlled_winrate(frame, save_weights_dir=None,
                                                               is_warn_extreme_changes=False)
    return {**metrics, **json_safe({"length_controlled_winrate": float(lc["length_controlled_winrate"]),
                                         "lc_standard_error": float(lc["lc_standard_error"])})}
