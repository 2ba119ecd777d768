"""One training run: SFT warm-up (optional), then DPO (TRL DPOTrainer) or SimPO (TRL CPOTrainer).

The output directory holds the final model at its top level (safetensors, tokenizer, chat template), loadable by
the model resolver and every engine; ``checkpoints/`` for ``--resume``; ``training_record.json``; and
``training_curves.png``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import datasets

from realign_data.config import config_to_dict
from realign_data.errors import InputError
from realign_data.files import write_json
from realign_data.models import load_tokenizer, pick_device, pick_dtype, resolve_model
from realign_data.provenance import code_provenance, utc_now
from realign_data.store import Store
from trainers.config import PolicyTrainConfig, ReviserTrainConfig, TrainConfig
from trainers.data import load_training_pairs, prompt_rendering_check, truncation_report
from trainers.report import TRAINING_RECORD, plot_curves, read_training_record

log = logging.getLogger(__name__)


def _common_args(config: TrainConfig, output: Path, learning_rate: float, epochs: float) -> dict[str, Any]:
    """TrainingArguments shared by every trainer; fp32 on CPU, bf16 where the GPU supports it."""
    device = pick_device(config.model.device)
    on_gpu = device.startswith("cuda")
    bf16 = on_gpu and str(pick_dtype(config.model.dtype, device)) == "torch.bfloat16"
    return {
        "output_dir": str(output),
        "learning_rate": learning_rate,
        "num_train_epochs": epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "per_device_eval_batch_size": config.per_device_eval_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_checkpointing": config.gradient_checkpointing,
        "warmup_steps": config.warmup_ratio,
        "lr_scheduler_type": config.lr_scheduler_type,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": bf16,
        "use_cpu": not on_gpu,
        "report_to": [],
        "max_length": config.max_length,
        "eval_strategy": "no",
        "disable_tqdm": True,
    }


def _peft_config(config: TrainConfig):
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _load_policy_model(path: Path, config: TrainConfig):
    from transformers import AutoModelForCausalLM

    device = pick_device(config.model.device)
    return AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(config.model.dtype, device))


def _last_checkpoint(directory: Path) -> str | None:
    """The newest complete checkpoint: a run killed while saving leaves a newer, partial one behind."""
    if not directory.is_dir():
        return None
    candidates = sorted(
        (p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for candidate in candidates:
        if (
            (candidate / "trainer_state.json").exists()
            and (candidate / "optimizer.pt").exists()
            and any(candidate.glob("*.safetensors"))
        ):
            return str(candidate)
    return None


def _sft_warmup(
    config: ReviserTrainConfig, train: datasets.Dataset, model_path: Path, output: Path, tokenizer, resume: bool
) -> Path:
    """Supervised fine-tuning on the chosen responses (completion-only loss); returns the warmed-up model."""
    from trl import SFTConfig, SFTTrainer

    final = output / "sft"
    if (final / "config.json").exists():
        return final
    examples = train.map(
        lambda row: {"prompt": row["prompt"], "completion": row["chosen"]}, remove_columns=train.column_names
    )
    args = SFTConfig(
        **_common_args(
            config, output / "sft-checkpoints", config.sft_warmup.learning_rate, config.sft_warmup.num_train_epochs
        )
    )
    trainer = SFTTrainer(
        model=_load_policy_model(model_path, config),
        args=args,
        train_dataset=examples,
        processing_class=tokenizer,
        peft_config=_peft_config(config),
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(output / "sft-checkpoints") if resume else None)
    _save_merged(trainer, tokenizer, final)
    return final


def _save_merged(trainer, tokenizer, directory: Path) -> None:
    """Save full weights with the tokenizer and chat template; LoRA adapters are merged in first.

    Without LoRA, the trainer gathers sharded (FSDP, ZeRO-3) weights and writes from the main process only.
    """
    if hasattr(trainer.model, "merge_and_unload"):
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)
    else:
        trainer.save_model(str(directory))
    trainer.accelerator.wait_for_everyone()


def _preference_trainer(config: TrainConfig, model, train, eval_data, tokenizer, output: Path):
    common = _common_args(config, output / "checkpoints", config.learning_rate, config.num_train_epochs)
    columns = ["prompt", "chosen", "rejected"]
    train, eval_data = train.select_columns(columns), eval_data.select_columns(columns) if eval_data else None
    if config.loss_type == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        trainer_class: Any = CPOTrainer
        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=config.beta, simpo_gamma=config.simpo_gamma)
    else:
        from trl import DPOConfig, DPOTrainer

        trainer_class = DPOTrainer
        args = DPOConfig(
            **common,
            loss_type=config.loss_type,
            beta=config.beta,
            precompute_ref_log_probs=config.precompute_ref_log_probs,
        )
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        peft_config=_peft_config(config),
    )


def train(config: TrainConfig, store: Store, resume: bool = False) -> dict[str, Any]:
    """Train the reviser or the policy as ``config`` says; returns the training record (empty on the ranks of a
    distributed run other than rank 0, which writes it)."""
    if not config.output_dir:
        raise InputError("no output directory: pass --output-dir DIR or set output_dir in the manifest")
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output-dir {output}: is a file, not a folder")
    if read_training_record(output) is not None and not resume:
        raise InputError(f"{output} already holds a trained model; choose another --output-dir, or --resume")
    if output.exists() and not resume and any(output.iterdir()):
        raise InputError(f"{output} is not empty; pass --resume to continue the run that left it there")
    type_weights = {"revision": config.revision_weight} if isinstance(config, PolicyTrainConfig) else None
    train_data, eval_data, inputs = load_training_pairs(
        config.datasets, config.pair_types, store, config.seed, config.eval_fraction, type_weights
    )
    start_model = resolve_model(config.model.spec)  # after the data checks: a conversion takes a while
    tokenizer = load_tokenizer(start_model)
    truncation = truncation_report(train_data, tokenizer, config.max_length)
    rendering = prompt_rendering_check(inputs, tokenizer) if "on_policy" in config.pair_types else []
    warnings = [check["warning"] for check in rendering if "warning" in check]
    if truncation["prompt_cut"]:
        warnings.append(
            f"{truncation['prompt_cut']} of {truncation['pairs']} training prompts render into other "
            "tokens when a response follows (the chat template, or tokens merging at the boundary): TRL "
            "cuts them where they diverge, so it trains on other prompt tokens than generation used"
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    output.mkdir(parents=True, exist_ok=True)
    started = utc_now()

    model_path = start_model.path
    if isinstance(config, ReviserTrainConfig) and config.sft_warmup.enabled:
        model_path = _sft_warmup(config, train_data, model_path, output, tokenizer, resume)
    trainer = _preference_trainer(
        config, _load_policy_model(model_path, config), train_data, eval_data, tokenizer, output
    )
    checkpoint = _last_checkpoint(output / "checkpoints") if resume else None
    log.info(
        "training %s from %s into %s%s",
        config.loss_type,
        model_path,
        output,
        f", resuming {checkpoint}" if checkpoint else "",
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    eval_metrics = trainer.evaluate() if eval_data is not None else {}
    _save_merged(trainer, tokenizer, output)
    shutil.rmtree(output / "sft-checkpoints", ignore_errors=True)

    if not trainer.is_world_process_zero():
        return {}
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    plot_curves(trainer.state.log_history, eval_metrics, output / "training_curves.png")
    trained = resolve_model(str(output))
    record = {
        "role": "reviser" if isinstance(config, ReviserTrainConfig) else "policy",
        "started_at": started,
        "finished_at": utc_now(),
        "inputs": inputs,
        "rows": {
            "train": len(train_data),
            "eval": len(eval_data) if eval_data else 0,
            "train_by_pair_type": dict(sorted(_count(train_data).items())),
            "truncation": truncation,
        },
        "prompt_rendering": rendering,
        "warnings": warnings,
        "model_in": start_model.record(),
        "model_out": trained.record(),
        "config": config_to_dict(config),
        "seed": config.seed,
        "processes": trainer.args.world_size,  # data-parallel ranks (accelerate launch --num_processes)
        "metrics": {
            "global_step": result.global_step,
            "train_loss": result.training_loss,
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            **{k: v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        },
        "log_history": trainer.state.log_history,
        "code": code_provenance(),
    }
    write_json(output / TRAINING_RECORD, record)
    return record


def _count(data: datasets.Dataset) -> dict[str, int]:
    return Counter(data["pair_type"])
