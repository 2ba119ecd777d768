"""Typed `realign-eval` configs: an evaluation saved as a YAML manifest, diffed and replayed like a build.

``realign-eval alpaca|arena -m eval.yaml --set judge.model=gpt-4.1 -o reports/x``: the model's defaults, then the
manifest, then ``--set`` overrides, then explicit CLI options (see :func:`realign_data.config.load_config`). Every
CLI option is a dotted key (:data:`FLAGS`); a config error names the key and, where there is one, its flag. Each
report.json stores the effective config under ``config``. Paths are relative to the working directory.

Sections: ``answers`` (the model under test: its answers file, or a model and engine that generate them),
``judge`` (the judge's engine, model and prices) and ``benchmark`` (the benchmark's own files and settings).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, field_validator

from evaluation.alpaca import DEFAULT_ANNOTATOR
from realign_data.config import EngineConfig, ModelConfig, StrictModel, load_config
from realign_data.errors import InputError
from realign_data.provenance import strip_url_credentials

# CLI flag -> dotted config key (both commands; the benchmark keys of one are unknown keys of the other)
FLAGS = {
    "-o": "output",
    "--outputs": "answers.outputs",
    "--model": "answers.model.spec",
    "--engine": "answers.engine.kind",
    "--base-url": "answers.engine.base_urls",
    "--max-new-tokens": "answers.max_new_tokens",
    "--name": "answers.name",
    "--judge-engine": "judge.engine.kind",
    "--judge-model": "judge.model",
    "--judge-base-url": "judge.engine.base_urls",
    "--judge-prices": "judge.prices",
    "--limit": "benchmark.limit",
    "--reference-leaderboard": "benchmark.reference_leaderboard",
    # alpaca
    "--annotations": "benchmark.annotations",
    "--eval-set": "benchmark.eval_set",
    "--annotator": "benchmark.annotator",
    "--judge-mode": "benchmark.judge_mode",
    "--lc-data": "benchmark.lc_data",
    # arena
    "--judgments": "benchmark.judgments",
    "--judge-config": "benchmark.judge_config",
    "--judge-settings": "benchmark.judge_settings",
    "--questions": "benchmark.questions",
    "--baseline-answers": "benchmark.baseline_answers",
    "--answers-dir": "benchmark.answers_dir",
    "--style-control": "benchmark.style_control",
    "--baseline": "benchmark.baseline",
    "--rounds": "benchmark.rounds",
    "--judge-code": "benchmark.judge_code",
}
FLAG_OF = {key: flag for flag, key in FLAGS.items()} | {"answers.model": "--model"}
Price = Annotated[float, Field(ge=0)]


class AnswersConfig(StrictModel):
    """The model under test: its existing answers (``outputs``), or a model whose answers are generated."""

    outputs: Path | None = Field(None, description="existing answers of the model (--outputs)")
    model: ModelConfig | None = Field(None, description="generate answers with this model (--model SPEC)")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="engine for `model` (--engine, --base-url)")
    max_new_tokens: int = Field(1024, ge=1, description="answer length limit when generating")
    name: str | None = Field(None, description="model name in the report; default: from the answers")

    def generate(self, prompts: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        """Greedy answers keyed like ``prompts``, and the settings to record (URL credentials removed)."""
        from rich.console import Console

        from evaluation.answers import generate_answers

        if self.model is None:
            raise InputError("no answers: pass --outputs FILE or --model SPEC to generate them")
        with Console().status(f"generating {len(prompts)} answers with {self.model.spec} ..."):
            answers, settings = generate_answers(prompts, self.model, self.engine, self.max_new_tokens)
        return answers, {
            **settings,
            "model": strip_url_credentials(str(settings["model"])),
            "model_id": strip_url_credentials(str(settings["model_id"])),
            "base_urls": _urls(self.engine.base_urls),
        }


class JudgeEngineConfig(EngineConfig):
    """The judge's engine: an OpenAI-compatible server unless told otherwise."""

    kind: Literal["hf", "openai", "vllm"] = "openai"


