"""AlpacaEval 2 judging through alpaca_eval's own annotator code, with realign's engines as the decoder.

The annotator config (default ``weighted_alpaca_eval_gpt4_turbo``) runs as alpaca_eval runs it: its
``PairwiseAnnotator`` (seed 0, as ``alpaca_eval evaluate`` builds it) merges the reference and model outputs,
randomizes their order per instruction (``RandomSwitchTwoColumnsProcessor``, flag ``is_switched_outputs``), fills
the prompt template (``utils.make_prompts``), parses each completion with the config's ``fn_completion_parser`` and
``completion_parser_kwargs`` (e.g. ``logprob_parser``: ``2 - p(m) / (p(m) + p(M))``), maps switched preferences
back (``3 - p``) and leaves a completion it cannot parse without a preference (NaN: alpaca_eval neither re-asks
nor retries). Only the decoder is replaced: where the config names ``openai_completions``, the prompts are turned
into chat messages as that decoder does (stripped, ``prompt_to_chatml``) and sent through the judge engine (an
OpenAI-compatible server or the in-process hf model) with the config's ``completions_kwargs`` (``max_tokens``,
``temperature``, ``top_p``, ``logprobs``/``top_logprobs``; the decoder's own defaults where the config is silent),
through the judge cache; each completion is handed to the parser shaped as that decoder shapes it.

Judge modes: ``logprobs`` (a logprob annotator, the judge returns token log-probabilities; a judge that returns
none is refused), ``discrete`` (named explicitly, for a judge without log-probabilities: the token the judge
samples under the config's settings counts as probability 1, so every preference is 1 or 2), and ``text`` (an
annotator whose parser reads the completion text).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evaluation.alpaca_metrics import import_alpaca_eval
from evaluation.judging import Answer, CachedJudge
from realign_data.engines import SamplingParams
from realign_data.errors import InputError, RealignError

DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
MODES = ("logprobs", "discrete")
SWITCH_FIELD = "is_switched_outputs"  # alpaca_eval's name for "output_1 and output_2 were shown swapped"
# completions_kwargs of openai_completions that realign applies; the others change only the speed, the price
# estimate or which server is called (the judge's server is --judge-base-url)
APPLIED_KWARGS = {
    "model_name",
    "max_tokens",
    "temperature",
    "top_p",
    "logprobs",
    "top_logprobs",
    "requires_chatml",
    "is_strip",
}
IGNORED_KWARGS = {"num_procs", "batch_size", "price_per_token", "client_kwargs", "client_config_path"}


def annotator_label(name: str, mode: str | None) -> str:
    """How reports and ``compare`` name an annotator run in ``mode``: a discrete run is labelled as such."""
    return f"{name} (discrete: no logprobs)" if mode == "discrete" else name


@dataclass(frozen=True)
class Annotator:
    name: str
    config_path: Path
    members: dict[str, dict]  # pool member (alpaca_eval's "annotator" column) -> its config
    files: tuple[Path, ...]  # the config yaml, then every member's prompt template
    sha256: str  # over the bytes of ``files``, in that order
    logprobs: bool  # whether its parser reads token log-probabilities
    model_name: str  # the judge model the config names (its first member's)

    def mode(self, requested: str | None) -> str:
        """The judge mode that runs: ``requested`` when it fits the annotator, else a one-line InputError."""
        if requested is None:
            return "logprobs" if self.logprobs else "text"
        if requested not in MODES:
            raise InputError(f"--judge-mode {requested!r}: expected one of {', '.join(MODES)}")
        if not self.logprobs:
            raise InputError(
                f"--judge-mode {requested}: annotator {self.name!r} reads the completion text, not "
                "log-probabilities; leave --judge-mode out"
            )
        if requested == "discrete":
            long = {
                member: config["completions_kwargs"].get("max_tokens")
                for member, config in self.members.items()
                if config["completions_kwargs"].get("max_tokens") != 1
            }
            if long:
                member, tokens = next(iter(long.items()))
                raise InputError(
                    f"--judge-mode discrete: annotator {member!r} generates up to {tokens} tokens and "
                    "reads the log-probabilities of one of them; discrete mode reads a single sampled "
                    "token (annotators with max_tokens: 1)"
                )
        return requested

    def record(self, mode: str) -> dict:
        """report.json's ``judge.annotator``: the config that ran, its files (relative to the installed
        alpaca_eval package) and their hash."""
        package = _configs_root().parent.parent
        return {
            "name": self.name,
            "config_sha256": self.sha256,
            "files": [str(path.relative_to(package)) for path in self.files],
            "label": annotator_label(self.name, mode),
        }


def _configs_root() -> Path:
    return Path(import_alpaca_eval().__file__).parent / "evaluators_configs"


def _openai_defaults() -> dict:
    """The defaults of alpaca_eval's openai decoder for settings a config may leave out."""
    from alpaca_eval.decoders import openai as decoder

    outer = inspect.signature(decoder.openai_completions).parameters
    helper = inspect.signature(decoder._openai_completion_helper).parameters
    return {
        "max_tokens": outer["max_tokens"].default,
        "is_strip": outer["is_strip"].default,
        "temperature": helper["temperature"].default,
        "top_p": helper["top_p"].default,
    }


