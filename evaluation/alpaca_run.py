"""`realign-eval alpaca`: answers -> annotations -> alpaca_eval metrics -> report folder.

Every input is read and checked before anything is written: a bad file or option stops the run with one line
(exit 2) and leaves the report folder untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.alpaca import annotate, annotator_label, load_annotator
from evaluation.alpaca_metrics import (
    compute_metrics,
    find_lc_data,
    interval,
    model_name,
    position_bias,
    read_annotations,
    read_outputs,
)
from evaluation.config import AlpacaEvalConfig
from evaluation.records import read_table
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
from realign_data.files import write_json
from realign_data.official import hub_unreachable, offline_mode

METRIC_KEYS = (
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "discrete_win_rate",
    "avg_length",
    "length_controlled_winrate",
    "lc_standard_error",
)
LEADERBOARD_COLUMNS = ("win_rate", "standard_error")


def load_eval_set(path: Path | None) -> list[dict]:
    if path is not None:
        return read_outputs(path).to_dict("records")
    advice = "pass --eval-set FILE (e.g. reference_outputs_gpt4_1106_preview.json)"
    reason = hub_unreachable()
    if reason is not None and not offline_mode():  # offline mode may still find the set in the datasets cache
        raise RealignError(
            f"cannot load the AlpacaEval set: the Hub cannot be reached ({reason}); {advice}, or set "
            "HF_HUB_OFFLINE=1 to use a cached copy"
        )
    import datasets

    try:
        data = datasets.load_dataset("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline", split="eval")
    except Exception as exc:  # offline or missing
        raise RealignError(
            f"cannot load the AlpacaEval set from the Hub ({type(exc).__name__}"
            + (f", {reason}" if reason else "")
            + f"); {advice}"
        ) from None
    return [dict(row) for row in data]


def run_alpaca(config: AlpacaEvalConfig) -> dict[str, Any]:
    """Evaluate as ``config`` says and write the report folder; report.json stores the effective config."""
    config.refuse_unused()
    output = config.report_folder()
    bench = config.benchmark
    annotations, eval_set, limit, lc_data = bench.annotations, bench.eval_set, bench.limit, bench.lc_data
    reference_leaderboard, annotator = bench.reference_leaderboard, bench.annotator
    outputs, name = config.answers.outputs, config.answers.name
    check_output(output)
    published = (
        read_table(
            reference_leaderboard,
            "--reference-leaderboard (an AlpacaEval leaderboard CSV)",
            LEADERBOARD_COLUMNS,
            LEADERBOARD_COLUMNS,
            index_col=0,
        )
        if reference_leaderboard is not None
        else None
    )
    settings: dict[str, Any] = {"annotator": annotator, "limit": limit}
    judge_info, usage, answer_settings = None, None, None
    if annotations is not None:
        frame = read_annotations(annotations)
        model_outputs = read_outputs(outputs) if outputs else None
        name = (
            name
            or model_name(frame, "generator_2")
            or (model_name(model_outputs, "generator") if model_outputs is not None else None)
            or "model"
        )
        # the row labels (0..n-1: the file's order is the set's order, as alpaca_eval writes it) or the file's own
        # 'index' field give each row's place in the set, as alpaca_eval's LC fit reads them
        settings["annotations"] = {"path": str(annotations), "sha256": file_sha256(annotations)}
        lc_path, lc_reason = find_lc_data(lc_data)
    else:
        # an unknown or unrunnable annotator, or a mode it cannot take, stops the run before any answer is generated
        spec = load_annotator(annotator)
        mode = spec.mode(bench.judge_mode)
        examples = load_eval_set(eval_set)[:limit]
        settings["eval_set"] = {
            "path": str(eval_set) if eval_set else "hub:tatsu-lab/alpaca_eval",
            "sha256": file_sha256(eval_set),
            "n": len(examples),
        }
        if outputs is not None:
            outputs_frame = read_outputs(outputs)
            answers = dict(zip(outputs_frame["instruction"], outputs_frame["output"], strict=True))
            if not any(example["instruction"] in answers for example in examples):
                raise InputError(
                    f"{outputs}: none of its {len(answers)} instruction(s) is in the eval set "
                    f"({settings['eval_set']['path']}, {len(examples)} used)"
                )
        config.check_servers()  # the judge's (and the model's) servers are named: the inputs are read and valid
        if outputs is None:
            answers, answer_settings = config.answers.generate({e["instruction"]: e["instruction"] for e in examples})
            outputs_frame = pd.DataFrame([{"instruction": k, "output": v} for k, v in answers.items()])
            if outputs_frame.empty:
                raise RealignError("the model produced no answer (every generation failed)")
        model_outputs = outputs_frame
        name = name or model_name(outputs_frame, "generator") or (answer_settings or {}).get("model") or "model"
        lc_path, lc_reason = find_lc_data(lc_data)
        judge, judge_info = config.judge.create(spec.model_name)
        judge_info = {**judge_info, "mode": mode, "annotator": spec.record(mode)}
        positions = {example["instruction"]: index for index, example in enumerate(examples)}
        # each row carries its place in the set, so a rescoring of a part of the set looks difficulties up right
        records = [
            {**record, "index": positions[record["instruction"]]}
            for record in annotate(examples, answers, name, spec, judge, mode)
        ]
        usage = judge.usage()
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "annotations.json", records)
        write_json(output / "model_outputs.json", outputs_frame.to_dict("records"))
        frame = pd.DataFrame(records)
        frame["preference"] = frame["preference"].astype(float)
        frame.index = pd.Index(frame["index"].to_numpy())
        if frame["preference"].isna().all():
            raise RealignError(
                f"the judge gave no parseable preference for any of the {len(frame)} instruction(s) "
                f"(annotations saved in {output / 'annotations.json'})"
            )
    failures = int(frame["preference"].isna().sum())
    scored = frame[frame["preference"].notna()]
    metrics = compute_metrics(frame, model_outputs, lc_path, lc_reason, name)  # every row, as alpaca_eval
    bias = position_bias(frame)
    deviations = list((judge_info or {}).get("deviations") or [])
    if annotations is None and len(frame) < len(examples) and metrics.get("length_controlled_winrate") is not None:
        deviations.append(
            "LC with outputs for part of the set: each instruction's difficulty is looked up by its "
            "place in the set; alpaca_eval's evaluate numbers the merged rows 0..n-1 instead, which "
            "gives later instructions the wrong difficulty"
        )
    annotator_name = (model_name(frame, "annotator") if annotations is not None else None) or annotator
    judge_label = annotator_label(annotator_name, (judge_info or {}).get("mode"))
    output.mkdir(parents=True, exist_ok=True)
    lower, upper = interval(metrics["win_rate"], metrics["standard_error"])
    rows = [{"label": name, "score": metrics["win_rate"], "lower": lower, "upper": upper, "ours": True}]
    if published is not None:
        for model, row in published.dropna(subset=list(LEADERBOARD_COLUMNS)).head(15).iterrows():
            low, high = interval(float(row["win_rate"]), float(row["standard_error"]))
            rows.append({"label": str(model), "score": float(row["win_rate"]), "lower": low, "upper": high})
    plot_scores(rows, "AlpacaEval 2 win rate (%) with 95% CI", output / "score_ci.png")
    plot_length_vs_preference(
        scored["output_2"].str.len().tolist(),
        scored["preference"].astype(float).tolist(),
        "preference (1 = reference, 2 = model)",
        output / "length_vs_preference.png",
    )
    judge_model = (judge_info or {}).get("model")
    notes = [f"judge: {judge_label}" + (f" ({judge_model})" if judge_model else "")]
    if metrics.get("lc_unavailable"):
        notes.append(f"LC win rate unavailable: {metrics['lc_unavailable']}")
    notes.append(f"{failures} annotation(s) without a parseable preference were left out")
    if metrics.get("standard_error") is None:
        notes.append("standard error undefined (fewer than two scored annotations)")
    if usage is not None:
        notes.append(usage_note(usage))
    notes += position_lines(bias, "output")
    total = metrics.get("n_total") or 0
    if total >= 5 and total in (metrics.get("n_wins"), metrics.get("n_wins_base")):
        side = "model's" if metrics.get("n_wins") == total else "reference's"
        notes.append(
            f"WARNING: all {total} verdicts prefer the {side} output: the judge may be degenerate (see "
            "the position bias); a score of 0 or 100 is rarely a result"
        )
    notes += [f"deviation from alpaca_eval: {text}" for text in deviations]
    return write_report(
        output,
        "AlpacaEval 2",
        {
            "model": {"name": name, **(answer_settings or {})},
            "metrics": metrics,
            "n": metrics["n_total"],
            "failures": failures,
            "position_bias": bias,
            "deviations": deviations,
            "judge_label": judge_label,
            "settings": settings,
            "judge": judge_info,
            "judge_usage": usage,
            "config": config_to_dict(config),
        },
        (
            ["model", *[k for k in METRIC_KEYS if metrics.get(k) is not None]],
            [[name, *[metrics[k] for k in METRIC_KEYS if metrics.get(k) is not None]]],
        ),
        notes,
    )
