import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

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
ITEMS = [
    ScoreItem(f"k{i}", [{"role": "user", "content": q}], a)
    for i, (q, a) in enumerate(
        [
            ("What is 2+2?", "4"),
            ("Write a haiku", "Leaves fall, quiet pond,\nthe frog waits"),
            ("Explain gravity", "Mass attracts mass; the more mass, the stronger the pull."),
            ("Hi", ""),
        ]
    )
]


@pytest.mark.parametrize(
    "text, rating",
    [
        ("Rating: 7", 7),
        ("rating:10", 10),
        ("Rating: **9**", 9),
        ("8", 8),
        ("  10 - excellent", 10),
        ("The answer deserves a Rating = 3 overall", 3),
        ("I cannot rate this", None),
        ("Rating: 11", None),
        ("Rating: 0", None),
        ("7.5 out of 10", None),
        ("Rating: 1.", 1),
        ("Rating: 1, fair", 1),
        ("Rating: 7/10", 7),
        ("Rating: 7.5", None),
        ("Rating: 1.5", None),
        ("Rating: 10,5", None),
        ("Rating: 100", None),
    ],
)
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return LogprobJudge(HFEngine(resolve_model(str(tiny_model_dir)), batch_size=3), TEMPLATE)


def digit_led(tokenizer) -> list[int]:
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i])[:1] in set("0123456789")]


def brute_force_expected_rating(judge, item):
    """One unpadded forward pass per context on a digit-wise tokenizer: P(d) = P("d") * P(no digit after "d"),
    P(10) = P("1") * P("0" | "1") * P(no digit after "1", "0"), normalized over 1..10."""
    engine = judge.engine
    tokenizer = engine.tokenizer
    prompt = (
        engine.encode(judge_messages(TEMPLATE, item)) + tokenizer(RATING_PREFIX, add_special_tokens=False)["input_ids"]
    )
    digit = {d: tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    led = digit_led(tokenizer)

    def next_logprobs(context):
        with torch.no_grad():
            return torch.log_softmax(engine.model(input_ids=torch.tensor([prompt + context])).logits[0, -1].float(), -1)

    def ends(context):
        return 1 - next_logprobs(context)[led].exp().sum().item()

    first = next_logprobs([])
    probabilities = {d: first[digit[d]].exp().item() * ends([digit[d]]) for d in range(1, 10)}
    probabilities[10] = (first[digit[1]] + next_logprobs([digit[1]])[digit[0]]).exp().item() * ends(
        [digit[1], digit[0]]
    )
    return sum(r * p for r, p in probabilities.items()) / sum(probabilities.values())


def test_logprob_judge_is_the_expected_rating(judge, tokenizer):
    assert [tokenizer.decode([i]) for i in digit_led(tokenizer)] == list("0123456789"), "digit-wise, digits only"
    scores = {s.key: s.score for s in judge.score(ITEMS)}
    for item in ITEMS:
        assert 1.0 <= scores[item.key] <= 10.0
        assert scores[item.key] == pytest.approx(brute_force_expected_rating(judge, item), abs=1e-4)
    alone = {s.key: s.score for item in ITEMS for s in judge.score([item])}
    assert alone == pytest.approx(scores, abs=1e-5)


def constant_judge(path, tokenizer, probabilities: dict[str, float]) -> LogprobJudge:
    """A real Llama that gives the same next-token distribution after any context: attention and MLP write
    nothing and every token embeds alike. Tokens (by text) get the given probabilities; the rest share what is left."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    chosen = {tokenizer.convert_tokens_to_ids(text): p for text, p in probabilities.items()}
    rest = (1 - sum(chosen.values())) / (len(tokenizer) - len(chosen))
    logits = torch.full((len(tokenizer),), math.log(rest))
    logits[list(chosen)] = torch.tensor([math.log(p) for p in chosen.values()])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(
            torch.randn(config.hidden_size).expand_as(model.model.embed_tokens.weight)
        )
        hidden = model.model.norm(model.model.embed_tokens.weight[0])
        model.lm_head.weight.copy_(logits[:, None] * hidden[None, :] / hidden.dot(hidden))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # float32: the designed probabilities are checked to 1e-4, finer than a bfloat16 logit
    return LogprobJudge(HFEngine(resolve_model(str(path)), batch_size=2, dtype="float32"), TEMPLATE)


def fresh_tokenizer(smollm2, *added):
    tokenizer = load_tokenizer(smollm2)
    tokenizer.add_tokens(list(added))
    return tokenizer


def test_a_rating_is_its_digits_then_no_digit_on_a_digit_wise_tokenizer(tmp_path, smollm2):
    """After "1", "1" (eleven) is no rating and "0" makes it 10: with P("1") = .3, P("0") = .2, P("7") = .2 after
    any context, P(1) = .3 (1 - D), P(7) = .2 (1 - D), P(10) = .3 * .2 * (1 - D), D the mass on digit tokens."""
    tokenizer = fresh_tokenizer(smollm2)
    judge = constant_judge(tmp_path, tokenizer, {"1": 0.3, "0": 0.2, "7": 0.2, ".": 0.1})
    rest = 0.2 / (len(tokenizer) - 4)
    weights = {1: 0.3, 7: 0.2, 10: 0.3 * 0.2, **{d: rest for d in (2, 3, 4, 5, 6, 8, 9)}}  # times (1 - D): cancels
    expected = sum(r * w for r, w in weights.items()) / sum(weights.values())
    mass = sum(weights.values()) * (1 - 0.7 - 7 * rest)
    scores = list(judge.score(ITEMS[:3]))
    assert [s.score for s in scores] == pytest.approx([expected] * 3, abs=1e-4)
    assert all(s.detail == f"rating mass {mass:.3f}" for s in scores)


def test_ten_as_one_token_or_two_both_count_as_ten(tmp_path, smollm2):
    tokenizer = fresh_tokenizer(smollm2, "10")
    assert tokenizer(RATING_PREFIX + "10", add_special_tokens=False)["input_ids"][-1] == len(tokenizer) - 1
    judge = constant_judge(tmp_path, tokenizer, {"1": 0.3, "0": 0.2, "10": 0.1, "7": 0.2})
    rest = 0.2 / (len(tokenizer) - 4)
    weights = {1: 0.3, 7: 0.2, 10: 0.1 + 0.3 * 0.2, **{d: rest for d in (2, 3, 4, 5, 6, 8, 9)}}
    expected = sum(r * w for r, w in weights.items()) / sum(weights.values())
    assert next(judge.score(ITEMS[:1])).score == pytest.approx(expected, abs=1e-4)


def test_reward_model_scores_batched_like_one_at_a_time(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    scorer = RewardModelScorer(model, load_tokenizer(resolve_model(str(tiny_model_dir))), batch_size=4)
    batched = {s.key: s.score for s in scorer.score(ITEMS)}
    single = {s.key: s.score for item in ITEMS for s in scorer.score([item])}
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(batched.values())) == len(ITEMS)


def text_judge(server, **options):
    engine = OpenAIEngine("judge", [server.url], max_retries=1, retry_backoff_s=0.01, timeout_s=5)
    return TextJudge(engine, TEMPLATE, **options)


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
