"""realign-train on tiny random models: every loss type, LoRA, SFT warm-up, resume after SIGKILL, bad data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from realign_data.config import load_config
from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.hf import HFEngine
from realign_data.errors import InputError
from realign_data.models import resolve_model
from realign_data.store import Store
from tests.helpers import pair_row, pair_table
from trainers.config import DatasetInput, PolicyTrainConfig, ReviserTrainConfig
from trainers.data import load_training_pairs
from trainers.run import train

FAST = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "max_length": 64,
    "learning_rate": 1e-3,
    "save_steps": 1,
}


def rows(count, start=0):
    return [
        pair_row(i, pair_type=("on_policy", "revision", "reviser_train")[i % 3], prompt_id=f"prompt-{i // 3}")
        for i in range(start, start + count)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("train-store"))
    store.write_version("pairs", [pair_table(rows(36))])
    return store


def config(kind, tiny_model_dir, output, **values):
    return load_config(
        kind,
        None,
        [],
        {
            "model.spec": str(tiny_model_dir),
            "output_dir": str(output),
            "datasets": [{"ref": "pairs@v1"}],
            **FAST,
            **values,
        },
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "sigmoid_norm", "simpo"])
def test_every_loss_type_trains_and_saves_a_loadable_model(tmp_path, store, tiny_model_dir, loss_type):
    manifest = train(config(PolicyTrainConfig, tiny_model_dir, tmp_path / "out", loss_type=loss_type), store)
    assert manifest["metrics"]["global_step"] == 2
    assert all(
        isinstance(v, float) and v == v for v in (manifest["metrics"]["first_loss"], manifest["metrics"]["last_loss"])
    )
    assert "eval_rewards/accuracies" in manifest["metrics"]
    assert manifest["model_out"]["fingerprint"] != manifest["model_in"]["fingerprint"]
    before, after = weights(tiny_model_dir), weights(tmp_path / "out")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    engine = HFEngine(resolve_model(str(tmp_path / "out")))  # the resolver and engines load it directly
    result = next(
        engine.generate(
            [
                GenerationRequest(
                    "r", [{"role": "user", "content": "Hi"}], SamplingParams(n=1, temperature=0, max_new_tokens=4)
                )
            ]
        )
    )
    assert result.error is None and len(result.completions) == 1


def test_manifest_plot_and_provenance(tmp_path, store, tiny_model_dir):
    out = tmp_path / "policy"
    manifest = train(config(PolicyTrainConfig, tiny_model_dir, out, revision_weight=0.5), store)
    saved = json.loads((out / "training_record.json").read_text())
    assert saved["role"] == "policy" and saved["config"]["revision_weight"] == 0.5
    assert saved["inputs"][0]["ref"] == "pairs@v1" and len(saved["inputs"][0]["record_sha256"]) == 64
    assert saved["inputs"][0]["files"] == {f["path"]: f["sha256"] for f in store.resolve("pairs@v1").record["files"]}
    assert saved["model_out"]["fingerprint"] == resolve_model(str(out)).fingerprint()
    assert saved["code"]["packages"]["trl"] and saved["seed"] == 0
    assert set(saved["rows"]["train_by_pair_type"]) == {"on_policy", "revision"}
    assert saved["rows"]["truncation"]["pairs"] == saved["rows"]["train"]
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["metrics"] == saved["metrics"]


def test_lora_adapters_are_merged_into_full_weights(tmp_path, store, tiny_model_dir):
    out = tmp_path / "lora"
    train(config(PolicyTrainConfig, tiny_model_dir, out, lora={"r": 4, "alpha": 8}), store)
    assert not (out / "adapter_config.json").exists()
    assert set(weights(out)) == set(weights(tiny_model_dir))
    assert any(not torch.equal(weights(out)[n], weights(tiny_model_dir)[n]) for n in weights(out))


def test_reviser_sft_warmup_then_dpo(tmp_path, store, tiny_model_dir):
    out = tmp_path / "reviser"
    manifest = train(config(ReviserTrainConfig, tiny_model_dir, out, sft_warmup={"enabled": True}), store)
    assert manifest["role"] == "reviser"
    assert (out / "sft" / "model.safetensors").exists()
    assert manifest["rows"]["train_by_pair_type"].keys() == {"reviser_train"}
    assert any(not torch.equal(weights(out / "sft")[n], weights(tiny_model_dir)[n]) for n in weights(out))


def test_revision_weight_acts_by_sampling_proportion(store):
    inputs = [DatasetInput(ref="pairs@v1")]
    for weight, expected in ((0.5, 6), (2.0, 24), (0.0, 0)):
        data, held_out, _ = load_training_pairs(
            inputs, ["on_policy", "revision"], store, 0, type_weights={"revision": weight}
        )
        assert held_out is None
        assert data["pair_type"].count("revision") == expected and data["pair_type"].count("on_policy") == 12
    doubled, _, _ = load_training_pairs([DatasetInput(ref="pairs@v1", weight=2.0)], ["on_policy"], store, 0)
    assert doubled["pair_type"].count("on_policy") == 24


def test_held_out_split_never_shares_a_prompt(store):
    train_part, eval_part, _ = load_training_pairs(
        [DatasetInput(ref="pairs@v1")], ["on_policy", "revision"], store, 0, eval_fraction=0.25
    )
    assert len(train_part) + len(eval_part) == 24 and len(eval_part) == 6  # 3 of the 12 prompts, 2 pairs each
    assert not set(train_part["prompt_id"]) & set(eval_part["prompt_id"])


def pair_ids(data, source_rows) -> list[str]:
    """The stored pair_id of every row of ``data`` (training columns only), looked up by the pair's content."""
    by_content = {
        (r["prompt_id"], r["pair_type"], r["chosen"][0]["content"], r["rejected"][0]["content"]): r["pair_id"]
        for r in source_rows
    }
    return sorted(
        by_content[(r["prompt_id"], r["pair_type"], r["chosen"][0]["content"], r["rejected"][0]["content"])]
        for r in data
    )


