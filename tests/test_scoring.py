import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from realign_data.engines.hf import HFEngine
from realign_data.engines.openai_engine import OpenAIEngine
from realign_data.models import load_tokenizer, resolve_model
from realign_data.scoring import (
    RATING_PREFIX,
    LogprobJudge,
    RewardModelScorer,
    ScoreItem,
    TextJudge,
    judge_messages,
    parse_rating,
)
from realign_data.templates import load_template
from tests.openai_server import Reply, ScriptedOpenAIServer

TEMPLATE = load_template("judge", ("instruction", "response"))
ITEMS = [ScoreItem(f"k{i}", [{"role": "user", "content": q}], a) for i, (q, a) in enumerate([
    ("What is 2+2?", "4"), ("Write a haiku", "Leaves fall, quiet pond,\nthe frog waits"),
    ("Explain gravity", "Mass attracts mass; the more mass, the stronger the pull."), ("Hi", "")])]


@pytest.mark.parametrize("text, rating", [
    ("Rating: 7", 7), ("rating:10", 10), ("Rating: **9**", 9), ("8", 8), ("  10 - excellent", 10),
    ("The answer deserves a Rating = 3 overall", 3), ("I cannot rate this", None), ("Rating: 11", None),
    ("Rating: 0", None), ("7.5 out of 10", None),
])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return LogprobJudge(HFEngine(resolve_model(str(tiny_model_dir)), batch_size=3), TEMPLATE, "judge:tiny")


def brute_force_expected_rating(judge, item):
    """Ten separate forward passes: P(rating tokens), with "1" excluding "10", normalized over 1..10."""
    engine = judge.engine
    prompt = engine.encode(judge_messages(TEMPLATE, item)) + engine.tokenizer(RATING_PREFIX, add_special_tokens=False)[
        "input_ids"]
    probabilities = {}
    with torch.no_grad():
        for rating, tokens in judge.continuations.items():
            ids = torch.tensor([prompt + list(tokens)])
            logprobs = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), -1)
            probabilities[rating] = math.exp(sum(logprobs[len(prompt) - 1 + k, t].item() for k, t in enumerate(tokens)))
    for rating, tokens in judge.continuations.items():
        longer = [r for r, t in judge.continuations.items() if len(t) > len(tokens) and t[:len(tokens)] == tokens]
        probabilities[rating] -= sum(probabilities[r] for r in longer)
    total = sum(probabilities.values())
    return sum(r * p for r, p in probabilities.items()) / total


def test_logprob_judge_is_the_expected_rating(judge):
    scores = {s.key: s.score for s in judge.score(ITEMS)}
    for item in ITEMS:
        assert 1.0 <= scores[item.key] <= 10.0
        assert scores[item.key] == pytest.approx(brute_force_expected_rating(judge, item), abs=1e-4)
    alone = {s.key: s.score for item in ITEMS for s in judge.score([item])}
    assert alone == pytest.approx(scores, abs=1e-5)


def test_digit_wise_tokenizers_spell_ten_with_two_tokens(judge):
    assert all(len(judge.continuations[r]) == 1 for r in range(1, 10))
    assert judge.continuations[10][0] == judge.continuations[1][0] and len(judge.continuations[10]) == 2


def test_reward_model_scores_batched_like_one_at_a_time(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    scorer = RewardModelScorer(model, load_tokenizer(resolve_model(str(tiny_model_dir))), "reward:tiny", batch_size=4)
    batched = {s.key: s.score for s in scorer.score(ITEMS)}
    single = {s.key: s.score for item in ITEMS for s in scorer.score([item])}
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(batched.values())) == len(ITEMS)


def text_judge(server, **options):
    engine = OpenAIEngine("judge", [server.url], max_retries=1, retry_backoff_s=0.01, timeout_s=5)
    return TextJudge(engine, TEMPLATE, "judge-text:test", **options)


def test_text_judge_reasks_unparseable_answers_then_counts_them():
    def script(request, seen):
        text = request["messages"][0]["content"]
        if "haiku" in text:
            return Reply(content="Rating: 8" if seen >= 1 else "What a lovely poem!")
        if "gravity" in text:
            return Reply(content="no idea")
        if "2+2" in text:
            return Reply(status=500)
        return Reply(content="Rating: 2")

    with ScriptedOpenAIServer(script) as server:
        judge = text_judge(server, max_attempts=3)
        scores = {s.key: s for s in judge.score(ITEMS)}
    assert scores["k1"].score == 8.0  # parsed on the second ask
    assert scores["k2"].score is None and "unparseable" in scores["k2"].detail
    assert scores["k0"].score is None and "InternalServerError" in scores["k0"].detail
    assert scores["k3"].score == 2.0
    assert judge.reasks == 5  # haiku once, gravity and the failing request twice each
    assert server.seen[next(k for k in server.seen if "gravity" in k)] == 3  # asked max_attempts times