class JudgeConfig(StrictModel):
    """The judge: every call is cached in $REALIGN_HOME/judge-cache.sqlite; sampling follows the benchmark."""

    engine: JudgeEngineConfig = Field(
        default_factory=JudgeEngineConfig,
        description="--judge-engine (openai: a "
        "server, hf: in-process), --judge-base-url; the key comes from $OPENAI_API_KEY",
    )
    model: str | None = Field(
        None, description="judge model name (server) or spec (hf); default: the benchmark's official judge"
    )
    prices: tuple[Price, Price] | None = Field(
        None,
        description="USD per million prompt and completion tokens, "
        "e.g. [2.5, 10]: the report then gives the judge's cost",
    )

    @field_validator("prices", mode="before")
    @classmethod
    def _prices_text(cls, value: Any) -> Any:
        """``"2.5,10"`` (as --judge-prices takes them) is two numbers too."""
        if not isinstance(value, str):
            return value
        try:
            return tuple(float(part) for part in value.split(","))
        except ValueError:
            raise ValueError("expected two numbers, e.g. 2.5,10") from None

    def create(self, default_model: str):
        """The cached judge and what the report records of it; each benchmark sends its official sampling."""
        from evaluation.judging import CachedJudge
        from realign_data.engines import create_engine
        from realign_data.files import realign_home

        judge_model = ModelConfig(spec=self.model or default_model)
        generator = create_engine(self.engine, judge_model)
        judge_id = generator.model_id
        judge = CachedJudge(generator, judge_id, realign_home() / "judge-cache.sqlite", prices=self.prices)
        return judge, {
            "engine": self.engine.kind,
            "model": strip_url_credentials(judge_model.spec),
            "id": strip_url_credentials(judge_id),
            "base_urls": _urls(self.engine.base_urls),
            "prices_usd_per_million_tokens": list(self.prices) if self.prices else None,
        }


class AlpacaBenchmarkConfig(StrictModel):
    """AlpacaEval 2: judge against the reference outputs, or rescore existing annotations."""

    annotations: Path | None = Field(
        None, description="recompute the metrics from existing annotations (alpaca_eval layout)"
    )
    eval_set: Path | None = Field(
        None, description="AlpacaEval set with reference outputs; default: the Hub dataset tatsu-lab/alpaca_eval"
    )
    annotator: str = Field(DEFAULT_ANNOTATOR, description="alpaca_eval evaluator config, run as its configs.yaml says")
    judge_mode: Literal["logprobs", "discrete"] | None = Field(
        None, description="for a logprob annotator: logprobs (default) or discrete"
    )
    limit: int | None = Field(None, ge=1, description="evaluate the first N instructions only")
    lc_data: Path | None = Field(None, description="tatsu-lab/alpaca_eval's df_gamed.csv, for the LC win rate")
    reference_leaderboard: Path | None = Field(None, description="published leaderboard CSV to plot beside the model")


class ArenaBenchmarkConfig(StrictModel):
    """Arena-Hard v0.1 or v2.0: judge two games per question against the baseline, or rescore judgments."""

    judgments: Path | None = Field(None, description="rescore these judgment files (one .jsonl per model)")
    judge_config: Path | None = Field(
        None,
        description="official judge config YAML (v0.1 judge_config.yaml, "
        "default: downloaded at the pinned commit, or arena-hard-v2.0.yaml)",
    )
    judge_settings: Path | None = Field(None, description="v2.0 per-category baselines and system prompts")
    questions: Path | None = Field(None, description="question.jsonl; default: v0.1's, downloaded")
    baseline_answers: list[Path] = Field(
        default_factory=list,
        description="one answer file per baseline model; default: v0.1's gpt-4-0314 answers, downloaded",
    )
    answers_dir: Path | None = Field(None, description="with judgments and style_control: every model's answers")
    style_control: bool = Field(False, description="hold out answer length and markdown effects")
    baseline: str = Field("gpt-4-0314", description="baseline model name")
    rounds: int = Field(100, ge=1, description="bootstrap rounds")
    judge_code: Path | None = Field(
        None,
        description="lm-sys gen_judgment.py (v0.1), read for its continuation "
        "message; default: downloaded at the pinned commit",
    )
    limit: int | None = Field(None, ge=1, description="judge the first N questions only")
    reference_leaderboard: Path | None = Field(None, description="published leaderboard CSV to plot beside the model")