def load_annotator(name: str) -> Annotator:
    """One of alpaca_eval's evaluator configs, checked to be runnable by realign's judge engines."""
    alpaca_eval = import_alpaca_eval()
    from alpaca_eval.decoders.openai import _requires_chatml

    root = _configs_root()
    config_path = root / name / "configs.yaml"
    if "/" in name or name.startswith(".") or not config_path.is_file():
        known = sorted(p.name for p in root.iterdir() if (p / "configs.yaml").exists())
        raise InputError(f"--annotator {name!r}: not an alpaca_eval evaluator config (e.g. {', '.join(known[:5])})")
    members = alpaca_eval.utils.load_configs(config_path)
    templates, uses_logprobs = [], set()
    for member, config in members.items():
        where = f"--annotator {name}: {config_path}: {member}"
        decoder = config.get("fn_completions", "openai_completions")
        if decoder != "openai_completions":
            raise InputError(
                f"{where}: decodes with alpaca_eval's {decoder}; realign's judge engines run "
                "annotators whose fn_completions is openai_completions"
            )
        kwargs = config.get("completions_kwargs") or {}
        unknown = sorted(set(kwargs) - APPLIED_KWARGS - IGNORED_KWARGS)
        if unknown:
            raise InputError(
                f"{where}: completions_kwargs {', '.join(unknown)} cannot be applied by realign's judge "
                "engines (function calling, logit biases)"
            )
        chat = kwargs.get("requires_chatml", _requires_chatml(kwargs.get("model_name", "")))
        if not chat:
            raise InputError(
                f"{where}: model {kwargs.get('model_name')!r} takes a plain-text completion prompt; "
                "realign's judge engines take chat messages"
            )
        template = root / config["prompt_template"]
        if not template.is_file():
            raise InputError(f"{where}: prompt template {template} not found")
        templates.append(template)
        uses_logprobs.add(bool(kwargs.get("logprobs")) or config.get("fn_completion_parser") == "logprob_parser")
    if len(uses_logprobs) != 1:
        raise InputError(f"--annotator {name}: its pool mixes annotators with and without log-probabilities")
    files = (config_path, *dict.fromkeys(templates))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    first = next(iter(members.values()))
    return Annotator(
        name=name,
        config_path=config_path,
        members=members,
        files=files,
        sha256=digest.hexdigest(),
        logprobs=uses_logprobs.pop(),
        model_name=str((first.get("completions_kwargs") or {}).get("model_name", "")),
    )


def _token(token: str, logprob: float) -> dict:
    return {"token": token, "bytes": list(token.encode("utf-8")), "logprob": logprob}


def completion_dict(answer: Answer | None, discrete: bool) -> dict:
    """One completion as alpaca_eval's openai decoder hands it to the parser (``choice.model_dump()`` plus ``text``
    and ``total_tokens``); a call that failed for good is ``{"text": "", "total_tokens": 0}``, as that decoder
    returns it after its last retry."""
    if answer is None:
        return {"text": "", "total_tokens": 0}
    if discrete:  # the sampled token as the whole distribution
        logprobs = {
            "content": [{**_token(answer.text, 0.0), "top_logprobs": [_token(answer.text, 0.0)]}],
            "source": "discrete: the sampled token counted as probability 1 (no logprobs)",
        }
    elif answer.logprobs is not None:
        logprobs = {
            "content": [
                {**_token(t.token, t.logprob), "top_logprobs": [_token(a, v) for a, v in t.top]}
                for t in answer.logprobs
            ]
        }
    else:
        logprobs = None
    return {
        "finish_reason": answer.finish_reason,
        "index": 0,
        "logprobs": logprobs,
        "message": {"content": answer.text, "role": "assistant", "function_call": None, "tool_calls": None},
        "text": answer.text if answer.text != "" else " ",  # as the decoder: "doesn't allow empty string"
        "total_tokens": float(answer.prompt_tokens + answer.completion_tokens),
    }


