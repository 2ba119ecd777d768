"""realign-train's DPO against a plain TRL DPOTrainer script: seconds per step, peak memory, the first losses.

Both train the embedded SmolLM2-135M-Instruct on the same pairs (a small version built here), in the same order,
with the same batch, length, learning rate, precision (float32 on CPU), reference log-probs computed once
before training (TRL's precompute_ref_log_probs, realign's default) and no gradient checkpointing (realign's
default; TRL's DPOConfig turns it on unless told otherwise, which alone made the plain script 0.73x realign's
peak memory and 1.2x its seconds per step in an earlier, unequal version of this benchmark). Each run is a
process of its own, so that its peak RSS is its own; seconds per step are the median of
``Trainer.training_step`` calls after the first, timed the same way on both sides. Then realign alone with each
of TRL's memory savers switched the other way: reference log-probs computed every step, gradient checkpointing,
LoRA (r 16, all linear layers).

    python benchmarks/train_vs_trl.py [--steps 6] [--prompts 12] [--repeats 3] [--json]
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import arguments, bench_pairs, finish

TRAIN = {
    "per_device_train_batch_size": 2,
    "max_length": 384,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
}
SAVERS = {  # realign settings switched from the default, one at a time
    "per_step_reference": {"precompute_ref_log_probs": False},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "lora": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
}


def timed_steps() -> list[float]:
    """Wraps Trainer.training_step so that every call's seconds are kept (the same wrapper on both sides)."""
    from transformers import Trainer

    durations: list[float] = []
    step = Trainer.training_step

    def training_step(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return step(self, *args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    Trainer.training_step = training_step  # type: ignore[method-assign]
    return durations


def run_realign(store: Path, ref: str, output: Path, steps: int, overrides: dict) -> dict:
    from realign_data.config import load_config
    from realign_data.store import Store
    from trainers.config import PolicyTrainConfig
    from trainers.run import train

    durations = timed_steps()
    config = load_config(
        PolicyTrainConfig,
        None,
        [],
        {
            "datasets": [ref],
            "output_dir": str(output),
            "max_steps": steps,
            "eval_fraction": 0.0,
            "warmup_ratio": 0.0,
            "save_steps": 10_000,
            **TRAIN,
            **overrides,
        },
    )
    record = train(config, Store(store))
    return {"losses": [e["loss"] for e in record["log_history"] if "loss" in e], "steps": durations}


def run_plain(store: Path, ref: str, output: Path, steps: int) -> dict:
    """What a TRL user writes: the version's parquet rows, shuffled with the seed, into DPOTrainer."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from realign_data.models import DEFAULT_MODEL, load_tokenizer, resolve_model
    from realign_data.store import Store

    durations = timed_steps()
    version = Store(store).resolve(ref)
    data = datasets.load_dataset("parquet", data_files=[str(path) for path in version.files], split="train")
    data = data.select_columns(["prompt", "chosen", "rejected"]).shuffle(seed=0)
    model = resolve_model(DEFAULT_MODEL)
    args = DPOConfig(
        output_dir=str(output),
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        seed=0,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,  # TRL's DPOConfig turns it on by default; realign's default is off
        **TRAIN,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model.path),
        args=args,
        train_dataset=data,
        processing_class=load_tokenizer(model),
    )
    trainer.train()
    return {"losses": [e["loss"] for e in trainer.state.log_history if "loss" in e], "steps": durations}


def child(kind: str, store: Path, ref: str, output: Path, steps: int, overrides: dict) -> dict:
    """One side in a process of its own: its losses, step seconds and peak RSS."""
    command = [sys.executable, __file__, "--child", kind, str(store), ref, str(output), str(steps)]
    command.append(json.dumps(overrides))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(kind: str, store: str, ref: str, output: str, steps: str, overrides: str) -> None:
    import torch

    torch.set_num_threads(2)
    run = run_plain if kind == "plain" else run_realign
    extra = {} if kind == "plain" else {"overrides": json.loads(overrides)}
    result = run(Path(store), ref, Path(output), int(steps), **extra)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    from realign_data.store import Store

    scratch = Path(tempfile.mkdtemp(prefix="realign-train-vs-trl-", dir=args.dir))
    try:
        store = scratch / "store"
        version = bench_pairs(Store(store), args.prompts, **{"pairs.allow_truncated": True})
        print(f"built {version.ref}: {version.record['rows_by_pair_type']}")
        runs: dict[str, list[dict]] = {"realign": [], "plain": []}
        for round_ in range(args.repeats):  # alternating: the first side changes every round
            for kind in ("realign", "plain") if round_ % 2 == 0 else ("plain", "realign"):
                output = scratch / f"{kind}-{round_}"
                runs[kind].append(child(kind, store, version.ref, output, args.steps, {}))
        savers = {
            name: child("realign", store, version.ref, scratch / name, args.steps, setting)
            for name, setting in SAVERS.items()
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def per_step(results: list[dict]) -> float:
        return statistics.median(statistics.median(r["steps"][1:]) for r in results)

    def peak(results: list[dict]) -> float:
        return statistics.median(r["peak_rss_gib"] for r in results)

    first = min(3, args.steps)
    realign_losses, plain_losses = runs["realign"][0]["losses"][:first], runs["plain"][0]["losses"][:first]
    gap = max(abs(a - b) for a, b in zip(realign_losses, plain_losses, strict=True))
    figures: dict[str, object] = {
        "steps": args.steps,
        "realign_s_per_step": per_step(runs["realign"]),
        "plain_s_per_step": per_step(runs["plain"]),
        "realign_peak_rss_gib": peak(runs["realign"]),
        "plain_peak_rss_gib": peak(runs["plain"]),
        "realign_first_losses": realign_losses,
        "plain_first_losses": plain_losses,
        "first_losses_max_abs_difference": gap,
    }
    figures["s_per_step_ratio"] = figures["realign_s_per_step"] / figures["plain_s_per_step"]  # type: ignore[operator]
    figures["peak_rss_ratio"] = figures["realign_peak_rss_gib"] / figures["plain_peak_rss_gib"]  # type: ignore[operator]
    print(
        f"s/step: realign {figures['realign_s_per_step']:.2f}, plain TRL {figures['plain_s_per_step']:.2f}, "
        f"ratio {figures['s_per_step_ratio']:.3f} (target <= 1.10)"
    )
    print(
        f"peak RSS: realign {figures['realign_peak_rss_gib']:.2f} GiB, plain TRL {figures['plain_peak_rss_gib']:.2f} "
        f"GiB, ratio {figures['peak_rss_ratio']:.3f} (target <= 1.10)"
    )
    print(f"first {first} losses: realign {realign_losses}, plain {plain_losses}, max |difference| {gap:.2e}")
    for name, result in savers.items():
        figures[f"{name}_s_per_step"] = statistics.median(result["steps"][1:])
        figures[f"{name}_peak_rss_gib"] = result["peak_rss_gib"]
        print(
            f"realign with {name.replace('_', ' ')}: {figures[f'{name}_s_per_step']:.2f} s/step "
            f"({figures[f'{name}_s_per_step'] / figures['realign_s_per_step']:.2f}x), peak RSS "
            f"{result['peak_rss_gib']:.2f} GiB ({result['peak_rss_gib'] / figures['realign_peak_rss_gib']:.2f}x)"
        )
    finish(figures, args.json)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(*sys.argv[2:8])
    else:
        main()
