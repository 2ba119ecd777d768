import pytest

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.hf import HFEngine
from realign_data.models import resolve_model

QUESTIONS = ["Hi", "Tell me a long story about a dragon who learns to cook soup in a small village",
             "What is 2+2?", "Name three rivers in Europe and say which is longest", "Why?"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(resolve_model(str(tiny_model_dir)), batch_size=3)


def requests(params, questions=QUESTIONS):
    return [GenerationRequest(f"q{i}", [{"role": "user", "content": q}], params) for i, q in enumerate(questions)]


def run(engine, reqs):
    return {r.request_id: r for r in engine.generate(reqs)}


def test_chat_template_applied_once_without_double_bos(engine, tokenizer):
    ids = engine.encode([{"role": "user", "content": "Hi"}])
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
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
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert len(stop.strip()) == 2, "need a visible two-character stop string from the middle of the text"
    stopped = run(engine, [GenerationRequest("q1", requests(params)[1].messages,
                                             SamplingParams(n=1, temperature=1.0, max_new_tokens=30, seed=3,
                                                            stop=(stop,)))])["q1"].completions[0]
    assert stop not in stopped.text and text.startswith(stopped.text)
    assert stopped.finish_reason == "stop"
