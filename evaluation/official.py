"""Official benchmark files fetched at a pinned commit into the cache, when no local file is given."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from realign_data.errors import RealignError
from realign_data.files import realign_home

ARENA_HARD = ("lm-sys/arena-hard-auto", "efc012e")  # the commit the v0.1 numbers come from
ARENA_FILES = {
    "judge_config": "config/judge_config.yaml",
    "questions": "data/arena-hard-v0.1/question.jsonl",
    "baseline_answers": "data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl",
    "judge_code": "gen_judgment.py",
}  # read (never run) for v0.1's continuation message


def fetch(repo: str, commit: str, path: str, option: str) -> Path:
    """``path`` of ``repo`` at ``commit``, downloaded once into $REALIGN_HOME/official/."""
    target = realign_home() / "official" / repo.replace("/", "__") / commit / path
    if target.exists():
        return target
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as exc:
        raise RealignError(f"cannot download {url} ({exc}); pass the file with {option}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def arena_file(kind: str, given: Path | None, option: str) -> Path:
    return given if given is not None else fetch(*ARENA_HARD, ARENA_FILES[kind], option)