def test_held_out_set_is_split_before_resampling_and_the_same_for_every_lambda(store):
    """12 prompts with one on_policy and one revision pair each; 3 prompts (6 pairs) are held out."""
    source = rows(36)
    runs, held_out = {}, {}
    for input_weight, revision_weight in ((1.0, None), (1.0, 0.0), (1.0, 1 / 3), (1.0, 2.0), (2.0, 1.0)):
        train_part, eval_part, inputs = load_training_pairs(
            [DatasetInput(ref="pairs@v1", weight=input_weight)],
            ["on_policy", "revision"],
            store,
            seed=0,
            eval_fraction=0.25,
            type_weights=None if revision_weight is None else {"revision": revision_weight},
        )
        runs[input_weight, revision_weight] = train_part
        held_out[input_weight, revision_weight] = held = tuple(pair_ids(eval_part, source))
        assert len(held) == len(set(held)) == 6  # each held-out pair once, never resampled
        assert len(set(eval_part["prompt_id"])) == 3 and not set(train_part["prompt_id"]) & set(eval_part["prompt_id"])
        assert inputs[0]["eval_rows"] == 6 and inputs[0]["used_rows"] == 18 * input_weight + 6  # before lambda
    # resampling acts on the 9 training prompts only: 9 on_policy and 9 revision pairs before weighting
    for (input_weight, revision_weight), expected in (
        ((1.0, None), (9, 9)),
        ((1.0, 0.0), (9, 0)),
        ((1.0, 1 / 3), (9, 3)),
        ((1.0, 2.0), (9, 18)),
        ((2.0, 1.0), (18, 18)),
    ):
        types = runs[input_weight, revision_weight]["pair_type"]
        assert (types.count("on_policy"), types.count("revision")) == expected
    assert len(set(held_out.values())) == 1  # the same pairs whatever lambda and the input weight
    assert not set(pair_ids(runs[1.0, 2.0], source)) & set(held_out[1.0, 2.0])


def bad_file(tmp_path, name, table):
    path = tmp_path / name
    pq.write_table(table, path)
    return str(path)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_column", "missing column(s) rejected"),
        ("empty", "no rows"),
        ("wrong_pair_type", "no reviser_train pairs to train on (it has on_policy=4)"),
        ("unknown_pair_type", "unknown pair_type value(s) sideways"),
    ],
)
def test_bad_datasets_are_refused_before_training(tmp_path, tiny_model_dir, case, message):
    table = pair_table([pair_row(i, pair_type="on_policy") for i in range(4)])
    if case == "missing_column":
        table = table.drop_columns(["rejected"])
    elif case == "empty":
        table = table.slice(0, 0)
    elif case == "unknown_pair_type":
        table = table.set_column(table.schema.get_field_index("pair_type"), "pair_type", pa.array(["sideways"] * 4))
    path = bad_file(tmp_path, "bad.parquet", table)
    out = tmp_path / "never"
    cfg = load_config(
        ReviserTrainConfig,
        None,
        [],
        {"model.spec": str(tiny_model_dir), "output_dir": str(out), "datasets": [path], **FAST},
    )
    with pytest.raises(InputError) as error:
        train(cfg, Store(tmp_path / "store"))
    assert message in str(error.value) and str(error.value).startswith(path)
    assert not out.exists()


def test_pairs_longer_than_max_length_are_refused_with_the_reason(tmp_path, store, tiny_model_dir):
    cfg = config(ReviserTrainConfig, tiny_model_dir, tmp_path / "out", max_length=16)
    with pytest.raises(InputError, match="every training prompt is at least max_length=16 tokens"):
        train(cfg, store)
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_dataset_in_one_line(tmp_path, tiny_model_dir):
    path = bad_file(tmp_path, "bad.parquet", pair_table([pair_row(0)]).drop_columns(["chosen"]))
    cli = Path(sys.executable).parent / "realign-train"
    result = subprocess.run(
        [str(cli), "policy", "-d", path, "--model", str(tiny_model_dir), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: missing column(s) chosen; a pair dataset needs prompt, chosen, rejected, pair_type, prompt_id"
    ]


def test_resume_after_sigkill_continues_from_the_last_complete_checkpoint(tmp_path, store, tiny_model_dir):
    cli = Path(sys.executable).parent / "realign-train"

    def command(out):
        return [
            str(cli),
            "policy",
            "-d",
            "pairs@v1",
            "--store",
            str(store.root),
            "--model",
            str(tiny_model_dir),
            "-o",
            str(out),
            "--max-steps",
            "8",
            "--set",
            "save_steps=2",
            "--set",
            "per_device_train_batch_size=2",
            "--set",
            "max_length=64",
            "--set",
            "learning_rate=1e-3",
            "--set",
            "save_total_limit=10",
        ]

    out = tmp_path / "resumed"
    process = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "checkpoint-4").exists():  # killed while checkpoint-4 is being written
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "training_record.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("checkpoint-2/*")}
    refused = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run([*command(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("checkpoint-2/*")} == kept
    assert json.loads((out / "training_record.json").read_text())["metrics"]["global_step"] == 8
    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(command(uninterrupted), check=True, capture_output=True, timeout=600)
    for name, tensor in weights(uninterrupted).items():  # the same model as a run that was never stopped
        assert torch.allclose(weights(out)[name], tensor, atol=1e-5), name
