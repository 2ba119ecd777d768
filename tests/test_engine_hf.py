import pytest
import torch

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.hf import HFEngine
from realign_data.models import resolve_model

QUESTIONS = [
    "Hi",
    "Tell me a long story about a dragon who learns to cook soup in a small village",
    "What is 2+2?",
    "Name three rivers in Europe and say which is longest",
    "Why?",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(resolve_model(str(tiny_model_dir)), batch_size=3)


def requests(params, questions=QUESTIONS):
    return [GenerationRequest(f"q{i}", [{"role": "user", "content": q}], params) for i, q in enumerate(questions)]


def run(engine, reqs):
    return {r.request_id: r for r in engine.generate(reqs)}


def test_chat_template_applied_once_without_double_bos(engine, tokenizer):
    ids = engine.encode([{"role": "user", "content": "Hi"}])
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] != [tokenizer.bos_token_id] * 2


def test_batched_left_padded_greedy_equals_one_at_a_time(engine):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    batched = run(engine, requests(params))
    for request in requests(params):
        alone = run(engine, [request])[request.request_id]
        assert alone.completions == batched[request.request_id].completions


def test_seeded_sampling_does_not_depend_on_batch_neighbours(engine):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    everything = run(engine, requests(params))
    subset = run(engine, requests(params)[1:3])
    for request_id, result in subset.items():
        assert result.completions == everything[request_id].completions
    texts = [c.text for c in everything["q1"].completions]
    assert len(set(texts)) > 1, "n samples of one prompt differ"
    reseeded = run(engine, requests(SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=8)))
    assert [c.text for c in reseeded["q1"].completions] != texts


def test_token_counts_and_finish_reasons(engine, tokenizer):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=1)
    results = run(engine, requests(params))
    assert all(len(r.completions) == 2 for r in results.values())
    for request in requests(params):
        completion = results[request.request_id].completions[0]
        assert completion.prompt_tokens == len(engine.encode(request.messages))
        assert 1 <= completion.completion_tokens <= 6
        assert completion.finish_reason == ("length" if completion.completion_tokens == 6 else "stop")


def test_stop_strings_cut_the_text(engine):
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=30, seed=3)
    free = run(engine, requests(params))
    text = free["q1"].completions[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert len(stop.strip()) == 2, "need a visible two-character stop string from the middle of the text"
    stopped = run(
        engine,
        [
            GenerationRequest(
                "q1",
                requests(params)[1].messages,
                SamplingParams(n=1, temperature=1.0, max_new_tokens=30, seed=3, stop=(stop,)),
            )
        ],
    )["q1"].completions[0]
    assert stop not in stopped.text and text.startswith(stopped.text)
    assert stopped.finish_reason == "stop"


def test_logprobs_are_those_of_the_raw_logits_at_every_generated_token(tiny_model_dir, tokenizer):
    """Greedy under a repetition penalty: the logprobs reported are the unpenalized model's, the choice the
    penalized one's; both are recomputed here with plain forward passes (in float32, to 1e-4: in bfloat16 the
    plain pass attends in bfloat16 and the decoder in float32)."""
    engine = HFEngine(resolve_model(str(tiny_model_dir)), batch_size=3, dtype="float32")
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=6, repetition_penalty=1.5, top_logprobs=3)
    completion = run(engine, [GenerationRequest("q", messages, params)])["q"].completions[0]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    expected, flipped = [], False
    for _ in range(completion.completion_tokens):
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        seen = torch.tensor(sorted(set(ids)))
        penalized = logits.clone()
        penalized[seen] = torch.where(logits[seen] > 0, logits[seen] / 1.5, logits[seen] * 1.5)
        token = int(penalized.argmax())
        flipped |= token != int(logits.argmax())
        top = torch.topk(logprobs, 3)
        expected.append(
            (
                tokenizer.decode([token]),
                logprobs[token].item(),
                [tokenizer.decode([i]) for i in top.indices.tolist()],
                top.values.tolist(),
            )
        )
        ids.append(token)
    assert flipped, "the penalty changed some choice, so raw and penalized logprobs are told apart"
    assert len(completion.logprobs) == completion.completion_tokens
    for entry, (token, logprob, top_texts, top_values) in zip(completion.logprobs, expected, strict=True):
        assert entry.token == token and entry.logprob == pytest.approx(logprob, abs=1e-4)
        assert [text for text, _ in entry.top] == top_texts
        assert [value for _, value in entry.top] == pytest.approx(top_values, abs=1e-4)
    plain = run(engine, [GenerationRequest("q", messages, SamplingParams(n=1, temperature=0.0, max_new_tokens=6))])
    assert plain["q"].completions[0].logprobs is None  # only when asked


