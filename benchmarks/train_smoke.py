"""Train SmolLM2-135M-Instruct with DPO for >= 20 steps on a dataset built by `realign-data build`.

Prints the DPO loss at the start and the end (and the means of the first and last five logged steps), the held-out
implicit-reward accuracy (target > 0.5, with a decreasing loss), seconds per step and peak RSS.

    python benchmarks/train_smoke.py [--prompts 32] [--steps 24] [--dir /tmp/realign-train-bench]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from realign_data.build import Build
from realign_data.config import BuildConfig, load_config
from realign_data.store import Store
from trainers.config import PolicyTrainConfig
from trainers.run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="realign-train-bench-", dir=args.dir))
    try:
        store = Store(scratch / "store")
        start = time.perf_counter()
        build_config = load_config(BuildConfig, None, [], {"dataset": "bench", "prompts.limit": args.prompts,
                                                           "generation.max_new_tokens": 96,
                                                           "pairs.types": ["on_policy", "revision"]})
        build = Build(build_config, store)
        version = build.commit(build.run())
        print(f"built {version.ref}: {version.manifest['rows_by_pair_type']} in {time.perf_counter() - start:.0f} s")

        config = load_config(PolicyTrainConfig, None, [], {
            "datasets": [version.ref], "output_dir": str(scratch / "policy"), "max_steps": args.steps,
            "per_device_train_batch_size": 2, "max_length": 384, "learning_rate": 5e-6, "eval_fraction": 0.2,
            "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "save_steps": 1000})
        start = time.perf_counter()
        manifest = train(config, store)
        seconds = time.perf_counter() - start
        losses = [entry["loss"] for entry in manifest["log_history"] if "loss" in entry]
        metrics = manifest["metrics"]
        print(f"train pairs {manifest['rows']['train']}, held-out pairs {manifest['rows']['eval']}, "
              f"steps {metrics['global_step']}")
        print(f"DPO loss: start {losses[0]:.4f} -> end {losses[-1]:.4f}; mean of first 5 "
              f"{statistics.fmean(losses[:5]):.4f} -> last 5 {statistics.fmean(losses[-5:]):.4f}")
        print(f"held-out implicit-reward accuracy: {metrics.get('eval_rewards/accuracies', float('nan')):.3f} "
              f"(target > 0.5); held-out margin {metrics.get('eval_rewards/margins', float('nan')):.4f}")
        print(f"seconds per step: {seconds / metrics['global_step']:.1f} (including reference log-probs and "
              f"evaluation: {seconds:.0f} s in all)")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
