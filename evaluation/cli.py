"""`realign-eval`: AlpacaEval 2 and Arena-Hard as reproducible report folders, and leaderboards across them."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evaluation.alpaca import DEFAULT_ANNOTATOR
from realign_data.config import EngineConfig, ModelConfig
from realign_data.errors import InputError, main_with_errors
from realign_data.models import realign_home
from realign_data.provenance import strip_url_credentials

app = typer.Typer(help="Benchmark a model on AlpacaEval 2 or Arena-Hard with any OpenAI-compatible or local judge; "
                       "every judge call is cached, every setting recorded in the report folder.",
                  no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)
console = Console()
ENGINES = ("hf", "openai", "vllm")

Output = Annotated[Path, typer.Option("--output", "-o", help="Report folder to write.")]
OutputsFile = Annotated[Path | None, typer.Option("--outputs", help="Existing answers of the model.")]
ModelSpec = Annotated[str | None, typer.Option("--model", help="Generate answers with this model spec.")]
ModelEngine = Annotated[str, typer.Option("--engine", help="Engine for --model: hf, openai or vllm.")]
ModelUrls = Annotated[list[str] | None, typer.Option("--base-url", help="Server(s) for --engine openai.")]
JudgeModel = Annotated[str | None, typer.Option("--judge-model", help="Judge model name (server) or spec (hf).")]
JudgeUrls = Annotated[list[str] | None, typer.Option("--judge-base-url", help="OpenAI-compatible judge server(s); "
                                                     "the key comes from $OPENAI_API_KEY.")]
JudgeEngine = Annotated[str, typer.Option("--judge-engine", help="openai (a server) or hf (in-process).")]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate the first N items only.")]
Name = Annotated[str | None, typer.Option("--name", help="Model name in the report (default: from the answers).")]
References = Annotated[Path | None, typer.Option("--reference-leaderboard",
                                                 help="Published leaderboard CSV to plot beside the model.")]
MaxTokens = Annotated[int, typer.Option("--max-new-tokens", help="Answer length limit when generating.")]
Prices = Annotated[str | None, typer.Option("--judge-prices", help="USD per million prompt and completion tokens, "
                                            "e.g. 2.5,10: the report then gives the judge's cost.")]


def parse_prices(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        prompt, completion = (float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--judge-prices {text!r}: expected two numbers, e.g. 2.5,10") from None
    if not all(math.isfinite(price) and price >= 0 for price in (prompt, completion)):
        raise InputError(f"--judge-prices {text!r}: prices must be finite and not negative")
    return prompt, completion


def _urls(urls: list[str] | None) -> list[str]:
    """Server URLs as recorded in a report: credentials (user:key@) removed."""
    return [strip_url_credentials(url) for url in urls or []]


def _judge(engine: str, model: str | None, urls: list[str] | None, default_model: str, prices: str | None):
    """The cached judge; each benchmark sends it the sampling settings of its official config."""
    from evaluation.judging import CachedJudge
    from realign_data.engines import create_engine

    engine_config = EngineConfig(kind=engine, base_urls=urls or [])
    judge_model = ModelConfig(spec=model or default_model)
    generator = create_engine(engine_config, judge_model)
    judge_id = generator.model_id
    judge = CachedJudge(generator, judge_id, realign_home() / "judge-cache.sqlite", prices=parse_prices(prices))
    return judge, {"engine": engine, "model": strip_url_credentials(judge_model.spec),
                   "id": strip_url_credentials(judge_id), "base_urls": _urls(urls),
                   "prices_usd_per_million_tokens": parse_prices(prices)}


def _answers(prompts: dict[str, str], model: str | None, engine: str, urls: list[str] | None, max_new_tokens: int):
    from evaluation.answers import generate_answers

    if model is None:
        raise InputError("no answers: pass --outputs FILE or --model SPEC to generate them")
    with console.status(f"generating {len(prompts)} answers with {model} ..."):
        answers, settings = generate_answers(prompts, ModelConfig(spec=model),
                                             EngineConfig(kind=engine, base_urls=urls or []), max_new_tokens)
    settings = {**settings, "model": strip_url_credentials(str(settings["model"])),
                "model_id": strip_url_credentials(str(settings["model_id"])), "base_urls": _urls(urls)}
    return answers, settings


def _check_engine_names(judge_engine: str, engine: str) -> None:
    for kind, option in ((engine, "--engine"), (judge_engine, "--judge-engine")):
        if kind not in ENGINES:
            raise InputError(f"{option} {kind!r}: expected one of {', '.join(ENGINES)}")


def _check_servers(judging: bool, generating: bool, judge_engine: str, judge_urls: list[str] | None, engine: str,
                   urls: list[str] | None) -> None:
    """The servers an openai engine needs: checked once the input files are read, before any answer is generated."""
    if judging and judge_engine == "openai" and not judge_urls:
        raise InputError("--judge-engine openai needs --judge-base-url URL (an OpenAI-compatible server), or use "
                         "--judge-engine hf")
    if generating and engine == "openai" and not urls:
        raise InputError("--engine openai needs --base-url URL (an OpenAI-compatible server serving --model)")


def _refuse_unused(when: str, **options: object) -> None:
    """Options that the chosen mode would ignore stop the run: a flag never silently has no effect."""
    given = ["--" + name.replace("_", "-") for name, value in options.items() if value is not None]
    if given:
        raise InputError(f"{', '.join(given)}: not used {when}")


@app.command("alpaca")
def alpaca(output: Output, annotations: Annotated[Path | None, typer.Option(
               "--annotations", help="Recompute the metrics from existing annotations (alpaca_eval layout).")] = None,
           outputs: OutputsFile = None,
           eval_set: Annotated[Path | None, typer.Option("--eval-set", help="AlpacaEval set with reference outputs "
                                                         "(default: the Hub dataset tatsu-lab/alpaca_eval).")] = None,
           model: ModelSpec = None, engine: ModelEngine = "hf", base_url: ModelUrls = None,
           max_new_tokens: MaxTokens = 1024, judge_model: JudgeModel = None, judge_base_url: JudgeUrls = None,
           judge_engine: JudgeEngine = "openai",
           annotator: Annotated[str, typer.Option(help="alpaca_eval evaluator config, run as its configs.yaml "
                                                  "says (template, completion settings, parser, order "
                                                  "randomization).")] = DEFAULT_ANNOTATOR,
           judge_mode: Annotated[str | None, typer.Option(
               "--judge-mode", help="For a logprob annotator (the default one): 'logprobs' (default; a judge "
                                    "that returns none is refused) or 'discrete' (a judge without logprobs: the "
                                    "sampled token counts as probability 1, labelled so in the report).")] = None,
           limit: Limit = None, name: Name = None,
           lc_data: Annotated[Path | None, typer.Option("--lc-data", help="tatsu-lab/alpaca_eval's df_gamed.csv, "
                                                        "needed for the length-controlled win rate.")] = None,
           reference_leaderboard: References = None, judge_prices: Prices = None) -> None:
    """AlpacaEval 2: judge the model's outputs against the reference outputs (or rescore --annotations).

    Example: realign-eval alpaca --annotations ann.json --outputs model_outputs.json -o reports/alpaca
    """
    from evaluation.alpaca_run import run_alpaca

    parse_prices(judge_prices)
    _check_engine_names(judge_engine, engine)
    if annotations is not None:
        _refuse_unused("when --annotations are rescored (they judge anew)", eval_set=eval_set, model=model,
                       base_url=base_url, judge_model=judge_model, judge_base_url=judge_base_url, limit=limit,
                       judge_prices=judge_prices, judge_mode=judge_mode)
    report = run_alpaca(output=output, annotations=annotations, outputs=outputs, eval_set=eval_set, limit=limit,
                        name=name, lc_data=lc_data, reference_leaderboard=reference_leaderboard, annotator=annotator,
                        make_answers=lambda prompts: _answers(prompts, model, engine, base_url, max_new_tokens),
                        make_judge=lambda spec: _judge(judge_engine, judge_model, judge_base_url, spec.model_name,
                                                       judge_prices),
                        check_servers=lambda: _check_servers(True, outputs is None and model is not None,
                                                             judge_engine, judge_base_url, engine, base_url),
                        judge_mode=judge_mode)
    metrics = report["metrics"]
    error = f"{metrics['standard_error']:.2f}" if metrics.get("standard_error") is not None else "undefined"
    console.print(f"[bold]{report['model']['name']}[/]: win rate {metrics['win_rate']:.2f} "
                  f"(SE {error}, n={metrics['n_total']}); LC "
                  + (f"{metrics['length_controlled_winrate']:.2f}" if metrics.get('length_controlled_winrate')
                     is not None else f"unavailable: {metrics['lc_unavailable']}") + f"\nreport: {output}/report.md")


@app.command("arena")
def arena(output: Output, judgments: Annotated[Path | None, typer.Option(
              "--judgments", help="Rescore existing judgment files (official layout, one .jsonl per model).")] = None,
          judge_config: Annotated[Path | None, typer.Option("--judge-config", help="Official judge config YAML: "
                                                            "v0.1 judge_config.yaml (default: downloaded at the "
                                                            "pinned commit) or arena-hard-v2.0.yaml; with "
                                                            "--judgments it picks the scoring method.")] = None,
          judge_settings: Annotated[Path | None, typer.Option("--judge-settings", help="Per-category baselines and "
                                                              "system prompts (v2.0): upstream's utils/judge_utils.py "
                                                              "(read, never run) or a YAML/JSON copy of its "
                                                              "JUDGE_SETTINGS.")] = None,
          questions: Annotated[Path | None, typer.Option("--questions", help="question.jsonl")] = None,
          baseline_answers: Annotated[list[Path] | None, typer.Option(
              "--baseline-answers", help="Baseline answers (official layout); one file per baseline model.")] = None,
          answers_dir: Annotated[Path | None, typer.Option("--answers-dir", help="With --judgments and "
                                                           "--style-control: every model's answers.")] = None,
          style_control: Annotated[bool, typer.Option("--style-control", help="Hold out answer length and "
                                                      "markdown effects.")] = False,
          outputs: OutputsFile = None, model: ModelSpec = None, engine: ModelEngine = "hf",
          base_url: ModelUrls = None, max_new_tokens: MaxTokens = 1024, judge_model: JudgeModel = None,
          judge_base_url: JudgeUrls = None, judge_engine: JudgeEngine = "openai", limit: Limit = None,
          name: Name = None, baseline: Annotated[str, typer.Option(help="Baseline model name.")] = "gpt-4-0314",
          rounds: Annotated[int, typer.Option(min=1, help="Bootstrap rounds.")] = 100,
          reference_leaderboard: References = None, judge_prices: Prices = None,
          judge_code: Annotated[Path | None, typer.Option("--judge-code", help="lm-sys gen_judgment.py (v0.1), read "
                                                          "for its continuation message (default: downloaded at "
                                                          "the pinned commit).")] = None) -> None:
    """Arena-Hard v0.1 and v2.0: two games per question against the baseline, scored as each version's official \
show_result.py does (v0.1: Bradley-Terry, 2.5/97.5 percentiles; v2.0: per category, bootstrap means, 5/95 \
percentiles), optional style control.

    Example: realign-eval arena --judgments data/model_judgment/gpt-4-1106-preview -o reports/arena
    """
    from evaluation.arena_run import run_arena

    parse_prices(judge_prices)
    _check_engine_names(judge_engine, engine)
    if judgments is not None:
        _refuse_unused("when --judgments are rescored (they judge anew)", questions=questions,
                       baseline_answers=baseline_answers, outputs=outputs, model=model, base_url=base_url,
                       judge_model=judge_model, judge_base_url=judge_base_url, limit=limit, name=name,
                       judge_prices=judge_prices, judge_code=judge_code)
    else:
        _refuse_unused("without --judgments (answers for style control come with the new judgments)",
                       answers_dir=answers_dir)
    report = run_arena(output=output, judgments=judgments, judge_config=judge_config, judge_settings=judge_settings,
                       questions=questions, baseline_answers=baseline_answers, answers_dir=answers_dir,
                       outputs=outputs, limit=limit, name=name, baseline=baseline, rounds=rounds,
                       style_control=style_control, reference_leaderboard=reference_leaderboard,
                       make_answers=lambda prompts: _answers(prompts, model, engine, base_url, max_new_tokens),
                       make_judge=lambda spec: _judge(judge_engine, judge_model, judge_base_url, spec.judge_model,
                                                      judge_prices), judge_code=judge_code,
                       check_servers=lambda: _check_servers(True, outputs is None and model is not None,
                                                            judge_engine, judge_base_url, engine, base_url))
    for row in report["leaderboard"]:
        label = f"{row['model']} [{row['category']}]" if "category" in row else row["model"]
        console.print(f"{label:<50} {row['score']:6.2f}  ({row['lower']:.2f}, {row['upper']:.2f})")
    console.print(f"report: {output}/report.md")


@app.command("compare")
def compare(reports: Annotated[list[Path], typer.Argument(help="Report folders written by alpaca or arena.")],
            output: Annotated[Path | None, typer.Option("--output", "-o", help="Write leaderboard.md and "
                                                        "leaderboard.csv here.")] = None,
            reference_leaderboard: References = None) -> None:
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

