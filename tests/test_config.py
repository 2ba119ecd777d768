import json

import pytest
import yaml

from realign_data.config import BuildConfig, load_config, read_manifest
from realign_data.errors import InputError
from tests.helpers import REPO, run_cli


def write(path, text):
    path.write_text(text)
    return path


def test_manifest_then_set_then_options_take_precedence(tmp_path):
    manifest = write(tmp_path / "m.yaml", "dataset: mine\ngeneration:\n  temperature: 0.3\n  num_samples: 4\n")
    config = load_config(
        BuildConfig,
        manifest,
        ["generation.temperature=0.7", "pairs.mix={on_policy: 1.0}"],
        {"generation.num_samples": 6, "prompts.limit": None},
    )
    assert config.dataset == "mine"
    assert config.generation.temperature == 0.7
    assert config.generation.num_samples == 6
    assert config.pairs.mix == {"on_policy": 1.0}
    assert config.prompts.limit == 16  # a None option leaves the default (the smoke recipe) alone


@pytest.mark.parametrize(
    "text, sets, message",
    [
        ("generation:\n  temprature: 0.3\n", [], "m.yaml: generation.temprature: unknown key"),
        ("generation:\n  temperature: hot\n", [], "m.yaml: generation.temperature: Input should be a valid number"),
        ("", ["scoring.method=oracle"], "scoring.method: Input should be 'judge' or 'reward_model'"),
        ("", ["generation.num_samples=0"], "generation.num_samples: Input should be greater than or equal to 1"),
        ("", ["generation"], "expected KEY=VALUE"),
        ("dataset: [1, 2]\n", [], "m.yaml: dataset: Input should be a valid string"),
        ("- a\n- b\n", [], "a manifest must be a YAML mapping"),
        ("generation: {temperature: 0.3\n", [], "m.yaml:2: invalid YAML"),
    ],
)
def test_bad_manifests_name_the_dotted_field(tmp_path, text, sets, message):
    manifest = write(tmp_path / "m.yaml", text)
    with pytest.raises(InputError) as error:
        load_config(BuildConfig, manifest, sets)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("key", ["engine.api_key", "token", "prompts.hf_token"])
def test_secrets_are_refused_in_manifests(tmp_path, key):
    with pytest.raises(InputError, match="secrets are not allowed"):
        load_config(BuildConfig, None, [f"{key}=hf_abcdefghijklmnopqrstuvwxyz"])


@pytest.mark.parametrize(
    "manifest",
    sorted(
        p for p in (REPO / "manifests").glob("*.yaml") if not p.name.startswith("eval-")
    ),  # tests/test_eval_config.py
    ids=lambda p: p.name,
)
def test_shipped_build_and_recipe_manifests_validate(manifest):
    from trainers.recipe import RecipeConfig

    load_config(RecipeConfig if "reviser_data" in read_manifest(manifest) else BuildConfig, manifest)


def test_config_show_prints_effective_config():
    result = run_cli(
        "config",
        "show",
        "-m",
        str(REPO / "manifests" / "smoke-cpu.yaml"),
        "--set",
        "generation.temperature=0.25",
        "--format",
        "json",
        check=True,
    )
    shown = json.loads(result.stdout)
    assert shown["generation"]["temperature"] == 0.25
    assert shown["prompts"]["limit"] == 16
    assert BuildConfig.model_validate(shown) == load_config(
        BuildConfig, REPO / "manifests" / "smoke-cpu.yaml", ["generation.temperature=0.25"]
    )
    as_yaml = run_cli("config", "show", check=True)
    assert yaml.safe_load(as_yaml.stdout) == BuildConfig().model_dump(mode="json")


def test_config_show_rejects_unknown_key_with_exit_2(tmp_path):
    result = run_cli("config", "show", "--set", "generation.tempreature=1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config: generation.tempreature: unknown key"


def test_extends_merges_a_parent_manifest(tmp_path):
    write(tmp_path / "base.yaml", "dataset: base\ngeneration:\n  temperature: 0.3\n  num_samples: 4\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ndataset: child\ngeneration:\n  num_samples: 8\n")
    config = load_config(BuildConfig, child)
    assert (config.dataset, config.generation.temperature, config.generation.num_samples) == ("child", 0.3, 8)
    nested = write(tmp_path / "nested.yaml", "section:\n  extends: base.yaml\n  dataset: inner\n")
    assert read_manifest(nested)["section"]["generation"] == {"temperature": 0.3, "num_samples": 4}
    write(tmp_path / "loop.yaml", "extends: loop.yaml\n")
    with pytest.raises(InputError, match="a cycle"):
        load_config(BuildConfig, tmp_path / "loop.yaml")


def test_gpu_recipes_use_vllm_and_a_reward_model():
    for name in ("realign-qwen2.5-0.5b.yaml", "realign-llama3.2-1b.yaml"):
        config = load_config(BuildConfig, REPO / "manifests" / name)
        assert config.engine.kind == "vllm" and config.generation.num_samples == 5
        assert config.scoring.method == "reward_model" and "Skywork" in config.scoring.model.spec
        assert config.prompts.source == "HuggingFaceH4/ultrafeedback_binarized:train_prefs"
        # the paper's benchmarks are kept out of the training prompts
        assert config.prompts.decontaminate.against == ["alpaca_eval", "arena-hard-v0.1", "arena-hard-v2.0"]
    llama = load_config(BuildConfig, REPO / "manifests" / "realign-llama3.2-1b.yaml")
    assert llama.policy.spec == "meta-llama/Llama-3.2-1B-Instruct" and llama.dataset == "realign-llama3.2-1b"
