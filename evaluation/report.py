"""Report folders: report.json (metrics, settings, provenance), report.md and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realign_data import plots
from realign_data.errors import InputError
from realign_data.files import json_safe, sha256_file, write_json
from realign_data.provenance import code_provenance, utc_now


def file_sha256(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None and path.is_file() else None


def check_output(output: Path) -> None:
    """The report folder can be written: it does not exist yet or is a folder (checked before any work)."""
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output}: exists and is not a folder")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"-o {output}: {parent} is not a folder")
            break


def usage_note(usage: dict[str, Any]) -> str:
    """One line on what the judge cost in calls: made, served from the cache, retried (by reason), failed."""
    retries = usage.get("retries") or {}
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(retries.items()))
    return (
        f"judge: {usage.get('calls', 0)} call(s), {usage.get('cached', 0)} from the cache, "
        f"{usage.get('retries_total', 0)} retried"
        + (f" ({reasons})" if reasons else "")
        + f", {usage.get('failed', 0)} failed after retries, {usage.get('unparseable', 0)} unparseable"
        + (f", {usage['judged_anew']} judged anew (unparseable in an earlier run)" if usage.get("judged_anew") else "")
    )


def position_lines(bias: dict, what: str = "answer") -> list[str]:
    """report.md lines: the position shares, and a warning when the judge looks degenerate."""
    if not bias.get("known"):
        return [f"position bias unknown: {bias.get('reason', 'no parseable verdict')}"]
    line = (
        f"position bias: of {bias['n_verdicts']} verdicts, {100 * bias['first']:.0f}% for the {what} shown "
        f"first, {100 * bias['second']:.0f}% for the {what} shown second, {100 * bias['tie']:.0f}% ties"
    )
    if bias.get("agreement") is not None:
        line += (
            f"; the two games of a question (positions swapped) name the same winner in "
            f"{100 * bias['agreement']:.0f}% of {bias['n_questions_both_games']} questions"
        )
    lines = [line]
    if bias.get("degenerate"):
        side = "first" if bias["first"] >= bias["second"] else "second"
        lines.append(
            f"WARNING: the judge looks degenerate: {100 * bias[side]:.0f}% of its {bias['n_verdicts']} "
            f"verdicts go to the {what} shown {side}; its scores reflect where an {what} is shown, not "
            "how good it is"
        )
    return lines


def plot_scores(rows: list[dict], title: str, path: Path) -> None:
    """Each row {label, score, lower, upper, ours}: a point with its confidence interval (none where the bounds
    are None)."""
    rows = sorted(rows, key=lambda r: r["score"])
    with plots.figure(path, size=(7, 0.35 * len(rows) + 1.5)) as axis:
        for y, row in enumerate(rows):
            color = "tab:red" if row.get("ours") else "tab:gray"
            below, above = (
                (0.0, 0.0)
                if row["lower"] is None
                else (max(0.0, row["score"] - row["lower"]), max(0.0, row["upper"] - row["score"]))
            )
            axis.errorbar(row["score"], y, xerr=[[below], [above]], fmt="o", color=color, capsize=3)
        axis.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
        axis.set_xlabel(title)
        axis.grid(axis="x", alpha=0.3)


def plot_length_vs_preference(lengths: list[int], preferences: list[float], ylabel: str, path: Path) -> None:
    with plots.figure(path, size=(6, 4)) as axis:
        axis.scatter(lengths, preferences, s=10, alpha=0.5)
        axis.set_xscale("symlog")
        axis.set_xlabel("answer length (characters)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def write_report(
    output: Path, benchmark: str, body: dict[str, Any], table: tuple[list[str], list[list[Any]]], notes: list[str]
) -> dict[str, Any]:
    """report.json (body plus provenance) and report.md (title, table, notes) in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    report = json_safe({"benchmark": benchmark, "created_at": utc_now(), **body, "code": code_provenance()})
    write_json(output / "report.json", report)
    markdown = [f"# {benchmark} report\n", markdown_table(*table)] + [f"- {note}\n" for note in notes]
    (output / "report.md").write_text("\n".join(markdown))
    return report
