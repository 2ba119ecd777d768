"""`realign-data`: build, inspect and query versioned ReAlign preference-pair datasets."""

from __future__ import annotations

import csv
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from realign_data.config import DEFAULT_NGRAM, BuildConfig, PromptsConfig, config_to_dict, load_config

if TYPE_CHECKING:
    from realign_data.build import BuildResult
from realign_data.errors import InputError, main_with_errors
from realign_data.files import json_text, write_json, write_jsonl
from realign_data.models import load_tokenizer, pick_device, pick_dtype, resolve_model
from realign_data.prompts import length_stats, load_prompts
from realign_data.quality import describe as describe_length_bias
from realign_data.quality import length_bias
from realign_data.store import Store

app = typer.Typer(
    help="Build, inspect and query versioned ReAlign preference-pair datasets.\n\n"
    "Datasets live in a store (--store or $REALIGN_STORE, default ./realign-store) as immutable NAME@vN "
    "versions, catalogued in DuckDB.\n\n"
    "Exit codes: 0 done, 2 bad input (nothing written), 1 the environment failed (disk, network, server). "
    "Add --debug to any command (or set REALIGN_DEBUG=1) for the full traceback of an error.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective configuration of a manifest.", no_args_is_help=True)
models_app = typer.Typer(
    help="Resolve and inspect model specs (Hub ids, directories, .gguf files, aliases).", no_args_is_help=True
)
recipe_app = typer.Typer(help="Moved: the whole loop is `realign-train recipe MANIFEST`.", no_args_is_help=True)
catalog_app = typer.Typer(
    help="The DuckDB catalog (catalog.duckdb): rebuilt from the version records.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(catalog_app, name="catalog")
app.add_typer(models_app, name="models")
app.add_typer(recipe_app, name="recipe")
console = Console()


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


StoreOption = Annotated[
    Path | None,
    typer.Option("--store", envvar="REALIGN_STORE", show_default="./realign-store", help="Store root directory."),
]
ManifestOption = Annotated[Path | None, typer.Option("--manifest", "-m", help="YAML manifest (see manifests/).")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a field: --set generation.temperature=0.7 (repeatable).")
]
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def print_json(data: Any) -> None:
    """JSON that every parser reads: NaN and infinities become null."""
    print(json_text(data, indent=2))


def emit(columns: list[str], rows: list[Any], fmt: Format, title: str | None = None) -> None:
    """Print rows as a rich table, CSV (``\\n`` line ends) or JSON records."""
    if fmt is Format.json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*("" if value is None else str(value) for value in row))
        console.print(table)


def open_store(root: Path | None) -> Store:
    """The store at ``root``; what it skipped or repaired is told on stderr when the command ends."""
    store = Store(root)
    _opened.append(store)
    return store


_opened: list[Store] = []


def _tell_store_notices() -> None:
    for store in _opened:
        for folder, reason in sorted(store.skipped.items()):
            print(f"warning: skipped {store.root / folder}: {reason}", file=sys.stderr)
        for note in store.notes:
            print(f"note: {note}", file=sys.stderr)


@config_app.command("show")
def config_show(
    manifest: ManifestOption = None,
    set_: SetOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="yaml or json")] = "yaml",
) -> None:
    """Print the effective build config: defaults, then the manifest, then --set overrides.

    Example: realign-data config show -m manifests/smoke-cpu.yaml --set generation.temperature=0.7
    """
    config = config_to_dict(load_config(BuildConfig, manifest, set_))
    if fmt == "json":
        print_json(config)
    elif fmt == "yaml":
        print(yaml.safe_dump(config, sort_keys=False), end="")
    else:
        raise InputError(f"--format {fmt!r}: use yaml or json")


