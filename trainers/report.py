"""What a training run leaves beside the model: training_manifest.json and a PNG of its curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVES = (("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "preference accuracy"))


def plot_curves(log_history: list[dict[str, Any]], eval_metrics: dict[str, float], path: Path) -> None:
    """Loss, reward margin and preference accuracy over steps; held-out values as points at the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    last_step = max((entry.get("step", 0) for entry in log_history), default=0)
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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def read_manifest_if_any(output_dir: Path) -> dict[str, Any] | None:
    """The training manifest of a finished run in ``output_dir``, or None."""
    path = output_dir / "training_manifest.json"
    return json.loads(path.read_text()) if path.exists() else None
