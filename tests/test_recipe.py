"""The whole ReAlign loop from one recipe, on a tiny random model; a second run skips every finished step."""

import json

from realign_data.config import load_config
from realign_data.store import Store
from tests.helpers import run_cli
from trainers.recipe import RecipeConfig, run_recipe


def recipe_yaml(tmp_path, tiny_model_dir):
    build = (
        f"  policy: {{spec: {tiny_model_dir}}}\n  prompts: {{limit: 8}}\n"
        "  generation: {num_samples: 3, max_new_tokens: 8, temperature: 1.0}\n"
    )
    train = (
        f"  model: {{spec: {tiny_model_dir}}}\n  max_steps: 2\n  per_device_train_batch_size: 2\n"
        "  max_length: 320\n  learning_rate: 1.0e-3\n  eval_fraction: 0.25\n"
    )
    text = (
        f"reviser_data:\n  dataset: r-data\n{build}  pairs: {{types: [reviser_train], allow_truncated: true}}\n"
        f"reviser:\n  output_dir: {tmp_path / 'reviser'}\n{train}"
        f"policy_data:\n  dataset: p-data\n{build}  pairs: {{types: [on_policy, revision], allow_truncated: true}}\n"
        f"policy:\n  output_dir: {tmp_path / 'policy'}\n  revision_weight: 2.0\n{train}"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_runs_the_loop_then_skips_finished_steps(tmp_path, tiny_model_dir):
    manifest = recipe_yaml(tmp_path, tiny_model_dir)
    store = Store(tmp_path / "store")
    steps = run_recipe(load_config(RecipeConfig, manifest), store)
    assert [(s["step"], s["status"]) for s in steps] == [
        ("reviser data", "built"),
        ("reviser", "trained"),
        ("policy data", "built"),
        ("policy", "trained"),
    ]
    policy_data = store.resolve("p-data@v1").record
    assert policy_data["config"]["revision"]["reviser"]["spec"] == str((tmp_path / "reviser").resolve())
    assert policy_data["models"]["reviser"]["identity"].startswith(str((tmp_path / "reviser").resolve()))
    assert set(policy_data["rows_by_pair_type"]) <= {"on_policy", "revision"}
    trained = json.loads((tmp_path / "policy" / "training_record.json").read_text())
    assert trained["inputs"][0]["ref"] == "p-data@v1" and trained["config"]["revision_weight"] == 2.0
    assert json.loads((tmp_path / "reviser" / "training_record.json").read_text())["inputs"][0]["ref"] == "r-data@v1"

    again = run_cli("recipe", str(manifest), "--store", str(store.root), prog="realign-train", check=True)
    for step in ("reviser data", "reviser", "policy data", "policy"):
        assert step in again.stdout
    assert again.stdout.count("skipped") == 4
    assert [v.ref for v in store.versions()] == ["p-data@v1", "p-data-samples@v1", "r-data@v1", "r-data-samples@v1"]
