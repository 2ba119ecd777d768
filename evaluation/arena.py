"""Arena-Hard judging driven by the official config files: two games per question, positions swapped.

Two layouts are read:
- lm-sys v0.1 (``judge_config.yaml``): ``system_prompt``, ``prompt_template: [...]`` with ``{question_1}``,
  ``{answer_1}``, ``{answer_2}``, ``regex_pattern``, ``baseline_model``, ``number_of_judgment_attempts``;
- lmarena v2 (``arena-hard-v2.0.yaml``, ``arena-hard-v0.1.yaml``): ``prompt_template`` with ``{QUESTION}``,
  ``{ANSWER_A}``, ``{ANSWER_B}`` and ``regex_patterns``, plus judge settings (``--judge-settings``) that give each
  question category its baseline model and system prompt.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from evaluation.judging import CachedJudge
from evaluation.records import json_kind, read_located_records
from realign_data.errors import InputError


@dataclass(frozen=True)
class ArenaSpec:
    bench: str
    judge_model: str
    temperature: float
    max_tokens: int
    attempts: int
    patterns: tuple[str, ...]
    template: str  # with {question}, {answer_a}, {answer_b}
    settings: dict[str, dict[str, str]]  # category -> {baseline, system_prompt}

    def setting(self, category: str | None) -> dict[str, str]:
        if category in self.settings:
            return self.settings[category]
        if len(self.settings) == 1:
            return next(iter(self.settings.values()))
        raise InputError(f"no judge setting for question category {category!r} (settings: "
                         f"{', '.join(self.settings)})")


def _yaml(path: Path, what: str) -> dict:
    if path.is_dir():
        raise InputError(f"{path}: is a directory; the {what} is a YAML file")
    if not path.exists():
        raise InputError(f"{path}: no such file (the {what})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{where}: the {what} is not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the {what} must be a YAML mapping, got {json_kind(data)}")
    return data


def _string(path: Path | str, config: dict, field: str) -> str:
    value = config.get(field)
    if not isinstance(value, str) or not value:
        raise InputError(f"{path}: field '{field}' must be a non-empty string, got {json_kind(value)}")
    return value


def _number(path: Path, config: dict, field: str, default, kind, minimum):
    value = config.get(field, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (kind is int and value != int(value)) or value < minimum:
        raise InputError(f"{path}: field '{field}' must be {'an integer' if kind is int else 'a number'} "
                         f">= {minimum}, got {value!r}")
    return kind(value)


def _pattern(path: Path, field: str, pattern) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{path}: field '{field}' must hold regular expressions, got {json_kind(pattern)}")
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: a warning, not one line of error
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except re.error as exc:
        raise InputError(f"{path}: field '{field}' {pattern!r} is not a valid regular expression ({exc})") from None
    return pattern


def _template(path: Path, template, placeholders: tuple[str, ...]) -> str:
    if not isinstance(template, str) or not template:
        raise InputError(f"{path}: field 'prompt_template' must be a non-empty string, got {json_kind(template)}")
    missing = [p for p in placeholders if p not in template]
    if missing:
        raise InputError(f"{path}: field 'prompt_template' lacks {', '.join(missing)}")
    return template


def load_judge_config(path: Path, settings_path: Path | None = None) -> ArenaSpec:
    config = _yaml(path, "judge config")
    for field in ("judge_model", "prompt_template"):
        if field not in config:
            raise InputError(f"{path}: missing field '{field}' (an Arena-Hard judge config is expected)")
    common = {"judge_model": _string(path, config, "judge_model"),
              "temperature": _number(path, config, "temperature", 0.0, float, 0),
              "max_tokens": _number(path, config, "max_tokens", 4096, int, 1),
              "attempts": _number(path, config, "number_of_judgment_attempts", 2, int, 1)}
    bench = config.get("bench_name")
    if bench is not None and not isinstance(bench, str):
        raise InputError(f"{path}: field 'bench_name' must be a string, got {json_kind(bench)}")
    if isinstance(config["prompt_template"], list):  # lm-sys v0.1 layout
        for field in ("system_prompt", "regex_pattern", "baseline_model"):
            if field not in config:
                raise InputError(f"{path}: missing field '{field}'")
        if not config["prompt_template"]:
            raise InputError(f"{path}: field 'prompt_template' is an empty list")
        template = _template(path, config["prompt_template"][0], ("{question_1}", "{answer_1}", "{answer_2}")) \
            .replace("{question_1}", "{question}").replace("{answer_1}", "{answer_a}") \
            .replace("{answer_2}", "{answer_b}")
        bench = bench or "arena-hard-v0.1"
        return ArenaSpec(bench=bench, patterns=(_pattern(path, "regex_pattern", config["regex_pattern"]),),
                         template=template, **common,
                         settings={bench: {"baseline": _string(path, config, "baseline_model"),
                                           "system_prompt": _string(path, config, "system_prompt")}})
    template = _template(path, config["prompt_template"], ("{QUESTION}", "{ANSWER_A}", "{ANSWER_B}")) \
        .replace("{QUESTION}", "{question}").replace("{ANSWER_A}", "{answer_a}").replace("{ANSWER_B}", "{answer_b}")
    patterns = config.get("regex_patterns")
    if not isinstance(patterns, list) or not patterns:
        raise InputError(f"{path}: field 'regex_patterns' must be a non-empty list of regular expressions, got "
                         f"{json_kind(patterns)}")
    patterns = tuple(_pattern(path, "regex_patterns", pattern) for pattern in patterns)
    if settings_path is None:
        raise InputError(f"{path}: this config takes per-category judge settings; pass --judge-settings FILE "
                         "(e.g. judge_settings_v2.0.yaml)")
    settings = _yaml(settings_path, "judge settings").get("judge_settings")
    if not isinstance(settings, dict) or not settings:
        raise InputError(f"{settings_path}: missing 'judge_settings' (category -> baseline, system_prompt)")
    for category, setting in settings.items():
        if not isinstance(setting, dict):
            raise InputError(f"{settings_path}: judge_settings.{category} must be a mapping with 'baseline' and "
                             f"'system_prompt', got {json_kind(setting)}")
        for field in ("baseline", "system_prompt"):
            _string(f"{settings_path}: judge_settings.{category}", setting, field)
    settings = {str(category): {"baseline": setting["baseline"], "system_prompt": setting["system_prompt"]}
                for category, setting in settings.items()}
    return ArenaSpec(bench=bench or path.stem, patterns=patterns, template=template, settings=settings, **common)


def question_fields(record: dict, where: str) -> tuple[str, str, str | None]:
    """(id, first user turn, category) of a v0.1 or v2.0 question."""
    qid = record.get("question_id", record.get("uid"))
    text = record.get("prompt")
    if text is None:
        try:
            text = record["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
    if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)) or not isinstance(text, str):
        raise InputError(f"{where}: a question needs question_id/uid and turns[0].content or prompt")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise InputError(f"{where}: field 'category' must be a string, got {json_kind(category)}")
    return str(qid), text, category


def answer_text(record: dict, where: str) -> str:
    """The first answer of a v0.1 (choices/turns) or v2.0 (messages) answer record."""
    try:
        if "choices" in record:
            return record["choices"][0]["turns"][0]["content"]
        content = [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]
        return content["answer"] if isinstance(content, dict) else content
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{where}: answer record {record.get('question_id', record.get('uid'))!r} has no "
                         "answer text") from None


def read_answers(path: Path) -> tuple[str, dict[str, str]]:
    """(model name, {question id: answer}) of an answer file."""
    answers = {}
    located = read_located_records(path)
    for where, record in located:
        qid = record.get("question_id", record.get("uid"))
        if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise InputError(f"{where}: an answer record needs field 'question_id' (or 'uid'), got "
                             f"{json_kind(qid)}")
        text = answer_text(record, where)
        if not isinstance(text, str):
            raise InputError(f"{where}: the answer text of question {qid!r} must be a string, got {json_kind(text)}")
        answers[str(qid)] = text
    first = located[0][1]
    name = first.get("model_id", first.get("model", path.stem))
    if not isinstance(name, str) or not name:
        raise InputError(f"{located[0][0]}: field 'model_id' (or 'model') must be a model name, got "
                         f"{json_kind(name)}")
    return name, answers


def verdict_parser(patterns: tuple[str, ...]):
    regexes = [re.compile(p) for p in patterns]

    def parse(text: str) -> str | None:
        for regex in regexes:  # the first pattern that finds anything decides
            labels = {label.strip() for label in regex.findall(text)}
            if labels:
                return labels.pop() if len(labels) == 1 else None  # contradictory verdicts: ask again
        return None

    return parse


def judge_pairs(spec: ArenaSpec, questions: list[dict], baselines: dict[str, dict[str, str]],
                answers: dict[str, str], model_name: str, judge: CachedJudge) -> list[dict]:
    """Judgment records in the official layout (one per question, two games), with category and baseline."""
    items, games, meta = {}, {}, {}
    for question in questions:
        qid, text, category = question_fields(question, "questions")
        setting = spec.setting(category)
        reference = baselines.get(setting["baseline"], {})
        if qid not in reference or qid not in answers:
            continue
        meta[qid] = (category, setting["baseline"])
        for index, (first, second) in enumerate(((reference[qid], answers[qid]), (answers[qid], reference[qid]))):
            prompt = spec.template.replace("{question}", text).replace("{answer_a}", first) \
                .replace("{answer_b}", second)
            items[f"{qid}#{index}"] = [{"role": "system", "content": setting["system_prompt"]},
                                       {"role": "user", "content": prompt}]
            games[f"{qid}#{index}"] = prompt
    verdicts = judge.judge(items, verdict_parser(spec.patterns))
    return [{"question_id": qid, "model": model_name, "judge": judge.judge_id, "category": category,
             "baseline": baseline,
             "games": [{"user_prompt": games[f"{qid}#{i}"], "judgment": verdicts[f"{qid}#{i}"][1],
                        "score": verdicts[f"{qid}#{i}"][0]} for i in (0, 1)]}
            for qid, (category, baseline) in meta.items()]