@models_app.command("show")
def models_show(
    spec: Annotated[
        str, typer.Argument(help="Hub id, local directory, .gguf file, or the alias smollm2-135m-instruct.")
    ],
    fmt: FormatOption = Format.table,
) -> None:
    """Resolve a model spec (converting GGUF once) and print its path, architecture, size and fingerprint, and the
    device and dtype `dtype: auto` gives generation on this machine."""
    _quiet_transformers()
    model = resolve_model(spec)
    params = model.num_parameters()
    device = pick_device()
    info = {
        "spec": spec,
        "source": model.source,
        "path": str(model.path),
        "architecture": model.architecture,
        "parameters": params,
        "chat_template": model.has_chat_template,
        "fingerprint": model.fingerprint(),
        "generation": f"{device}, {str(pick_dtype('auto', device, cpu_bf16=True)).removeprefix('torch.')}",
    }
    if fmt is Format.json:
        print_json(info)
        return
    info["parameters"] = f"{params:,}" if params is not None else "unknown (.bin weights)"
    emit(["field", "value"], list(info.items()), fmt)


@app.command("prompts")
def prompts_preview(
    source: Annotated[str, typer.Argument(help="builtin, a .jsonl/.json/.parquet/.csv file, or a Hub ID:SPLIT.")],
    prompt_column: Annotated[
        str | None,
        typer.Option(help="Text or chat-messages column (default: prompt, instruction, messages, question)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Keep at most N prompts (seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    min_chars: Annotated[int, typer.Option(min=0)] = 1,
    max_chars: Annotated[int | None, typer.Option(min=1)] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Drop prompts longer than N tokens under --tokenizer.")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Model spec whose tokenizer counts tokens.")] = None,
    show: Annotated[int, typer.Option(min=0, help="How many prompts to preview.")] = 5,
    fmt: FormatOption = Format.table,
) -> None:
    """Validate and preview a prompt source: counts, duplicates dropped, length stats, a few prompts.

    Bad input (invalid JSON line, missing column, empty value, bad bytes, wrong Parquet schema) stops with one \
line naming the file, line or row and the field, and exit code 2.
    """
    if max_tokens is not None and tokenizer is None:
        raise InputError("--max-tokens needs --tokenizer SPEC (e.g. --tokenizer smollm2-135m-instruct)")
    config = PromptsConfig(
        source=source,
        column=prompt_column,
        limit=limit,
        seed=seed,
        min_chars=min_chars,
        max_chars=max_chars,
        max_tokens=max_tokens,
        tokenizer=tokenizer,
    )
    tok = load_tokenizer(resolve_model(tokenizer)) if tokenizer else None
    prompt_set = load_prompts(config, tok)
    stats = {"chars": length_stats([p.num_chars for p in prompt_set.prompts])}
    if prompt_set.token_lengths is not None:
        stats["tokens"] = length_stats(prompt_set.token_lengths)
    if fmt is Format.json:
        print_json(
            {
                **prompt_set.record(),
                "lengths": stats,
                "preview": [{"prompt_id": p.prompt_id, "messages": p.messages} for p in prompt_set.prompts[:show]],
            }
        )
        return
    emit(["count", "value"], list(prompt_set.counts.items()), fmt, title=f"{source} (column '{prompt_set.column}')")
    emit(
        ["length", "min", "median", "mean", "max"],
        [[unit, *values.values()] for unit, values in stats.items() if values],
        fmt,
    )
    emit(
        ["prompt_id", "from", "instruction"],
        [[p.prompt_id[:12], p.location, p.instruction[:100]] for p in prompt_set.prompts[:show]],
        fmt,
    )


