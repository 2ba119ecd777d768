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
    }
    row.update(overrides)
    return row


def pair_table(rows: list[dict]):
    import pyarrow as pa

    from realign_data.schema import PAIR_SCHEMA

    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run `realign-data` as a user would, in a subprocess; returns the completed process."""
    script = shutil.which("realign-data", path=str(Path(sys.executable).parent))
    result = subprocess.run([script, *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr
    return result