class JudgeDecoder:
    """Stands in for alpaca_eval's ``openai_completions`` in one pool member: the same arguments (the config's
    ``completions_kwargs``), the same prompt handling and return value, the request made by realign's judge."""

    def __init__(self, judge: CachedJudge, single, member: str, mode: str, defaults: dict):
        self.judge, self.single, self.member, self.mode, self.defaults = judge, single, member, mode, defaults
        self.probed = False

    def _usable(self, completion: dict | str) -> bool:
        """Whether alpaca_eval's own parsing of this member gives a preference for every example in the prompt."""
        annotations, _ = self.single._parse_completions([completion])
        return all(value is not None and not (isinstance(value, float) and math.isnan(value)) for value in annotations)

    def _key(self, completion: dict) -> dict | str:
        return completion if self.single.completion_key == "completions_all" else completion["text"]

    def __call__(self, prompts, model_name, **kwargs) -> dict[str, list]:
        from alpaca_eval import utils

        settings = {**self.defaults, **kwargs}
        if settings["is_strip"]:
            prompts = [prompt.strip() for prompt in prompts]
        items = {str(index): utils.prompt_to_chatml(prompt) for index, prompt in enumerate(prompts)}
        wants_logprobs = self.mode == "logprobs" and bool(settings.get("logprobs"))
        params = SamplingParams(
            n=1,
            temperature=float(settings["temperature"]),
            top_p=float(settings["top_p"]),
            max_new_tokens=int(settings["max_tokens"]),
            top_logprobs=int(settings.get("top_logprobs") or 0) if wants_logprobs else 0,
        )
        discrete = self.mode == "discrete"

        def usable(answer: Answer) -> bool:
            return self._usable(self._key(completion_dict(answer, discrete)))

        start = time.monotonic()
        answers: dict[str, Answer | None] = {}
        if wants_logprobs and not self.probed and items:  # one request first: a server without logprobs is refused
            first = next(iter(items))
            answers.update(self.judge.ask({first: items[first]}, params, usable=usable))
            self._check_logprobs(answers, model_name)
            self.probed = True
        answers.update(self.judge.ask({k: v for k, v in items.items() if k not in answers}, params, usable=usable))
        if wants_logprobs:
            self._check_logprobs(answers, model_name)
        seconds = (time.monotonic() - start) / max(1, len(items))
        completions = [completion_dict(answers[str(index)], discrete) for index in range(len(prompts))]
        self.judge.counts["unparseable"] += sum(not self._usable(self._key(c)) for c in completions)
        prices = self.judge.prices
        price = [
            (answer.prompt_tokens * prices[0] + answer.completion_tokens * prices[1]) / 1e6
            if prices is not None and answer is not None
            else math.nan
            for answer in (answers[str(index)] for index in range(len(prompts)))
        ]
        return {
            "completions": [c["text"] for c in completions],
            "price_per_example": price,
            "time_per_example": [seconds] * len(completions),
            "completions_all": completions,
        }

    def _check_logprobs(self, answers: dict[str, Answer | None], model_name: str) -> None:
        if any(answer is not None and answer.logprobs is None for answer in answers.values()):
            raise RealignError(
                f"the judge ({self.judge.judge_id}) returned no token logprobs, which annotator "
                f"{self.member!r} reads (top_logprobs of {model_name}); use a server that returns "
                "them, or pass --judge-mode discrete to count the sampled token instead"
            )


def _switch_flags(pool, frame: pd.DataFrame) -> pd.Series:
    """alpaca_eval's ``is_switched_outputs`` of each row, computed by the row's own annotator's processor (the
    flag is dropped from alpaca_eval's output once the switch is undone); False where order is not randomized."""
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

    flags = pd.Series(False, index=frame.index)
    for member, rows in frame.groupby("annotator"):
        single = pool.annotators[member]
        for processor in single.processors:
            if isinstance(processor, RandomSwitchTwoColumnsProcessor):
                switched = processor.preprocess(rows[["instruction", "output_1", "output_2"]].astype(str))
                flags.loc[rows.index] = switched[processor._switch_column].astype(bool)
    return flags


@contextlib.contextmanager
def _quiet():
    """alpaca_eval logs at INFO (and its parsers log every unparseable completion) and draws a progress bar; the
    report counts what matters instead, and an error stays one line."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def annotate(
    eval_set: list[dict], outputs: dict[str, str], model_name: str, annotator: Annotator, judge: CachedJudge, mode: str
) -> list[dict]:
    """alpaca_eval's annotations of the model's outputs against the set's references (output_1 = reference,
    output_2 = model; preference 1 = reference better, 2 = model better), in the set's order, each with its
    ``is_switched_outputs``."""
    import_alpaca_eval()
    with _quiet():
        from alpaca_eval.annotators import PairwiseAnnotator

        pool = PairwiseAnnotator(annotators_config=annotator.name, caching_path=None)
        defaults = _openai_defaults()
        for member, single in pool.annotators.items():
            single.fn_completions = JudgeDecoder(judge, single, member, mode, defaults)
        references = pd.DataFrame([example for example in eval_set if example["instruction"] in outputs])
        if "generator" not in references:
            references["generator"] = "reference"
        answers = pd.DataFrame(
            {
                "instruction": references["instruction"],
                "output": references["instruction"].map(outputs),
                "generator": model_name,
            }
        )
        records = pool.annotate_head2head(outputs_1=references, outputs_2=answers)
    frame = pd.DataFrame(records)
    frame[SWITCH_FIELD] = _switch_flags(pool, frame)
    return frame.to_dict("records")
