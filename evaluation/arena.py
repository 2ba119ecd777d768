"""Arena-Hard judging driven by the official config files: two games per question, positions swapped.

Two layouts are read:
- lm-sys v0.1 (``judge_config.yaml``): ``system_prompt``, ``prompt_template: [...]`` with ``{question_1}``,
  ``{answer_1}``, ``{answer_2}``, ``regex_pattern``, ``baseline_model``, ``number_of_judgment_attempts``;
- lmarena v2 (``arena-hard-v2.0.yaml``, ``arena-hard-v0.1.yaml``): ``prompt_template`` with ``{QUESTION}``,
  ``{ANSWER_A}``, ``{ANSWER_B}`` and ``regex_patterns``, plus judge settings (``--judge-settings``) that give each
  question category its baseline model and system prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from evaluation.judging import CachedJudge
from evaluation.records import read_records
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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the {what} must be a YAML mapping")
    return data


def load_judge_config(path: Path, settings_path: Path | None = None) -> ArenaSpec:
    config = _yaml(path, "judge config")
    for field in ("judge_model", "prompt_template"):
        if field not in config:
            raise InputError(f"{path}: missing field '{field}' (an Arena-Hard judge config is expected)")
    common = {"judge_model": config["judge_model"], "temperature": float(config.get("temperature", 0.0)),
              "max_tokens": int(config.get("max_tokens", 4096)),
              "attempts": int(config.get("number_of_judgment_attempts", 2))}
    if isinstance(config["prompt_template"], list):  # lm-sys v0.1 layout
        for field in ("system_prompt", "regex_pattern", "baseline_model"):
            if field not in config:
                raise InputError(f"{path}: missing field '{field}'")
        template = config["prompt_template"][0].replace("{question_1}", "{question}") \
            .replace("{answer_1}", "{answer_a}").replace("{answer_2}", "{answer_b}")
        bench = config.get("bench_name", "arena-hard-v0.1")
        return ArenaSpec(bench=bench, patterns=(config["regex_pattern"],), template=template, **common,
                         settings={bench: {"baseline": config["baseline_model"],
                                           "system_prompt": config["system_prompt"]}})
    if settings_path is None:
        raise InputError(f"{path}: this config takes per-category judge settings; pass --judge-settings FILE "
                         "(e.g. judge_settings_v2.0.yaml)")
    settings = _yaml(settings_path, "judge settings").get("judge_settings")
    if not isinstance(settings, dict) or not settings:
        raise InputError(f"{settings_path}: missing 'judge_settings' (category -> baseline, system_prompt)")
    template = config["prompt_template"].replace("{QUESTION}", "{question}").replace("{ANSWER_A}", "{answer_a}") \
        .replace("{ANSWER_B}", "{answer_b}")
    return ArenaSpec(bench=config.get("bench_name", path.stem), patterns=tuple(config.get("regex_patterns", [])),
                     template=template, settings=settings, **common)


def question_fields(record: dict, where: str) -> tuple[str, str, str | None]:
    """(id, first user turn, category) of a v0.1 or v2.0 question."""
    qid = record.get("question_id", record.get("uid"))
    text = record.get("prompt")
    if text is None:
        try:
            text = record["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
    if qid is None or not isinstance(text, str):
        raise InputError(f"{where}: a question needs question_id/uid and turns[0].content or prompt")
    return str(qid), text, record.get("category")


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
    records = read_records(path)
    name = records[0].get("model_id", records[0].get("model", path.stem))
    return str(name), {str(r.get("question_id", r.get("uid"))): answer_text(r, str(path)) for r in records}


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
