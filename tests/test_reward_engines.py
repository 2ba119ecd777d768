"""Reward models beyond in-process transformers: served by vLLM (`/classify`, here a stand-in on 127.0.0.1 that
renders the chat messages and runs the same tiny classifier) and on vLLM's pooling runner (CUDA only). Scores
agree with the transformers path to 1e-4 (float32, served one at a time against batched and padded)."""

import json
import threading

import pytest

from realign_data.build import Build
from realign_data.config import EngineConfig, ModelConfig, ScoringConfig
from realign_data.engines import create_engine
from realign_data.scoring import ScoreItem, make_scorer
from realign_data.store import Store
from tests.openai_server import Reply, ScriptedOpenAIServer
from tests.test_build import tiny_config

TOLERANCE = 1e-4  # float32: one item alone against the same item in a padded batch of 8


def classify_server(reward_dir, refuse: str = ""):
    """vLLM's `/classify` as a stand-in: the first logit of the tiny classifier over the chat-rendered messages
    (no activation); 503 for the very first request (a retry succeeds), 400 always for one mentioning ``refuse``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    lock = threading.Lock()
    served = []

    def script(request, seen):
        assert request["use_activation"] is False and request["add_generation_prompt"] is False
        text = json.dumps(request["messages"])
        if refuse and refuse in text:
            return Reply(status=400)
        with lock:
            served.append(text)
            if len(served) == 1:
                return Reply(status=503)
        ids = tokenizer.apply_chat_template(request["messages"], tokenize=True, return_dict=True, return_tensors="pt")
        with lock, torch.no_grad():
            logits = model(**ids).logits[0].tolist()
        data = [{"index": 0, "label": "LABEL_0", "probs": logits, "num_classes": len(logits)}]
        return Reply(body=json.dumps({"id": "classify-0", "object": "list", "data": data}).encode())

    return ScriptedOpenAIServer(script)


def scores_of(build: Build) -> dict:
    """Every sample's score by (prompt_id, sample index)."""
    result = build.run("score")
    return {(item.prompt_id, response.source): response.score for item in result.results for response in item.samples}


def test_a_served_reward_model_scores_as_transformers_does(tmp_path, tiny_model_dir, reward_model_dir):
    reward = {"scoring.method": "reward_model", "scoring.model": {"spec": str(reward_model_dir)}}
    local = scores_of(Build(tiny_config(tiny_model_dir, **reward), Store(tmp_path / "local")))
    with classify_server(reward_model_dir) as server:
        engine = {"kind": "openai", "base_urls": [server.url], "retry_backoff_s": 0.01}
        build = Build(tiny_config(tiny_model_dir, **reward, **{"scoring.engine": engine}), Store(tmp_path / "served"))
        served = scores_of(build)
    assert set(server.paths) == {"/classify"}
    assert build.retries["score"] == {"InternalServerError": 1}  # the 503 was retried and counted
    assert build.scorer_id() == "reward:openai:" + str(reward_model_dir)
    assert served.keys() == local.keys() and len(served) == 18
    for key, value in local.items():
        assert served[key] == pytest.approx(value, abs=TOLERANCE), key


def test_a_refused_reward_request_is_an_unrated_item_counted(tmp_path, reward_model_dir):
    with classify_server(reward_model_dir, refuse="refuse me") as server:
        scorer = make_scorer(
            ScoringConfig(method="reward_model"),
            (EngineConfig(kind="openai", base_urls=[server.url]), ModelConfig(spec="served-reward")),
            None,
            create_engine,
        )
        items = [ScoreItem("a", [{"role": "user", "content": "hi"}], "fine"), ScoreItem("b", [], "refuse me")]
        scores = {score.key: score for score in scorer.score(items)}
    assert isinstance(scores["a"].score, float) and scores["b"].score is None
    assert scores["b"].detail.startswith("HTTP 400")
    assert scorer.engine.stats["failed"] == 1


def test_vllm_reward_scores_agree_with_transformers(tmp_path, tiny_model_dir, reward_model_dir):
    pytest.importorskip("vllm", reason="the vllm extra is not installed (CUDA-only: pip install -e '.[vllm]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    reward = {"scoring.method": "reward_model", "scoring.model": {"spec": str(reward_model_dir), "dtype": "float32"}}
    local = scores_of(Build(tiny_config(tiny_model_dir, **reward), Store(tmp_path / "local")))
    engine = {"kind": "vllm", "gpu_memory_utilization": 0.3}
    on_vllm = scores_of(Build(tiny_config(tiny_model_dir, **reward, **{"scoring.engine": engine}), Store(tmp_path)))
    assert on_vllm.keys() == local.keys()
    for key, value in local.items():
        assert on_vllm[key] == pytest.approx(value, abs=2e-3), key  # vLLM's own HF-parity tolerance (float32)


def test_vllm_policy_and_reward_model_that_cannot_share_a_gpu_are_refused_first(tmp_path, tiny_model_dir):
    from tests.helpers import run_cli

    sets = ["engine.kind=vllm", "scoring.method=reward_model", f"scoring.model.spec={tiny_model_dir}"]
    sets += ["scoring.engine={kind: vllm, gpu_memory_utilization: 0.6}"]
    args = [part for item in sets for part in ("--set", item)]
    result = run_cli("build", "--store", str(tmp_path), "--policy", str(tiny_model_dir), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the vLLM instances of this build ask for more than the GPU (engine.gpu_memory_utilization=0.5 + "
        "scoring.engine.gpu_memory_utilization=0.6): lower them to sum to at most 0.95, or run the stages on Ray "
        "(--ray) with one GPU per worker"
    )
    assert not (tmp_path / "runs").exists()
