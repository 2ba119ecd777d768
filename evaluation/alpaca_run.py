"""`realign-eval alpaca`: answers -> annotations -> alpaca_eval metrics -> report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.alpaca import annotate
from evaluation.alpaca_metrics import ANNOTATION_FIELDS, compute_metrics, read_frame
from evaluation.report import file_sha256, plot_length_vs_preference, plot_scores, write_report
from realign_data.errors import RealignError
from realign_data.store import write_json

METRIC_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
               "avg_length", "length_controlled_winrate", "lc_standard_error")


def load_eval_set(path: Path | None) -> list[dict]:
    if path is not None:
        return read_frame(path, ("instruction", "output")).to_dict("records")
    import datasets

    try:
        data = datasets.load_dataset("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline", split="eval")
    except Exception as exc:  # offline or missing
        raise RealignError(f"cannot load the AlpacaEval set from the Hub ({type(exc).__name__}); pass --eval-set "
                           "FILE (e.g. reference_outputs_gpt4_1106_preview.json)") from None
    return [dict(row) for row in data]


def run_alpaca(output: Path, annotations: Path | None, outputs: Path | None, eval_set: Path | None,
               limit: int | None, name: str | None, lc_data: Path | None, reference_leaderboard: Path | None,
               annotator: str, make_answers, make_judge) -> dict[str, Any]:
    settings: dict[str, Any] = {"annotator": annotator, "limit": limit}
    judge_info, usage, answer_settings = None, None, None
    if annotations is not None:
        frame = read_frame(annotations, ANNOTATION_FIELDS)
        model_outputs = read_frame(outputs, ("instruction", "output")) if outputs else None
        settings["annotations"] = {"path": str(annotations), "sha256": file_sha256(annotations)}
    else:
        examples = load_eval_set(eval_set)[:limit]
        settings["eval_set"] = {"path": str(eval_set) if eval_set else "hub:tatsu-lab/alpaca_eval",
                                "sha256": file_sha256(eval_set), "n": len(examples)}
        if outputs is not None:
            model_outputs = read_frame(outputs, ("instruction", "output"))
            answers = dict(zip(model_outputs["instruction"], model_outputs["output"], strict=True))
        else:
            answers, answer_settings = make_answers({e["instruction"]: e["instruction"] for e in examples})
            model_outputs = pd.DataFrame([{"instruction": k, "output": v} for k, v in answers.items()])
        name = name or (str(model_outputs["generator"].iloc[0]) if "generator" in model_outputs else "model")
        judge, judge_info = make_judge()
        frame = pd.DataFrame(annotate(examples, answers, name, annotator, judge))
        usage = judge.usage()
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "annotations.json", frame.to_dict("records"))
        write_json(output / "model_outputs.json", model_outputs.to_dict("records"))
    name = name or str(frame["generator_2"].iloc[0])
    failures = int(frame["preference"].isna().sum())
    metrics = compute_metrics(frame[frame["preference"].notna()], model_outputs, lc_data)
    output.mkdir(parents=True, exist_ok=True)
    rows = [{"label": name, "score": metrics["win_rate"], "lower": metrics["win_rate"] - 1.96 * metrics[
        "standard_error"], "upper": metrics["win_rate"] + 1.96 * metrics["standard_error"], "ours": True}]
    if reference_leaderboard is not None:
        published = pd.read_csv(reference_leaderboard, index_col=0)
        rows += [{"label": model, "score": r["win_rate"], "lower": r["win_rate"] - 1.96 * r["standard_error"],
                  "upper": r["win_rate"] + 1.96 * r["standard_error"]} for model, r in published.head(15).iterrows()]
    plot_scores(rows, "AlpacaEval 2 win rate (%) with 95% CI", output / "score_ci.png")
    scored = frame[frame["preference"].notna()]
    plot_length_vs_preference(scored["output_2"].str.len().tolist(), scored["preference"].astype(float).tolist(),
                              "preference (1 = reference, 2 = model)", output / "length_vs_preference.png")
    notes = [f"LC win rate unavailable: {metrics['lc_unavailable']}"] if metrics.get("lc_unavailable") else []
    notes.append(f"{failures} annotation(s) without a parseable preference were left out")
    return write_report(output, "AlpacaEval 2", {
        "model": {"name": name, **(answer_settings or {})}, "metrics": metrics, "n": metrics["n_total"],
        "failures": failures, "settings": settings, "judge": judge_info, "judge_usage": usage},
        (["model", *[k for k in METRIC_KEYS if metrics.get(k) is not None]],
         [[name, *[metrics[k] for k in METRIC_KEYS if metrics.get(k) is not None]]]), notes)