@app.command("decontaminate")
def decontaminate(
    source: Annotated[
        str,
        typer.Argument(
            help="A prompt source (builtin, a .jsonl/.json/.parquet/.csv file, a Hub ID:SPLIT) or a "
            "stored version NAME@vN."
        ),
    ],
    against: Annotated[
        list[str],
        typer.Option(
            "--against",
            "-a",
            help="A benchmark: alpaca_eval, arena-hard-v0.1, arena-hard-v2.0 (their official files), NAME=FILE, or "
            "any prompt file (repeatable).",
        ),
    ],
    ngram: Annotated[
        int, typer.Option(min=1, help="Words in a shared n-gram that counts as contamination.")
    ] = DEFAULT_NGRAM,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Prompt source: the JSONL file of the clean prompts, one `messages` list per line (default: "
            "<file stem>.decontaminated.jsonl in the current folder)."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Stored version: the dataset the clean version is written to (default: its own).")
    ] = None,
    prompt_column: Annotated[str | None, typer.Option(help="Prompt source: its text or chat-messages column.")] = None,
    store: StoreOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Remove the prompts that contain a benchmark prompt: a word 8-gram shared with one (lower-cased,
    whitespace-split, as open-r1's decontaminate.py), the same normalized text, or a benchmark prompt of fewer
    words found whole.

    A stored version gives a new version without the rows of those prompts (written even when nothing matched: its
    record proves the check), its record holding the report (shown by `show`, put in the dataset card); a prompt
    source gives a JSONL file of the clean prompts (`messages` only: other columns are not carried) and the report
    beside it (OUT.decontamination.json). At build time: prompts.decontaminate: {against: [...], ngram: 8}.

    Examples:

    realign-data decontaminate smoke@v1 -a alpaca_eval=reference_outputs_gpt4_1106_preview.json -a arena-hard-v0.1

    realign-data decontaminate my_prompts.jsonl -a arena-hard-v2.0=question.jsonl --out clean.jsonl
    """
    from realign_data.config import Decontaminate
    from realign_data.decontaminate import decontaminate_prompts, decontaminate_version
    from realign_data.prompts import Prompt, prompt_id_for, read_source
    from realign_data.store import REF_PATTERN

    settings = Decontaminate(against=against, ngram=ngram)
    match = REF_PATTERN.match(source)
    if match and match["version"] is not None:
        if out is not None or prompt_column is not None:
            raise InputError("--out and --prompt-column are for a prompt source; a stored version gives a version")
        target = open_store(store)
        _, written, report = decontaminate_version(target, source, settings, dataset)
        where = f"{written.ref} ({written.record['num_rows']} rows)"
    else:
        if dataset is not None:
            raise InputError("--dataset is for a stored version (NAME@vN); a prompt source gives a file (--out)")
        column, rows, _ = read_source(source, prompt_column)
        stem = "builtin" if source == "builtin" else Path(source).name.replace(":", "_").replace("/", "_")
        out = out or Path(f"{Path(stem).stem}.decontaminated.jsonl")
        report_path = out.with_name(out.name + ".decontamination.json")
        for path in (out, report_path):
            if path.exists():
                raise InputError(f"{path} already exists; choose another --out or remove it")
        prompts = [Prompt(prompt_id_for(messages), messages, where) for where, messages, _ in rows]
        clean, report = decontaminate_prompts(prompts, settings)
        write_jsonl(out, ({"messages": p.messages} for p in clean))
        write_json(report_path, {"source": source, "column": column, "kept": len(clean), **report})
        where = f"{out} ({len(clean)} prompts) and {report_path}"
    if fmt is Format.json:
        print_json({"written": where, **report})
        return
    _print_decontamination(report)
    console.print(f"wrote {where}")


@app.command("list")
def list_versions(store: StoreOption = None, fmt: FormatOption = Format.table) -> None:
    """List every dataset version in the store: rows of pairs versions by pair type (on_policy=...), of samples
    versions by response kind (sample=..., revision=..., reference=...)."""
    target = open_store(store)
    rows = [
        [
            v.ref,
            v.record["created_at"],
            v.record["num_rows"],
            ", ".join(f"{k}={n}" for k, n in v.rows_by_type.items()),
        ]
        for v in target.versions()
    ]
    emit(["version", "created_at", "rows", "types"], rows, fmt, title=str(target.root))


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME@vN, or NAME for its latest version.")],
    store: StoreOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Describe a version: rows by pair_type, score and margin quantiles, response lengths, length bias, rows
    dropped by the pair rules, decontamination and models (a samples version: rows, scores and truncation by kind)."""
    summary = open_store(store).summary(ref)
    if fmt is Format.json:
        print_json(summary)
        return
    if summary["kind"] == "samples":
        columns = ["kind", "rows", "prompts", "scored", "truncated", "tokens", "score mean / min / max"]
        rows = [
            [
                k["kind"],
                k["rows"],
                k["prompts"],
                k["scored"],
                k["truncated"],
                "-" if k["tokens_mean"] is None else f"{k['tokens_mean']:.0f}",
                "-" if k["score_mean"] is None else _slashed([k["score_mean"], k["score_min"], k["score_max"]]),
            ]
            for k in summary["by_kind"]
        ]
    else:
        columns = ["pair type", "rows", "prompts", "margin min / med / max", "score c / r", "chars c / r"]
        rows = [
            [
                t["pair_type"],
                t["rows"],
                t["prompts"],
                _slashed([t["margin_q"][0], t["margin_q"][2], t["margin_q"][4]]),
                _slashed([t["chosen_score_q"][1], t["rejected_score_q"][1]]),
                f"{t['chosen_chars_mean']:.0f} / {t['rejected_chars_mean']:.0f}",
            ]
            for t in summary["by_pair_type"]
        ]
    if fmt is Format.csv:
        emit(columns, rows, fmt)
        return
    console.print(
        f"[bold]{summary['ref']}[/]  {summary['num_rows']} {summary['kind']} rows in {summary['files']} file(s), "
        f"{summary['bytes']:,} bytes, created {summary['created_at']}"
    )
    emit(columns, rows, fmt)
    if summary["kind"] == "pairs":
        console.print("c / r: chosen / rejected; score: median, chars: mean length")
        emit(
            ["pair type", "length bias"],
            [[t, describe_length_bias(b)] for t, b in summary["length_bias"].items()],
            fmt,
        )
        if summary["dropped"]:
            console.print("dropped by the pair rules: " + ", ".join(f"{k}={v}" for k, v in summary["dropped"].items()))
        if summary["samples"]:
            console.print(f"built from the samples version {summary['samples']}")
    if summary["decontamination"]:
        _print_decontamination(summary["decontamination"])
    models = [[role, m.get("identity") or m.get("id") or m.get("spec")] for role, m in summary["models"].items()]
    if models:
        emit(["role", "model"], models, fmt)


def _print_decontamination(report: dict[str, Any], shown: int = 3) -> None:
    """Per benchmark: how many prompts matched, and the first few with their matching n-gram."""
    rows = []
    for name, bench in report["benchmarks"].items():
        examples = "; ".join(
            f"{m['prompt_id'][:8]}~{m['item_id']}: {m['ngram'][:40]!r}" for m in bench["matches"][:shown]
        )
        rows.append([name, bench["reference_prompts"], bench["matched_prompts"], examples or "-"])
    console.print(
        f"decontamination ({report['ngram']}-gram overlap or exact match): {report['removed']} prompt(s) removed"
    )
    emit(["benchmark", "prompts", "matched", "e.g. prompt~item: n-gram"], rows, Format.table)


def _slashed(values: list[float]) -> str:
    return " / ".join(f"{v:.3g}" for v in values)


@app.command("query")
def query(
    sql: Annotated[str, typer.Argument(help="Read-only SQL over the views `pairs` and `versions`.")],
    store: StoreOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Run read-only SQL on the catalog (DuckDB). Statements that write are refused.

    Example: realign-data query "SELECT dataset, version, pair_type, count(*) FROM pairs GROUP BY ALL"
    """
    columns, rows = open_store(store).query(sql)
    emit(columns, rows, fmt)


@app.command("verify")
def verify(ref: Annotated[str, typer.Argument(help="NAME@vN")], store: StoreOption = None) -> None:
    """Re-hash every file of a version against its version record; any change is reported and exits 1.

    A missing or damaged catalog is rebuilt from the version records first, and that is said.
    """
    target = open_store(store)
    problems = target.verify(ref)
    version = target.resolve(ref)
    if problems:
        for problem in problems:
            print(f"{version.ref}: {problem}", file=sys.stderr)
        raise typer.Exit(1)
    console.print(f"{version.ref}: OK, {len(version.record['files'])} file(s) match their sha256")


@catalog_app.command("rebuild")
def catalog_rebuild(store: StoreOption = None) -> None:
    """Rebuild catalog.duckdb from the version records (after a crash, a full disk or a damaged file).

    The new catalog is written beside the old one, checked, and only then swapped in.
    """
    target = open_store(store)
    before = target.rebuild_catalog()
    console.print(f"{target.catalog_path}: rebuilt from {len(target.versions())} version record(s) (it was {before})")


@app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME@vN")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write into.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.jsonl,
    store: StoreOption = None,
) -> None:
    """Export a version as one JSONL file or as its Parquet shards plus its version record."""
    written = open_store(store).export(ref, fmt.value, out)
    console.print(f"wrote {written}")


RunIdOption = Annotated[
    str | None, typer.Option("--run-id", help="Cache folder under <store>/runs/ (default: the dataset name).")
]
FreshOption = Annotated[bool, typer.Option("--fresh", help="Discard this run's cached stage results first.")]


def _build_config(manifest: Path | None, sets: list[str] | None, **options: Any) -> BuildConfig:
    return load_config(BuildConfig, manifest, sets, options)


@contextmanager
def stage_progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """One rich progress bar per stage: yields ``task(description, total) -> advance(n)``."""
    columns = [
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console) as progress:

        def task(description: str, total: int) -> Callable[[int], None]:
            task_id = progress.add_task(description, total=total)
            return lambda n: progress.advance(task_id, n)

        yield task


def _quiet_transformers() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _run_stages(
    config: BuildConfig, store: Path | None, run_id: str | None, fresh: bool, until: str, commit: bool
) -> BuildResult:
    """Run the pipeline with one progress bar per stage; print the summary table."""
    from realign_data.build import Build  # torch and transformers load only for commands that need them

    _quiet_transformers()
    with stage_progress() as task:
        build = Build(config, open_store(store), run_id=run_id, fresh=fresh, progress=task)
        result = build.run(until)
        if commit:
            build.commit(result)
    _print_summary(result, until)
    return result


def _ended(total: int, truncated: int) -> str:
    """How many responses ended on their own (EOS or a stop string) and how many hit the token limit."""
    if not total:
        return "0"
    return f"{total}: {total - truncated} ended ({(total - truncated) / total:.0%}), {truncated} hit the token limit"


def _print_summary(result: BuildResult, until: str) -> None:
    stats = result.stats
    table = Table("", "value", title="realign-data build summary")
    if result.prompts is None:  # pairs rebuilt from a samples version
        assert result.samples_version is not None
        table.add_row("from samples", f"{result.samples_version.ref} (nothing generated or scored again)")
    else:
        counts = result.prompts.counts
        table.add_row(
            "prompts",
            f"{stats['prompts']} ({counts['read']} read, {counts['duplicates']} duplicates and "
            f"{counts.get('near_duplicates', 0)} near-duplicates dropped)",
        )
    table.add_row("samples", _ended(stats["samples"], stats["truncated_samples"]))
    table.add_row("revisions", _ended(stats["revisions"], stats.get("truncated_revisions", 0)))
    if result.prompts is not None:
        table.add_row("computed now", ", ".join(f"{k}={v}" for k, v in stats["computed"].items()) or "all cached")
    for name in ("sample_scores", "revision_scores"):
        if stats[name]:
            s = stats[name]
            table.add_row(name.replace("_", " "), f"mean {s['mean']:.3f}  min {s['min']:.3f}  max {s['max']:.3f}")
    if until == "pairs":
        for pair_type, counts in result.mix.items():
            kept = (
                counts["after"]
                if counts["before"] == counts["after"]
                else f"{counts['after']} (of {counts['before']}, weight {counts['weight']})"
            )
            table.add_row(f"pairs {pair_type}", str(kept))
        if result.dropped:
            table.add_row("dropped", ", ".join(f"{k}={v}" for k, v in sorted(result.dropped.items())))
        for pair_type, bias in length_bias(result.table).items():
            table.add_row(f"length {pair_type}", describe_length_bias(bias))
    for stage, failures in result.failures.items():
        reasons = ", ".join(f"{reason}={n}" for reason, n in stats["failures"][stage].items())
        shown = "; ".join(f"{f['id'][:16]}: {f['detail'][:60]}" for f in failures[:3])
        table.add_row(
            f"failed in {stage}", f"{len(failures)} ({reasons}), not cached: a rerun retries them; e.g. {shown}"
        )
    for stage, retries in stats["retries"].items():
        table.add_row(f"retried in {stage}", ", ".join(f"{reason}={n}" for reason, n in retries.items()))
    if result.samples_version is not None and result.prompts is not None:
        table.add_row("samples written", f"{result.samples_version.ref} (every response with its score)")
    if result.version is not None:
        table.add_row("version written", f"[bold green]{result.version.ref}[/] ({len(result.rows)} pairs)")
        table.add_row(
            "look at it",
            f'realign-data query "SELECT pair_type, count(*), avg(margin) FROM pairs '
            f"WHERE dataset = '{result.version.name}' AND version = {result.version.version} "
            f'GROUP BY 1"',
        )
    console.print(table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def _print_plan(config: BuildConfig, store: Path | None, run_id: str | None, fresh: bool, until: str, fmt: Format):
    """The build's remaining work per stage (realign_data.plan), as a table with its caveats, JSON or CSV."""
    from realign_data.build import Build
    from realign_data.plan import plan_build

    build = Build(config, open_store(store), run_id=run_id, fresh=fresh)
    plans = plan_build(build, until)
    if fmt is not Format.table:
        if fmt is Format.json:
            print_json(
                {"dataset": config.dataset, "run_dir": str(build.run_dir), "stages": [p.as_dict() for p in plans]}
            )
        else:
            emit(list(plans[0].as_dict()), [list(p.as_dict().values()) for p in plans], fmt)
        return
    table = Table("stage", "to run", "cached", "max tokens", "time", "cost", title=f"plan of {config.dataset}")
    for p in plans:
        bound = "" if p.exact else "<="
        unit = "req" if p.unit == "requests" else "items"
        time = "unknown" if p.seconds is None else f"{bound}{_duration(p.seconds)}"
        cost = "-" if p.cost_usd is None else f"{bound}${p.cost_usd:,.2f}"
        table.add_row(p.stage, f"{bound}{p.to_run:,} {unit}", f"{p.cached:,}", f"{p.new_tokens:,}", time, cost)
    console.print(table)
    unmeasured = {(p.worker, p.backend) for p in plans if p.seconds is None and p.to_run}
    for worker, backend in sorted(unmeasured):
        shown = re.sub(r"(sha256:[0-9a-f]{8})[0-9a-f]+", r"\1..", worker)
        console.print(f"time unknown for {shown}: nothing measured ({backend}, this host)")
    if not all(p.exact for p in plans):
        console.print("<=: counted before the responses it depends on exist (some may come out cached)")
    if all(p.cost_usd is None for p in plans):
        console.print("cost: set engine.price (USD per million tokens: input, output) to see it")


def _stage_command(until: str, commit: bool, doc: str):
    def command(
        manifest: ManifestOption = None,
        set_: SetOption = None,
        store: StoreOption = None,
        run_id: RunIdOption = None,
        fresh: FreshOption = False,
        dataset: Annotated[str | None, typer.Option(help="Dataset name to write.")] = None,
        prompts: Annotated[str | None, typer.Option(help="Prompt source (builtin, a file, or ID:SPLIT).")] = None,
        limit: Annotated[int | None, typer.Option(min=1, help="Number of prompts.")] = None,
        policy: Annotated[str | None, typer.Option(help="Policy model spec.")] = None,
        engine: Annotated[str | None, typer.Option(help="hf, openai or vllm.")] = None,
        num_samples: Annotated[int | None, typer.Option(min=1, help="Samples per prompt.")] = None,
        max_new_tokens: Annotated[int | None, typer.Option(min=1)] = None,
        ray: Annotated[
            str | None,
            typer.Option(
                "--ray",
                metavar="ADDRESS",
                help="Run the stages on Ray: local (start Ray on this machine), auto (the cluster `ray start` "
                "made) or a cluster address; sets execution.backend=ray.",
            ),
        ] = None,
        from_samples: str | None = typer.Option(  # a default, not an annotation: `hidden` depends on the stage
            None,
            "--from-samples",
            hidden=until != "pairs" or commit,
            help="Rebuild pairs from a stored samples version (NAME-samples@vN) under its build's config and "
            "your --set pairs.* rules, and write them as a new version: nothing is generated or scored again.",
        ),
        plan: Annotated[
            bool,
            typer.Option(
                "--plan",
                help="Show what is still to compute, stage by stage: requests left after the cache, the tokens "
                "they generate at most, the time at the throughput earlier runs of this store measured, the cost "
                "at engine.price. Loads no weights and writes nothing to the store.",
            ),
        ] = False,
        fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format of --plan.")] = Format.table,
    ) -> None:
        if fmt is not Format.table and not plan:
            raise InputError("--format goes with --plan (a build prints its summary as a table)")
        if from_samples is not None:
            given: dict[str, Any] = {"--manifest": manifest, "--run-id": run_id, "--fresh": fresh or None}
            given |= {"--prompts": prompts}
            given |= {"--limit": limit, "--policy": policy, "--engine": engine, "--num-samples": num_samples}
            given |= {"--max-new-tokens": max_new_tokens, "--ray": ray, "--plan": plan or None}
            clashing = [flag for flag, value in given.items() if value is not None]
            if until != "pairs" or commit or clashing:
                raise InputError(
                    "--from-samples takes only --set pairs.*, --dataset and --store"
                    + (f", not {', '.join(clashing)}" if clashing else f" and only on `pairs`, not `{until}`")
                )
            from realign_data.build import pairs_from_samples

            _print_summary(pairs_from_samples(open_store(store), from_samples, list(set_ or []), dataset), until)
            return
        config = _build_config(
            manifest,
            set_,
            **{
                "dataset": dataset,
                "prompts.source": prompts,
                "prompts.limit": limit,
                "policy.spec": policy,
                "engine.kind": engine,
                "generation.num_samples": num_samples,
                "generation.max_new_tokens": max_new_tokens,
                "execution.backend": "ray" if ray else None,
                "execution.address": ray,
            },
        )
        if plan:
            _print_plan(config, store, run_id, fresh, until, fmt)
        else:
            _run_stages(config, store, run_id, fresh, until, commit)

    command.__doc__ = doc
    return command


BUILD_HELP = (
    "Build a ReAlign pair dataset: generate, score, revise, pair and commit.\n\n"
    "With no arguments it runs the embedded CPU recipe (manifests/smoke-cpu.yaml): 16 built-in prompts x 2 samples "
    "from SmolLM2-135M-Instruct as policy, zero-shot reviser and judge. Finished work is cached under "
    "<store>/runs/<run-id>/, so an interrupted build resumes where it stopped.\n\n"
    "Examples:\n\n"
    "realign-data build\n\n"
    "realign-data build -m manifests/realign-qwen2.5-0.5b.yaml\n\n"
    "realign-data build --prompts my.jsonl --limit 200 --num-samples 4\n\n"
    "realign-data build --set pairs.mix='{on_policy: 1, revision: 0.5}' --dataset mixed"
)
app.command("build")(_stage_command("pairs", True, BUILD_HELP))
app.command("generate")(
    _stage_command(
        "generate", False, "Stage 1: sample K responses per prompt from the policy (cached; same options as build)."
    )
)
app.command("score")(
    _stage_command(
        "score", False, "Stage 2: score every sample with the judge or reward model (runs stage 1 as needed)."
    )
)
app.command("revise")(
    _stage_command(
        "revise", False, "Stage 3: revise drafts with the reviser and score the revisions (runs stages 1-2 as needed)."
    )
)
app.command("pairs")(
    _stage_command(
        "pairs",
        False,
        "Stage 4: construct and mix the pairs and print their counts, without writing a version (runs stages 1-3 "
        "as needed).\n\nWith --from-samples, rebuild the pairs of a stored samples version under other pair "
        "rules and write them as a new version, e.g.\n\n"
        "realign-data pairs --from-samples smoke-samples@v1 --set pairs.min_margin=1",
    )
)


@app.command("publish")
def publish(
    ref: Annotated[str, typer.Argument(help="NAME@vN")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo, ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    dry_run: Annotated[
        Path | None, typer.Option("--dry-run", help="Write the Hub folder here instead of uploading it.")
    ] = None,
    license_id: Annotated[str, typer.Option("--license", help="Licence id for the card.")] = "other",
    store: StoreOption = None,
) -> None:
    """Publish a version to the Hugging Face Hub: one config per pair_type plus default, and a dataset card \
with its full provenance. The token comes from HF_TOKEN or `hf auth login` and is never written anywhere.

    Example: realign-data publish smoke@v1 --repo-id me/realign-smoke --dry-run hub-preview/
    """
    from realign_data import hub

    target = open_store(store)
    if dry_run is not None:
        folder = hub.build_hub_folder(target, ref, dry_run, repo_id, license_id)
        console.print(f"wrote {folder} (README.md, margins.png, data/<config>/train-*.parquet); nothing uploaded")
        return
    result = hub.publish(target, ref, repo_id, private, license_id)
    console.print(f"{result['ref']} -> {result['repo_id']} @ {result['hub_commit']} ({result['status']})")


@app.command("pull")
def pull(
    spec: Annotated[str, typer.Argument(help="ORG/NAME or ORG/NAME@REVISION (branch, tag or commit sha).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Local dataset name.", show_default="the repo's NAME")
    ] = None,
    config: Annotated[str, typer.Option("--config", help="Dataset config to import (see its card).")] = "default",
    split: Annotated[str, typer.Option("--split", help="Split to import.")] = "train",
    store: StoreOption = None,
) -> None:
    """Import a dataset from the Hugging Face Hub as a new local version, checked against the pair contract \
(a dataset that breaks it is refused with the row and field, and nothing is written). The Hub commit sha is \
recorded in the version record.

    Example: realign-data pull me/realign-smoke@main --name smoke-shared
    """
    from realign_data import hub

    version = hub.pull(open_store(store), spec, name, config, split)
    hub_input = version.record["inputs"]["hub"]
    console.print(
        f"{hub_input['repo_id']}@{hub_input['commit']} -> {version.ref} "
        f"({version.record['num_rows']} pairs: {version.record['rows_by_pair_type']})"
    )


@app.command("diff")
def diff(
    left: Annotated[str, typer.Argument(help="NAME@vN")],
    right: Annotated[str, typer.Argument(help="NAME@vN")],
    store: StoreOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Compare two versions: pairs added and removed (by pair_id), prompts only on one side, score and margin \
shifts."""
    result = open_store(store).diff(left, right)
    if fmt is Format.json:
        print_json(result)
        return
    emit(["", "value"], [[key, value] for key, value in result.items()], fmt, title=f"{left} -> {right}")


@recipe_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def recipe_run(ctx: typer.Context) -> None:
    """Moved to `realign-train recipe MANIFEST` (the loop trains models, so it lives with the trainers)."""
    raise InputError(
        "`realign-data recipe run` has moved: run `realign-train recipe "
        + " ".join(shlex.quote(arg) for arg in ctx.args)
        + "`"
    )


def main() -> None:
    try:
        main_with_errors(app)
    finally:
        _tell_store_notices()