def test_requests_with_different_parameters_in_one_call_each_get_their_own(engine):
    """batch_size=3 would put all three in one batch; each must still be decoded with its own parameters."""
    mixed = [
        GenerationRequest(
            "greedy",
            [{"role": "user", "content": QUESTIONS[1]}],
            SamplingParams(n=1, temperature=0.0, max_new_tokens=4),
        ),
        GenerationRequest(
            "hot",
            [{"role": "user", "content": QUESTIONS[1]}],
            SamplingParams(n=1, temperature=1.5, top_p=1.0, max_new_tokens=12, seed=2, stop=("e",)),
        ),
        GenerationRequest(
            "filtered",
            [{"role": "user", "content": QUESTIONS[1]}],
            SamplingParams(n=1, temperature=0.7, top_k=5, min_p=0.05, repetition_penalty=1.3, max_new_tokens=8, seed=2),
        ),
    ]
    together = run(engine, mixed)
    alone = {request.request_id: run(engine, [request])[request.request_id] for request in mixed}
    for request_id, result in alone.items():
        assert together[request_id].completions == result.completions, request_id
    assert len({c.text for r in alone.values() for c in r.completions}) == 3


@pytest.fixture(scope="module")
def sliding_twin(tmp_path_factory, tiny_model_dir, tokenizer):
    """The tiny Llama's very weights as a Mistral with a sliding window wider than any test's context: the same
    model, but its cache keeps a window, so the engine runs it through ``model.generate`` batch by batch."""
    from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM

    llama = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    config = MistralConfig(**{**llama.config.to_dict(), "model_type": "mistral", "sliding_window": 4096})
    twin = MistralForCausalLM(config)
    twin.load_state_dict(llama.state_dict())
    path = tmp_path_factory.mktemp("tiny-mistral")
    twin.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return HFEngine(resolve_model(str(path)), batch_size=4)


def test_continuous_batching_samples_what_model_generate_samples(engine, sliding_twin):
    """One model, two paths: the decoder (continuous batching, slots refilled as rows end) and model.generate
    (fixed batches, the sliding-window twin) give the same tokens for greedy and seeded sampled decoding."""
    assert engine.decoder is not None and sliding_twin.decoder is None
    for params in (
        SamplingParams(n=2, temperature=0.0, max_new_tokens=16),
        SamplingParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=20, seed=5),
        SamplingParams(n=2, temperature=1.2, top_k=7, min_p=0.02, repetition_penalty=1.2, max_new_tokens=12, seed=9),
    ):
        decoded, generated = run(engine, requests(params)), run(sliding_twin, requests(params))
        for request_id, result in generated.items():
            assert decoded[request_id].completions == result.completions, (params, request_id)


def test_prompt_samples_split_over_slots_and_longer_prompts_joining_running_rows(tiny_model_dir):
    """Two slots for three samples per prompt: a prompt's samples start at different steps, longer prompts join
    rows already running (the cache widens to the left), the last row decodes alone (the batch compacts). Each
    sample is still what it is decoded alone, one slot at a time."""
    narrow = HFEngine(resolve_model(str(tiny_model_dir)), batch_size=2)
    alone = HFEngine(resolve_model(str(tiny_model_dir)), batch_size=1)
    params = SamplingParams(n=3, max_new_tokens=10, seed=4)
    mixed = requests(params, [QUESTIONS[4], QUESTIONS[2], QUESTIONS[3] * 4])
    widths = [len(narrow.encode(r.messages)) for r in mixed]
    assert widths[2] > widths[0] + params.max_new_tokens, "the long prompt is wider than the rows it joins"
    together = run(narrow, mixed)
    for request in mixed:
        assert together[request.request_id].completions == run(alone, [request])[request.request_id].completions
