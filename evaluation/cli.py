"""`realign-eval`: AlpacaEval 2 and Arena-Hard as reproducible report folders, and leaderboards across them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evaluation.alpaca import DEFAULT_ANNOTATOR
from evaluation.config import AlpacaEvalConfig, ArenaEvalConfig, load_eval_config
from realign_data.config import EngineConfig
from realign_data.errors import main_with_errors

app = typer.Typer(
    help="Benchmark a model on AlpacaEval 2 or Arena-Hard with any OpenAI-compatible or local judge; "
    "every judge call is cached, every setting recorded in the report folder. An evaluation is "
    "also a YAML manifest: -m manifests/eval-alpaca-offline.yaml --set judge.model=NAME.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console()
_ALPACA, _ARENA = AlpacaEvalConfig(), ArenaEvalConfig()  # their defaults, shown in --help

Manifest = Annotated[
    Path | None,
    typer.Option(
        "--manifest", "-m", help="YAML evaluation manifest (see manifests/eval-*.yaml); flags and --set override it."
    ),
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a field, e.g. --set judge.model=gpt-4.1 or --set benchmark.limit=8 (repeatable)."
    ),
]
Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Report folder to write (required, unless the manifest sets output)."),
]
OutputsFile = Annotated[Path | None, typer.Option("--outputs", help="Existing answers of the model.")]
ModelSpec = Annotated[str | None, typer.Option("--model", help="Generate answers with this model spec.")]
ModelEngine = Annotated[
    str | None,
    typer.Option("--engine", help="Engine for --model: hf, openai or vllm.", show_default=EngineConfig().kind),
]
ModelUrls = Annotated[list[str] | None, typer.Option("--base-url", help="Server(s) for --engine openai.")]
JudgeModel = Annotated[str | None, typer.Option("--judge-model", help="Judge model name (server) or spec (hf).")]
JudgeUrls = Annotated[
    list[str] | None,
    typer.Option("--judge-base-url", help="OpenAI-compatible judge server(s); the key comes from $OPENAI_API_KEY."),
]
JudgeEngine = Annotated[
    str | None,
    typer.Option(
        "--judge-engine", help="openai (a server) or hf (in-process).", show_default=_ALPACA.judge.engine.kind
    ),
]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate the first N items only.")]
Name = Annotated[str | None, typer.Option("--name", help="Model name in the report (default: from the answers).")]
References = Annotated[
    Path | None, typer.Option("--reference-leaderboard", help="Published leaderboard CSV to plot beside the model.")
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        help="Answer length limit when generating.",
        show_default=str(_ALPACA.answers.max_new_tokens),
    ),
]
Prices = Annotated[
    str | None,
    typer.Option(
        "--judge-prices",
        help="USD per million prompt and completion tokens, e.g. 2.5,10: the report then gives the judge's cost.",
    ),
]


@app.command("alpaca")
def alpaca(
    output: Output = None,
    manifest: Manifest = None,
    set_: Sets = None,
    annotations: Annotated[
        Path | None,
        typer.Option("--annotations", help="Recompute the metrics from existing annotations (alpaca_eval layout)."),
    ] = None,
    outputs: OutputsFile = None,
    eval_set: Annotated[
        Path | None,
        typer.Option(
            "--eval-set", help="AlpacaEval set with reference outputs (default: the Hub dataset tatsu-lab/alpaca_eval)."
        ),
    ] = None,
    model: ModelSpec = None,
    engine: ModelEngine = None,
    base_url: ModelUrls = None,
    max_new_tokens: MaxTokens = None,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeUrls = None,
    judge_engine: JudgeEngine = None,
    annotator: Annotated[
        str | None,
        typer.Option(
            help="alpaca_eval evaluator config, run as its configs.yaml "
            "says (template, completion settings, parser, order "
            "randomization).",
            show_default=DEFAULT_ANNOTATOR,
        ),
    ] = None,
    judge_mode: Annotated[
        str | None,
        typer.Option(
            "--judge-mode",
            help="For a logprob annotator (the default one): 'logprobs' (default; a judge "
            "that returns none is refused) or 'discrete' (a judge without logprobs: the "
            "sampled token counts as probability 1, labelled so in the report).",
        ),
    ] = None,
    limit: Limit = None,
    name: Name = None,
    lc_data: Annotated[
        Path | None,
        typer.Option(
            "--lc-data", help="tatsu-lab/alpaca_eval's df_gamed.csv, needed for the length-controlled win rate."
        ),
    ] = None,
    reference_leaderboard: References = None,
    judge_prices: Prices = None,
) -> None:
    """AlpacaEval 2: judge the model's outputs against the reference outputs (or rescore --annotations).

    Example: realign-eval alpaca --annotations ann.json --outputs model_outputs.json -o reports/alpaca

    From a manifest (flags and --set override it; report.json stores the effective config):
    realign-eval alpaca -m manifests/eval-alpaca-offline.yaml --set benchmark.eval_set=reference_outputs.json
    """
    from evaluation.alpaca_run import run_alpaca

    config = load_eval_config(
        AlpacaEvalConfig,
        manifest,
        set_,
        {
            "-o": output,
            "--annotations": annotations,
            "--outputs": outputs,
            "--eval-set": eval_set,
            "--model": model,
            "--engine": engine,
            "--base-url": base_url,
            "--max-new-tokens": max_new_tokens,
            "--judge-model": judge_model,
            "--judge-base-url": judge_base_url,
            "--judge-engine": judge_engine,
            "--annotator": annotator,
            "--judge-mode": judge_mode,
            "--limit": limit,
            "--name": name,
            "--lc-data": lc_data,
            "--reference-leaderboard": reference_leaderboard,
            "--judge-prices": judge_prices,
        },
    )
    report = run_alpaca(config)
    metrics = report["metrics"]
    error = f"{metrics['standard_error']:.2f}" if metrics.get("standard_error") is not None else "undefined"
    console.print(
        f"[bold]{report['model']['name']}[/]: win rate {metrics['win_rate']:.2f} "
        f"(SE {error}, n={metrics['n_total']}); LC "
        + (
            f"{metrics['length_controlled_winrate']:.2f}"
            if metrics.get("length_controlled_winrate") is not None
            else f"unavailable: {metrics['lc_unavailable']}"
        )
        + f"\nreport: {config.output}/report.md"
    )


@app.command("arena")
def arena(
    output: Output = None,
    manifest: Manifest = None,
    set_: Sets = None,
    judgments: Annotated[
        Path | None,
        typer.Option("--judgments", help="Rescore existing judgment files (official layout, one .jsonl per model)."),
    ] = None,
    judge_config: Annotated[
        Path | None,
        typer.Option(
            "--judge-config",
            help="Official judge config YAML: "
            "v0.1 judge_config.yaml (default: downloaded at the "
            "pinned commit) or arena-hard-v2.0.yaml; with "
            "--judgments it picks the scoring method.",
        ),
    ] = None,
    judge_settings: Annotated[
        Path | None,
        typer.Option(
            "--judge-settings",
            help="Per-category baselines and "
            "system prompts (v2.0): upstream's utils/judge_utils.py "
            "(read, never run) or a YAML/JSON copy of its "
            "JUDGE_SETTINGS.",
        ),
    ] = None,
    questions: Annotated[Path | None, typer.Option("--questions", help="question.jsonl")] = None,
    baseline_answers: Annotated[
        list[Path] | None,
        typer.Option("--baseline-answers", help="Baseline answers (official layout); one file per baseline model."),
    ] = None,
    answers_dir: Annotated[
        Path | None, typer.Option("--answers-dir", help="With --judgments and --style-control: every model's answers.")
    ] = None,
    style_control: Annotated[
        bool | None,
        typer.Option("--style-control", help="Hold out answer length and markdown effects.", show_default=False),
    ] = None,
    outputs: OutputsFile = None,
    model: ModelSpec = None,
    engine: ModelEngine = None,
    base_url: ModelUrls = None,
    max_new_tokens: MaxTokens = None,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeUrls = None,
    judge_engine: JudgeEngine = None,
    limit: Limit = None,
    name: Name = None,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline model name.", show_default=_ARENA.benchmark.baseline)
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Bootstrap rounds.", show_default=str(_ARENA.benchmark.rounds))
    ] = None,
    reference_leaderboard: References = None,
    judge_prices: Prices = None,
    judge_code: Annotated[
        Path | None,
        typer.Option(
            "--judge-code",
            help="lm-sys gen_judgment.py (v0.1), read "
            "for its continuation message (default: downloaded at "
            "the pinned commit).",
        ),
    ] = None,
) -> None:
    """Arena-Hard v0.1 and v2.0: two games per question against the baseline, scored as each version's official \
show_result.py does (v0.1: Bradley-Terry, 2.5/97.5 percentiles; v2.0: per category, bootstrap means, 5/95 \
percentiles), optional style control.

    Example: realign-eval arena --judgments data/model_judgment/gpt-4-1106-preview -o reports/arena

    From a manifest (flags and --set override it; report.json stores the effective config):
    realign-eval arena -m manifests/eval-arena-v2.yaml --judge-base-url https://api.openai.com/v1
    """
    from evaluation.arena_run import run_arena

    config = load_eval_config(
        ArenaEvalConfig,
        manifest,
        set_,
        {
            "-o": output,
            "--judgments": judgments,
            "--judge-config": judge_config,
            "--judge-settings": judge_settings,
            "--questions": questions,
            "--baseline-answers": baseline_answers,
            "--answers-dir": answers_dir,
            "--style-control": style_control,
            "--outputs": outputs,
            "--model": model,
            "--engine": engine,
            "--base-url": base_url,
            "--max-new-tokens": max_new_tokens,
            "--judge-model": judge_model,
            "--judge-base-url": judge_base_url,
            "--judge-engine": judge_engine,
            "--limit": limit,
            "--name": name,
            "--baseline": baseline,
            "--rounds": rounds,
            "--reference-leaderboard": reference_leaderboard,
            "--judge-prices": judge_prices,
            "--judge-code": judge_code,
        },
    )
    report = run_arena(config)
    for row in report["leaderboard"]:
        label = f"{row['model']} [{row['category']}]" if "category" in row else row["model"]
        console.print(f"{label:<50} {row['score']:6.2f}  ({row['lower']:.2f}, {row['upper']:.2f})")
    console.print(f"report: {config.output}/report.md")


@app.command("compare")
def compare(
    reports: Annotated[list[Path], typer.Argument(help="Report folders written by alpaca or arena.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write leaderboard.md and leaderboard.csv here.")
    ] = None,
    reference_leaderboard: References = None,
) -> None:
    """A leaderboard across report folders (DuckDB over their report.json), with published reference rows."""
    from evaluation.compare import leaderboard_rows
    from evaluation.report import check_output, markdown_table

    if output is not None:
        check_output(output)
    columns, rows = leaderboard_rows(reports, reference_leaderboard)
    table = markdown_table(columns, rows)
    print(table, end="")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "leaderboard.md").write_text(table)
        with open(output / "leaderboard.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([columns, *rows])


def main() -> None:
    main_with_errors(app)