class EvalConfig(StrictModel):
    """What both benchmarks share: the report folder, the model's answers and the judge."""

    output: Path | None = Field(None, description="report folder to write (-o)")
    answers: AnswersConfig = Field(default_factory=AnswersConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    def report_folder(self) -> Path:
        if self.output is None:
            raise InputError("no report folder: pass -o DIR (or output: DIR in the manifest)")
        return self.output

    def check_servers(self) -> None:
        """The servers an openai engine needs: checked once the input files are read, before any answer is made."""
        if self.judge.engine.kind == "openai" and not self.judge.engine.base_urls:
            raise InputError(
                "--judge-engine openai needs --judge-base-url URL (an OpenAI-compatible server), or use "
                "--judge-engine hf"
            )
        answers = self.answers
        if (
            answers.outputs is None
            and answers.model is not None
            and answers.engine.kind == "openai"
            and not answers.engine.base_urls
        ):
            raise InputError("--engine openai needs --base-url URL (an OpenAI-compatible server serving --model)")

    def _refuse(self, when: str, keys: tuple[str, ...]) -> None:
        """Options that the chosen mode would ignore stop the run, whether they came from a flag, a manifest or
        --set: a setting never silently has no effect."""
        given = [f"{FLAG_OF[key]} ({key})" for key in keys if _value(self, key) not in (None, [], False)]
        if given:
            raise InputError(f"{', '.join(given)}: not used {when}")

    def _refuse_generation_beside_outputs(self) -> None:
        """With answers from a file, the settings that would generate them are refused, not ignored."""
        if self.answers.outputs is not None:
            self._refuse(
                "when --outputs give the answers (nothing is generated)", ("answers.model", "answers.engine.base_urls")
            )


class AlpacaEvalConfig(EvalConfig):
    """`realign-eval alpaca`: AlpacaEval 2."""

    benchmark: AlpacaBenchmarkConfig = Field(default_factory=AlpacaBenchmarkConfig)

    def refuse_unused(self) -> None:
        if self.benchmark.annotations is not None:
            self._refuse(
                "when --annotations are rescored (they judge anew)",
                (
                    "benchmark.eval_set",
                    "answers.model",
                    "answers.engine.base_urls",
                    "judge.model",
                    "judge.engine.base_urls",
                    "benchmark.limit",
                    "judge.prices",
                    "benchmark.judge_mode",
                ),
            )
        else:
            self._refuse_generation_beside_outputs()


class ArenaEvalConfig(EvalConfig):
    """`realign-eval arena`: Arena-Hard v0.1 and v2.0."""

    benchmark: ArenaBenchmarkConfig = Field(default_factory=ArenaBenchmarkConfig)

    def refuse_unused(self) -> None:
        if self.benchmark.judgments is not None:
            self._refuse(
                "when --judgments are rescored (they judge anew)",
                (
                    "benchmark.questions",
                    "benchmark.baseline_answers",
                    "answers.outputs",
                    "answers.model",
                    "answers.engine.base_urls",
                    "judge.model",
                    "judge.engine.base_urls",
                    "benchmark.limit",
                    "answers.name",
                    "judge.prices",
                    "benchmark.judge_code",
                ),
            )
        else:
            self._refuse(
                "without --judgments (answers for style control come with the new judgments)",
                ("benchmark.answers_dir",),
            )
            self._refuse_generation_beside_outputs()


Config = TypeVar("Config", bound=EvalConfig)
_ERROR_KEY = re.compile(r"(?<=[:;] )([a-z_]+(?:\.[a-z_]+)*)((?:\.\d+)*)(?=: )")


def load_eval_config(
    model: type[Config],
    manifest: Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> Config:
    """The effective config: defaults < manifest < ``--set`` < explicit flags (``{"--limit": 8}``; None: not
    given). An error names each bad key and its flag, e.g. ``benchmark.limit (--limit)``."""
    options = {FLAGS[flag]: value for flag, value in (flags or {}).items()}
    try:
        return load_config(model, manifest, sets, options)
    except InputError as exc:
        raise InputError(
            _ERROR_KEY.sub(lambda m: m[0] + (f" ({FLAG_OF[m[1]]})" if m[1] in FLAG_OF else ""), str(exc))
        ) from None


def _value(config: BaseModel, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def _urls(urls: list[str]) -> list[str]:
    """Server URLs as recorded in a report: credentials (user:key@) removed."""
    return [strip_url_credentials(url) for url in urls]
