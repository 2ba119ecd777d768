import json
import shutil
from pathlib import Path

import pytest
import torch

from realign_data.errors import RealignError
from realign_data.models import alias_gguf, load_model, pick_dtype, resolve_model
from tests.helpers import run_cli


def test_builtin_alias_converts_once_and_is_reused(smollm2, realign_home):
    assert smollm2.source == "alias"
    assert smollm2.path.parent == realign_home / "models"
    assert (smollm2.path / "model.safetensors").exists()
    stamp = (smollm2.path / "model.safetensors").stat().st_mtime_ns
    again = resolve_model("smollm2-135m-instruct")
    assert again.path == smollm2.path
    assert (again.path / "model.safetensors").stat().st_mtime_ns == stamp
    # the same GGUF passed as a file resolves to the same conversion
    assert resolve_model(str(alias_gguf("smollm2-135m-instruct"))).path == smollm2.path
    source = json.loads((smollm2.path / "realign_source.json").read_text())
    assert source["gguf"].endswith(".gguf") and len(source["gguf_sha256"]) == 64


def test_builtin_model_facts(smollm2):
    assert smollm2.architecture == "LlamaForCausalLM"
    assert smollm2.has_chat_template
    assert 130_000_000 < smollm2.num_parameters() < 140_000_000


def test_local_directory_fingerprint_tracks_weights(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    model = resolve_model(str(copy))
    assert model.source == "local"
    first = model.fingerprint()
    assert first == resolve_model(str(tiny_model_dir)).fingerprint()  # same content, same fingerprint
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert resolve_model(str(copy)).fingerprint() != first


def test_parameter_count_from_headers_matches_torch(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = resolve_model(str(tiny_model_dir))
    loaded = AutoModelForCausalLM.from_pretrained(model.path)
    # tied embeddings are stored once, as torch counts them
    assert model.num_parameters() == sum(p.numel() for p in loaded.parameters())


CPU_FLAGS = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else None
NATIVE_BF16 = CPU_FLAGS is not None and bool({"avx512_bf16", "amx_bf16"} & set(CPU_FLAGS))


@pytest.mark.skipif(CPU_FLAGS is None, reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_auto_dtype_on_cpu_is_bfloat16_for_decoding_only_where_the_cpu_has_it(tiny_model_dir):
    assert pick_dtype("auto", "cpu", cpu_bf16=True) == (torch.bfloat16 if NATIVE_BF16 else torch.float32)
    assert pick_dtype("auto", "cpu") == torch.float32  # training (TRL on CPU) and padded reward batches
    assert pick_dtype("float32", "cpu", cpu_bf16=True) == torch.float32
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    model = resolve_model(str(tiny_model_dir))
    assert load_model(model, device="cpu").dtype == (torch.bfloat16 if NATIVE_BF16 else torch.float32)
    assert load_model(model, task="reward", device="cpu").dtype == torch.float32


@pytest.mark.parametrize(
    "dtype, tolerance",
    [
        ("float32", 1e-4),
        pytest.param(
            "bfloat16",
            0.1,  # a bfloat16 logit of magnitude ~8 is rounded to 1/32 on its own; layers compound it
            marks=pytest.mark.skipif(not NATIVE_BF16, reason="oneDNN packs bfloat16 only on CPUs that compute it"),
        ),
    ],
)
def test_inference_models_on_cpu_run_packed_linear_layers_rows_independent_of_their_batch(
    tiny_model_dir, tokenizer, dtype, tolerance
):
    """load_model is for inference: on CPU its float32 or bfloat16 linear layers are oneDNN-packed
    (realign_data/kernels.py); the logits stay those of the model transformers loads, up to float rounding, and a
    row's logits are bit-for-bit the same alone as beside other rows (what seeded samples independent of their
    batch rest on)."""
    from transformers import AutoModelForCausalLM

    from realign_data.kernels import PackedLinear

    packed = load_model(resolve_model(str(tiny_model_dir)), device="cpu", dtype=dtype)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype)).eval()
    assert packed.dtype == getattr(torch, dtype)
    assert isinstance(packed.lm_head, PackedLinear) and isinstance(packed.model.layers[0].mlp.up_proj, PackedLinear)
    ids = torch.randint(0, len(tokenizer), (6, 5), generator=torch.Generator().manual_seed(0))  # no padding
    with torch.no_grad():
        logits = packed(ids).logits
        assert torch.allclose(logits.float(), plain(ids).logits.float(), atol=tolerance, rtol=tolerance)
        for row in range(len(ids)):
            assert torch.equal(packed(ids[row : row + 1]).logits[0], logits[row]), row


def test_reward_task_loads_a_sequence_classification_head(tiny_model_dir, tokenizer):
    reward = load_model(resolve_model(str(tiny_model_dir)), task="reward", device="cpu", dtype="bfloat16")
    assert type(reward).__name__ == "LlamaForSequenceClassification"
    assert reward.dtype == torch.bfloat16  # an explicit dtype overrides the per-device default
    batch = tokenizer(["a short answer", "another"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = reward(**batch).logits
    assert logits.shape == (2, reward.config.num_labels)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("org-that/does-not-exist", "cannot reach the Hugging Face Hub"),
        ("no_such_model", "not a built-in alias"),
    ],
)
def test_unresolvable_specs_explain_what_to_pass(spec, message):
    with pytest.raises(RealignError, match=message):
        resolve_model(spec)


def test_directory_without_weights_is_explained(tmp_path):
    with pytest.raises(RealignError, match="no config.json and no .gguf file"):
        resolve_model(str(tmp_path))


def test_models_show_cli(smollm2):
    shown = json.loads(run_cli("models", "show", "smollm2-135m-instruct", "--format", "json", check=True).stdout)
    assert shown["path"] == str(smollm2.path)
    assert shown["fingerprint"] == smollm2.fingerprint()
    assert shown["chat_template"] is True and shown["architecture"] == "LlamaForCausalLM"
    if CPU_FLAGS is not None:  # what `dtype: auto` gives generation here
        assert shown["generation"] == ("cpu, bfloat16" if NATIVE_BF16 else "cpu, float32")
    offline = run_cli("models", "show", "meta-llama/Llama-3.2-1B-Instruct")
    assert offline.returncode == 1 and "pass a local model directory or a .gguf file" in offline.stderr
