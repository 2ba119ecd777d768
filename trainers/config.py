"""Typed training configs: one base, one class per role (reviser, policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from realign_data.config import ModelConfig, StrictModel
from realign_data.schema import PairType

LossType = Literal["sigmoid", "ipo", "apo_zero", "sigmoid_norm", "simpo"]


class DatasetInput(StrictModel):
    """A stored version (``NAME@vN`` or ``NAME`` for the latest) or a Parquet/JSONL file or folder of pairs."""

    ref: str
    weight: float = Field(1.0, gt=0, description="sampling weight: rows appear `weight` times in expectation")


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class SFTWarmup(StrictModel):
    """Supervised warm-up of the reviser on the chosen responses of its pairs, before DPO."""

    enabled: bool = False
    num_train_epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-5, gt=0)


class TrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    datasets: list[DatasetInput] = Field(default_factory=list)
    output_dir: str | None = None
    pair_types: list[PairType]
    loss_type: LossType = "sigmoid"
    beta: float = Field(0.1, gt=0, description="DPO beta; for simpo the reward scale (SimPO uses about 2.0)")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin")
    learning_rate: float = Field(5e-7, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    max_length: int = Field(1024, ge=16, description="prompt + response tokens; longer pairs are truncated")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler_type: str = "cosine"
    precompute_ref_log_probs: bool = Field(True, description="reference log-probs computed once before training")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts held out for implicit-reward accuracy")
    lora: LoraSettings | None = None
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    seed: int = 0

    @field_validator("datasets", mode="before")
    @classmethod
    def _plain_refs(cls, value):
        """Allow `datasets: [smoke@v1, other@v2]` as well as `[{ref: smoke@v1, weight: 0.5}]`."""
        return [{"ref": item} if isinstance(item, str) else item for item in value or []]


class ReviserTrainConfig(TrainConfig):
    """The reviser learns to turn (instruction, draft) into a better response: DPO on reviser_train pairs."""

    pair_types: list[PairType] = Field(default_factory=lambda: list[PairType](["reviser_train"]))
    sft_warmup: SFTWarmup = Field(default_factory=SFTWarmup)


class PolicyTrainConfig(TrainConfig):
    """The policy: DPO on on-policy pairs plus reviser-enhanced (structured revision) pairs."""

    pair_types: list[PairType] = Field(default_factory=lambda: list[PairType](["on_policy", "revision"]))
    revision_weight: float = Field(
        1.0,
        ge=0,
        description="lambda: acts by sampling proportion; each revision "
        "pair appears lambda times per epoch in expectation (0 drops them)",
    )
