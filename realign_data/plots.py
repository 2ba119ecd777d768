"""PNG figures beside datasets, models and reports: matplotlib without a display, one resolution, always closed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: Path, columns: int = 1, size: tuple[float, float] = (7, 4)) -> Iterator[Any]:
    """Yield the axes of a new figure (a list when ``columns > 1``); on exit it is laid out, saved to ``path``
    and closed, also when drawing failed (nothing half-drawn stays in memory)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node or in CI
    import matplotlib.pyplot as plt

    drawing, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield axes
        drawing.tight_layout()
        drawing.savefig(path, dpi=110)
    finally:
        plt.close(drawing)
