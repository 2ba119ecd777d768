"""The whole ReAlign loop as one recipe: reviser data -> reviser -> policy data (with that reviser) -> policy.

Each step is skipped when its result already exists with the same effective config: a dataset version whose
stored config matches, or a trained model whose training record holds the same config and inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from realign_data.build import Build, settle_dtypes
from realign_data.config import BuildConfig, ModelConfig, StrictModel, config_to_dict
from realign_data.store import Store
from trainers.config import DatasetInput, PolicyTrainConfig, ReviserTrainConfig
from trainers.report import read_training_record


class RecipeConfig(StrictModel):
    reviser_data: BuildConfig = Field(description="pairs for the reviser (reviser_train)")
    reviser: ReviserTrainConfig
    policy_data: BuildConfig = Field(description="policy pairs, revised by the trained reviser")
    policy: PolicyTrainConfig


def _existing_version(store: Store, config: BuildConfig) -> str | None:
    wanted = config_to_dict(settle_dtypes(config))  # what a build stores: dtype auto resolved
    matches = [v for v in store.versions(config.dataset) if v.record["config"] == wanted]
    return matches[-1].ref if matches else None


def _build(store: Store, config: BuildConfig, progress) -> tuple[str, str]:
    if ref := _existing_version(store, config):
        return ref, "skipped (same config)"
    build = Build(config, store, progress=progress)
    return build.commit(build.run()).ref, "built"


def _train(store: Store, config, resume: bool, train: Callable) -> tuple[str, str]:
    record = read_training_record(Path(config.output_dir))
    if record is not None and record["config"] == config_to_dict(config):
        return config.output_dir, "skipped (already trained)"
    train(config, store, resume=resume or record is None and Path(config.output_dir).exists())
    return config.output_dir, "trained"


def run_recipe(recipe: RecipeConfig, store: Store, progress=None, resume: bool = False) -> list[dict[str, Any]]:
    """Run or skip each step in order; returns one record per step."""
    from trainers.run import train

    steps = []
    ref, status = _build(store, recipe.reviser_data, progress)
    steps.append({"step": "reviser data", "result": ref, "status": status})
    reviser = recipe.reviser.model_copy(update={"datasets": recipe.reviser.datasets or [DatasetInput(ref=ref)]})
    path, status = _train(store, reviser, resume, train)
    steps.append({"step": "reviser", "result": path, "status": status})
    policy_data = recipe.policy_data
    if policy_data.revision.reviser is None:
        revision = policy_data.revision.model_copy(update={"reviser": ModelConfig(spec=str(Path(path).resolve()))})
        policy_data = policy_data.model_copy(update={"revision": revision})
    ref, status = _build(store, policy_data, progress)
    steps.append({"step": "policy data", "result": ref, "status": status})
    policy = recipe.policy.model_copy(update={"datasets": recipe.policy.datasets or [DatasetInput(ref=ref)]})
    path, status = _train(store, policy, resume, train)
    steps.append({"step": "policy", "result": path, "status": status})
    return steps
