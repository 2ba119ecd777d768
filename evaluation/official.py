"""The official Arena-Hard v0.1 files realign-eval reads when no local file is given."""

from __future__ import annotations

from pathlib import Path

from realign_data.official import ARENA_HARD_V01, fetch

ARENA_FILES = {
    "judge_config": "config/judge_config.yaml",
    "questions": "data/arena-hard-v0.1/question.jsonl",
    "baseline_answers": "data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl",
    "judge_code": "gen_judgment.py",
}  # read (never run) for v0.1's continuation message


def arena_file(kind: str, given: Path | None, option: str) -> Path:
    return given if given is not None else fetch(*ARENA_HARD_V01, ARENA_FILES[kind], option)
