"""Arena-Hard judging driven by the official judge config: two games per question, positions swapped."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from evaluation.judging import CachedJudge, read_jsonl
from realign_data.errors import InputError

CONFIG_FIELDS = ("judge_model", "baseline_model", "regex_pattern", "system_prompt", "prompt_template")


def load_judge_config(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the judge config ({exc})") from None
    missing = [f for f in CONFIG_FIELDS if f not in (config or {})]
    if missing:
        raise InputError(f"{path}: missing field '{missing[0]}' (an Arena-Hard v0.1 judge config is expected)")
    return config


def first_turn(record: dict, where: str) -> str:
    try:
        return record["turns"][0]["content"] if "turns" in record else record["choices"][0]["turns"][0]["content"]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{where}: question {record.get('question_id')!r} has no first turn") from None


def answers_by_question(path: Path) -> dict[str, str]:
    """Official answer layout: {question_id, choices: [{turns: [{content}]}]} per line."""
    return {r["question_id"]: first_turn(r, str(path)) for r in read_jsonl(path)}


def verdict_parser(pattern: str):
    regex = re.compile(pattern)

    def parse(text: str) -> str | None:
        labels = {label.strip() for label in regex.findall(text)}
        return labels.pop() if len(labels) == 1 else None  # none or contradictory verdicts: ask again

    return parse


def judge_pairs(config: dict, questions: list[dict], baseline: dict[str, str], answers: dict[str, str],
                model_name: str, judge: CachedJudge) -> list[dict]:
    """Judgment records in the official layout (one per question, two games)."""
    template = config["prompt_template"][0]
    items, games = {}, {}
    for question in questions:
        qid = question["question_id"]
        if qid not in baseline or qid not in answers:
            continue
        text = first_turn(question, "questions")
        pairs = ((baseline[qid], answers[qid]), (answers[qid], baseline[qid]))  # game 2 swaps the positions
        for index, (first, second) in enumerate(pairs):
            prompt = template.replace("{question_1}", text).replace("{answer_1}", first).replace("{answer_2}", second)
            items[f"{qid}#{index}"] = [{"role": "system", "content": config["system_prompt"]},
                                       {"role": "user", "content": prompt}]
            games[f"{qid}#{index}"] = prompt
    verdicts = judge.judge(items, verdict_parser(config["regex_pattern"]))
    records = []
    for question in questions:
        qid = question["question_id"]
        if f"{qid}#0" not in verdicts:
            continue
        records.append({"question_id": qid, "model": model_name, "judge": judge.judge_id,
                        "games": [{"user_prompt": games[f"{qid}#{i}"], "judgment": verdicts[f"{qid}#{i}"][1],
                                   "score": verdicts[f"{qid}#{i}"][0]} for i in (0, 1)]})
    return records
