"""AlpacaEval 2 metrics from annotations, computed by the alpaca_eval library itself.

``preference`` is 1 (reference wins) .. 2 (model wins), 0 or 1.5 a draw. The length-controlled win rate needs
``df_gamed.csv`` (instruction difficulties and the gamed baselines) from the Hub dataset tatsu-lab/alpaca_eval;
without it the report says so instead of inventing a number.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.records import read_records
from realign_data.errors import InputError

ANNOTATION_FIELDS = ("instruction", "output_1", "output_2", "preference")
LC_FILE = "df_gamed.csv"


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


def read_frame(path: Path, fields: tuple[str, ...]) -> pd.DataFrame:
    """A JSON array (or JSONL) of objects with ``fields`` as a DataFrame; errors name the file, row and field."""
    return pd.DataFrame(read_records(path, fields))


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
        if not lc_data.is_file():
            raise InputError(f"{lc_data}: no such file (--lc-data must be tatsu-lab/alpaca_eval's {LC_FILE})")
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


def compute_metrics(annotations: pd.DataFrame, model_outputs: pd.DataFrame | None, lc_data: Path | None) \
        -> dict[str, Any]:
    """win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total, discrete_win_rate, avg_length, and LC."""
    alpaca_eval = import_alpaca_eval()
    metrics = {k: (v.item() if hasattr(v, "item") else v)
               for k, v in alpaca_eval.metrics.get_winrate(annotations).items()}
    outputs = model_outputs["output"] if model_outputs is not None else annotations["output_2"]
    metrics["avg_length"] = int(outputs.str.len().mean())  # as the leaderboard computes it
    path, reason = find_lc_data(lc_data)
    if path is None:
        return {**metrics, **_lc_unavailable(reason)}
    frame = annotations.copy()
    frame["index"] = range(len(frame))
    frame["annotator"] = frame.get("annotator", "realign-judge")
    with _local_lc_file(path):
        lc = alpaca_eval.metrics.get_length_controlled_winrate(frame, save_weights_dir=None,
                                                               is_warn_extreme_changes=False)
    return {**metrics, "length_controlled_winrate": float(lc["length_controlled_winrate"]),
            "lc_standard_error": float(lc["lc_standard_error"])}
