"""Train SmolLM2-135M-Instruct with DPO for >= 20 steps on a dataset built by `realign-data build`.

Prints the DPO loss at the start and the end (and the means of the first and last five logged steps), the held-out
implicit-reward accuracy (target > 0.5, with a decreasing loss), seconds per step and peak RSS; and the wall time
of `realign-train`'s whole job (data checks, split, TRL DPOTrainer, evaluation, merged save) beside the plain
alternative: TRL's DPOTrainer alone on the same rows with the same arguments (warm-up of 2 steps each, then
alternating repeats, medians).

    python benchmarks/train_smoke.py [--prompts 32] [--steps 24] [--repeats 3] [--dir /tmp/bench] [--json]
"""

from __future__ import annotations

import itertools
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import arguments, bench_pairs, compare, finish

from realign_data.config import load_config
from realign_data.models import load_tokenizer, resolve_model
from realign_data.store import Store, Version
from trainers.config import PolicyTrainConfig
from trainers.run import train

TRAIN = {
    "per_device_train_batch_size": 2,
    "max_length": 384,
    "learning_rate": 5e-6,
    "warmup_ratio": 0.0,
    "lr_scheduler_type": "constant",
}


def plain_trl(version: Version, steps: int, output: Path) -> None:
    """TRL's DPOTrainer on the version's rows, as a user without realign would run it (fp32 on CPU)."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    data = datasets.load_dataset("parquet", data_files=[str(path) for path in version.files], split="train")
    data = data.select_columns(["prompt", "chosen", "rejected"]).train_test_split(test_size=0.2, seed=0)
    model_path = resolve_model("smollm2-135m-instruct")
    args = DPOConfig(
        output_dir=str(output),
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        **TRAIN,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path.path),
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=load_tokenizer(model_path),
    )
    trainer.train()
    trainer.evaluate()
    trainer.save_model(str(output / "final"))


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="realign-train-bench-", dir=args.dir))
    try:
        store = Store(scratch / "store")
        start = time.perf_counter()
        version = bench_pairs(store, args.prompts)
        print(f"built {version.ref}: {version.record['rows_by_pair_type']} in {time.perf_counter() - start:.0f} s")

        runs = itertools.count()

        def realign(steps: int) -> dict:
            config = load_config(
                PolicyTrainConfig,
                None,
                [],
                {
                    "datasets": [version.ref],
                    "output_dir": str(scratch / f"policy-{next(runs)}"),
                    "max_steps": steps,
                    "eval_fraction": 0.2,
                    "save_steps": 1000,
                    **TRAIN,
                },
            )
            return train(config, store)

        realign(2), plain_trl(version, 2, scratch / f"plain-{next(runs)}")  # warm-up
        times = compare(
            {
                "realign": lambda: realign(args.steps),
                "plain": lambda: plain_trl(version, args.steps, scratch / f"plain-{next(runs)}"),
            },
            args.repeats,
            warmup=False,
        )
        start = time.perf_counter()
        manifest = realign(args.steps)
        seconds = time.perf_counter() - start
        losses = [entry["loss"] for entry in manifest["log_history"] if "loss" in entry]
        metrics = manifest["metrics"]
        print(
            f"train pairs {manifest['rows']['train']}, held-out pairs {manifest['rows']['eval']}, "
            f"steps {metrics['global_step']}"
        )
        print(
            f"DPO loss: start {losses[0]:.4f} -> end {losses[-1]:.4f}; mean of first 5 "
            f"{statistics.fmean(losses[:5]):.4f} -> last 5 {statistics.fmean(losses[-5:]):.4f}"
        )
        print(
            f"held-out implicit-reward accuracy: {metrics.get('eval_rewards/accuracies', float('nan')):.3f} "
            f"(target > 0.5); held-out margin {metrics.get('eval_rewards/margins', float('nan')):.4f}"
        )
        print(
            f"seconds per step: {seconds / metrics['global_step']:.1f} (including reference log-probs and "
            f"evaluation: {seconds:.0f} s in all)"
        )
        print(
            f"whole job: realign-train {times['realign']:.1f} s, plain TRL DPOTrainer {times['plain']:.1f} s, "
            f"ratio {times['realign'] / times['plain']:.3f} (median of {args.repeats})"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak RSS: {peak:.2f} GiB")
        finish(
            {
                "steps": metrics["global_step"],
                "first_loss": losses[0],
                "last_loss": losses[-1],
                "eval_accuracy": metrics.get("eval_rewards/accuracies"),
                "seconds_per_step": seconds / metrics["global_step"],
                "realign_job_s": times["realign"],
                "plain_trl_job_s": times["plain"],
                "job_ratio": times["realign"] / times["plain"],
                "peak_rss_gib": peak,
            },
            args.json,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
