"""Length bias of a pair table, per pair type: judges reward length, and revisions tend to be longer than drafts.

For each pair type, over the pairs whose two token counts are known: the mean tokens of chosen and rejected, the
share of pairs whose chosen is longer, and the Pearson correlation between the margin and the length difference
(chosen - rejected tokens). A correlation near 1 says the scores mostly measure length. Pairs without token counts
(datasets written before realign 0.3, imported ones, references of a served policy) are counted as ``unknown``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

COLUMNS = ("pair_type", "margin", "chosen_tokens", "rejected_tokens")


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r, or None with fewer than 3 points or no spread on either side."""
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def length_bias(table: pa.Table) -> dict[str, dict[str, Any]]:
    """{pair_type: {pairs, unknown, chosen_tokens_mean, rejected_tokens_mean, chosen_longer_share,
    margin_length_corr}} for a table with the columns in COLUMNS."""
    result: dict[str, dict[str, Any]] = {}
    for pair_type in sorted(set(table["pair_type"].to_pylist())):
        rows = table.filter(pc.equal(table["pair_type"], pair_type))
        known = rows.filter(pc.and_(pc.is_valid(rows["chosen_tokens"]), pc.is_valid(rows["rejected_tokens"])))
        chosen = known["chosen_tokens"].to_numpy().astype(np.float64)
        rejected = known["rejected_tokens"].to_numpy().astype(np.float64)
        margin = known["margin"].to_numpy().astype(np.float64)
        stats: dict[str, Any] = {"pairs": known.num_rows, "unknown": rows.num_rows - known.num_rows}
        if known.num_rows:
            stats.update(
                chosen_tokens_mean=round(float(chosen.mean()), 1),
                rejected_tokens_mean=round(float(rejected.mean()), 1),
                chosen_longer_share=round(float((chosen > rejected).mean()), 4),
                margin_length_corr=_correlation(margin, chosen - rejected),
            )
        result[pair_type] = stats
    return result


def describe(stats: dict[str, Any]) -> str:
    """One line of a pair type's length bias, e.g. ``tokens c/r 212/140, chosen longer 81%, r(margin, dlen) 0.42``."""
    if not stats["pairs"]:
        return f"no token counts ({stats['unknown']} pairs)"
    corr = stats["margin_length_corr"]
    text = (
        f"tokens c/r {stats['chosen_tokens_mean']:.0f}/{stats['rejected_tokens_mean']:.0f}, "
        f"chosen longer {stats['chosen_longer_share']:.0%}, "
        f"r(margin, dlen) {'n/a' if corr is None else f'{corr:.2f}'}"
    )
    return text + (f", {stats['unknown']} unknown" if stats["unknown"] else "")
