"""Helpers shared by tests: valid pair rows of the contract and running the CLI as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pair_row(index: int = 0, **overrides) -> dict:
    """One valid pair row of the contract; keyword arguments replace fields."""
    row = {
        "prompt": [{"role": "user", "content": f"Question number {index}?"}],
        "chosen": [{"role": "assistant", "content": f"A careful answer to {index}."}],
        "rejected": [{"role": "assistant", "content": "No idea."}],
        "pair_id": f"pair-{index:06d}",
        "prompt_id": f"prompt-{index // 2:06d}",
        "pair_type": ("on_policy", "revision")[index % 2],
        "chosen_score": 7.0 + index % 3,
        "rejected_score": 3.0,
        "margin": 4.0 + index % 3,
        "chosen_source": "sample:0",
        "rejected_source": "sample:1",
        "policy_model": "tiny",
        "reviser_model": None if index % 2 == 0 else "tiny",
        "scorer": "judge:tiny",
        "sample_params": json.dumps({"temperature": 0.8, "seed": index}),
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "stop",
        "chosen_tokens": 6 + index % 5,
        "rejected_tokens": 3,
    }
    row.update(overrides)
    return row


def pair_table(rows: list[dict]):
    import pyarrow as pa

    from realign_data.schema import PAIR_SCHEMA

    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def run_cli(
    *args: str,
    env: dict | None = None,
    check: bool = False,
    prog: str = "realign-data",
    cwd: str | Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run a realign CLI (``prog``) as a user would, in a subprocess; returns the completed process."""
    script = shutil.which(prog, path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def strict_json(source: str | Path):
    """json.loads that refuses NaN and Infinity, as jq and browsers do; a Path is read first."""
    where = str(source) if isinstance(source, Path) else "the output"

    def refuse(constant):
        raise AssertionError(f"{where} holds {constant}")

    return json.loads(source.read_text() if isinstance(source, Path) else source, parse_constant=refuse)


def strict_json_files(folder: Path) -> list[str]:
    """Every .json file and every line of every .jsonl file under ``folder`` parses as strict JSON; returns their
    paths relative to ``folder``, sorted."""
    files = sorted(folder.rglob("*.json")) + sorted(folder.rglob("*.jsonl"))
    for path in files:
        if path.suffix == ".json":
            strict_json(path)
        else:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if line.strip():
                    try:
                        strict_json(line)
                    except AssertionError as exc:
                        raise AssertionError(f"{path}:{number}: {exc}") from None
    return sorted(str(p.relative_to(folder)) for p in files)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """The exit-code rule: ``code``, no traceback, one ``error:`` line on stderr naming every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tree_digest(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest): compare before and after a command."""
    import hashlib

    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# one torch thread in every build a test compares with another: float32 sums depend on the number of threads
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def build_command(store: Path, tiny_model_dir: Path) -> list[str]:
    """`realign-data build` of 76 built-in prompts on the tiny model: long enough to be killed mid-stage."""
    script = Path(sys.executable).parent / "realign-data"
    return [
        str(script),
        "build",
        "--store",
        str(store),
        "--policy",
        str(tiny_model_dir),
        "--limit",
        "76",
        "--num-samples",
        "2",
        "--max-new-tokens",
        "12",
        "--set",
        "generation.temperature=1.0",
        "--set",
        "pairs.types=[on_policy, revision, reviser_train]",
        "--set",
        "pairs.allow_truncated=true",
    ]
