"""realign-train policy under a real two-process DDP run on CPU (gloo), started by torchrun: the launcher accelerate
itself uses on GPUs (accelerate runs several CPU ranks only under MPI)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from realign_data.store import Store
from tests.helpers import ONE_THREAD, REPO, pair_table
from tests.test_trainers import rows, weights


def test_policy_trains_and_saves_under_two_process_ddp(tmp_path, tiny_model_dir):
    store = Store(tmp_path / "store")
    store.write_version("pairs", [pair_table(rows(36))])
    out = tmp_path / "policy"
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "trainers.cli",
        "policy",
        "--dataset",
        "pairs@v1",
        "--store",
        str(store.root),
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        *("--set", "per_device_train_batch_size=2", "--set", "max_length=64", "--set", "save_steps=1"),
    ]
    env = {**os.environ, **ONE_THREAD}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    record = json.loads((out / "training_record.json").read_text())
    assert record["processes"] == 2  # two ranks trained: each step saw 2 x 2 pairs
    assert record["metrics"]["global_step"] == 2
    before, after = weights(tiny_model_dir), weights(out)
    assert set(before) == set(after) and any((before[name] != after[name]).any() for name in before)
    assert "checkpoint-2" in {p.name for p in (out / "checkpoints").iterdir()}
