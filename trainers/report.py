"""What a training run leaves beside the model: its training record (training_record.json) and a PNG of its curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from realign_data import plots

CURVES = (("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "preference accuracy"))


def plot_curves(log_history: list[dict[str, Any]], eval_metrics: dict[str, float], path: Path) -> None:
    """Loss, reward margin and preference accuracy over steps; held-out values as points at the last step."""
    last_step = max((entry.get("step", 0) for entry in log_history), default=0)
    with plots.figure(path, len(CURVES), (5 * len(CURVES), 3.6)) as axes:
        for axis, (key, title) in zip(axes, CURVES, strict=True):
            points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
            if points:
                axis.plot(*zip(*points, strict=True), label="train", color="tab:blue")
            if f"eval_{key}" in eval_metrics:
                axis.scatter([last_step], [eval_metrics[f"eval_{key}"]], color="tab:red", zorder=3, label="held-out")
            axis.set_title(title)
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
            axis.legend(loc="best", fontsize=8)


TRAINING_RECORD = "training_record.json"
LEGACY_TRAINING_RECORD = "training_manifest.json"  # its name before realign 0.2, still read


def read_training_record(output_dir: Path) -> dict[str, Any] | None:
    """The training record of a finished run in ``output_dir``, or None."""
    for name in (TRAINING_RECORD, LEGACY_TRAINING_RECORD):
        if (output_dir / name).exists():
            return json.loads((output_dir / name).read_text())
    return None
