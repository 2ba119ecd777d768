"""The hf engine samples exactly what its SamplingParams say, and nothing from the checkpoint's own defaults."""

import shutil
from dataclasses import replace

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from realign_data.config import BuildConfig, load_config
from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.hf import HFEngine
from realign_data.errors import InputError
from realign_data.models import resolve_model

MESSAGES = [{"role": "user", "content": "Pick a word."}]
DESIGNED = 50  # tokens given the logits -0.1 * rank for MESSAGES; every other token gets -20
SAMPLES = 3000


@pytest.fixture(scope="module")
def designed(tmp_path_factory, tokenizer):
    """A tiny Llama whose first-token logits after MESSAGES are set by hand, so every filter cuts real mass.

    Returns the model directory and the designed token ids, likeliest first; their texts are distinct.
    """
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    special = set(tokenizer.all_special_ids)
    texts, tokens = set(), []
    for token in torch.randperm(len(tokenizer)).tolist():
        text = tokenizer.decode([token]).strip()
        if token not in special and text.isalpha() and text not in texts:
            texts.add(text)
            tokens.append(token)
        if len(tokens) == DESIGNED:
            break
    logits = torch.full((len(tokenizer),), -20.0)
    logits[tokens] = -0.1 * torch.arange(DESIGNED, dtype=torch.float)
    with torch.no_grad():  # lm_head @ hidden == logits for this prompt
        model.lm_head.weight.copy_(logits[:, None] * hidden[None, :] / hidden.dot(hidden))
    path = tmp_path_factory.mktemp("designed-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokens


def exact_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """softmax(logits / T), then min-p, top-k and top-p (as transformers' TopPLogitsWarper cuts), renormalized."""
    probs = torch.softmax(logits.double() / params.temperature, dim=-1)
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, 0.0)
    if params.top_k > 0:
        probs[probs.argsort(descending=True)[params.top_k :]] = 0.0
    probs = probs / probs.sum()
    ascending, order = probs.sort()
    removed = ascending.cumsum(0) <= 1 - params.top_p
    removed[-1] = False
    probs[order[removed]] = 0.0
    return probs / probs.sum()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=SAMPLES, temperature=0.8, top_p=0.7, max_new_tokens=1, seed=11),
        SamplingParams(n=SAMPLES, temperature=1.3, top_p=0.9, top_k=8, min_p=0.4, max_new_tokens=1, seed=12),
    ],
    ids=["top_p", "min_p_top_k_top_p"],
)
def test_samples_follow_the_exact_filtered_distribution(designed, tokenizer, params):
    scipy_stats = pytest.importorskip("scipy.stats")
    path, tokens = designed
    engine = HFEngine(resolve_model(str(path)), batch_size=1000)
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1]
    exact = exact_distribution(logits, params)
    support = [token for token in tokens if exact[token] > 0]
    assert 5 <= len(support) < DESIGNED / 2 and 1 - exact[support].sum() < 1e-9, "the filters keep a few tokens"
    assert torch.softmax(logits.double() / params.temperature, -1)[support].sum() < 0.8, "and cut real mass"

    result = next(iter(engine.generate([GenerationRequest("r", MESSAGES, params)])))
    by_text = {tokenizer.decode([token]).strip(): token for token in tokens}
    drawn = [by_text.get(completion.text) for completion in result.completions]
    outside = [
        text for text, token in zip((c.text for c in result.completions), drawn, strict=True) if token not in support
    ]
    assert outside == [], "a token outside the filtered support was sampled"

    expected = [SAMPLES * exact[token].item() for token in support]
    observed = [drawn.count(token) for token in support]
    small = [i for i, e in enumerate(expected) if e < 5]  # pool low-count cells so the chi-square is valid
    if small:
        expected = [e for i, e in enumerate(expected) if i not in small] + [sum(expected[i] for i in small)]
        observed = [o for i, o in enumerate(observed) if i not in small] + [sum(observed[i] for i in small)]
    assert scipy_stats.chisquare(observed, expected).pvalue > 1e-3


def test_top_p_of_a_row_does_not_depend_on_its_neighbours():
    """Top-p looks at the 64 likeliest tokens first and further only for rows whose 64 hold less than top_p. A row
    whose 64 likeliest tokens hold 0.9 (the rest spread thin) under top_p 0.85 must keep the same tokens, and so
    sample the same, beside a flat row that makes the sampler look at the whole vocabulary."""
    from realign_data.engines.decoding import Row, Sampler

    vocab, params = 5000, SamplingParams(temperature=1.0, top_p=0.85)
    head = torch.linspace(2.0, 1.0, 64, dtype=torch.float64)
    probs = torch.cat([0.9 * head / head.sum(), torch.full((vocab - 64,), 0.1 / (vocab - 64), dtype=torch.float64)])
    peaked, flat = probs.log().float(), torch.zeros(vocab)
    support = set(range(int((probs.cumsum(0) - probs < params.top_p).sum())))  # the likeliest first
    assert 10 < len(support) < 64

    def picks(logits: torch.Tensor) -> list[int]:
        rows = [
            Row(GenerationRequest(str(i), [], params), 0, [], torch.Generator().manual_seed(7 + i))
            for i in range(len(logits))
        ]
        sampler = Sampler(params)
        return [sampler(logits, rows)[0] for _ in range(400)]

    alone, beside = picks(peaked[None]), picks(torch.stack([peaked, flat]))
    assert alone == beside
    assert set(alone) <= support and len(set(alone)) > len(support) / 2


def test_the_checkpoint_generation_config_changes_nothing(tmp_path, tiny_model_dir):
    opinionated = tmp_path / "opinionated"
    shutil.copytree(tiny_model_dir, opinionated)
    GenerationConfig(
        repetition_penalty=1.5, top_k=3, no_repeat_ngram_size=2, do_sample=True, temperature=0.3
    ).save_pretrained(opinionated)
    sampled = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=16, seed=4)
    requests = [
        GenerationRequest("story", [{"role": "user", "content": "Tell me a story"}], sampled),
        GenerationRequest("sky", [{"role": "user", "content": "Why is the sky blue?"}], sampled),
        GenerationRequest(
            "greedy",
            [{"role": "user", "content": "Count to ten"}],
            SamplingParams(n=1, temperature=0.0, max_new_tokens=16),
        ),
    ]

    def outputs(path, reqs):
        return {r.request_id: r.completions for r in HFEngine(resolve_model(str(path))).generate(reqs)}

    plain = outputs(tiny_model_dir, requests)
    assert outputs(opinionated, requests) == plain
    penalized = [replace(r, params=replace(r.params, repetition_penalty=1.5)) for r in requests]
    assert outputs(tiny_model_dir, penalized) != plain, "the checkpoint's penalty would have changed the outputs"


@pytest.mark.parametrize(
    "setting, field",
    [
        ("generation.top_k=-1", "generation.top_k"),
        ("generation.min_p=1.5", "generation.min_p"),
        ("generation.repetition_penalty=0", "generation.repetition_penalty"),
    ],
)
def test_sampling_knobs_out_of_range_name_their_field(setting, field):
    with pytest.raises(InputError, match=field):
        load_config(BuildConfig, None, [setting])


def test_sampling_knobs_are_off_unless_configured():
    generation = load_config(BuildConfig, None, ["generation.top_k=40", "generation.min_p=0.05"]).generation
    assert (generation.top_k, generation.min_p, generation.repetition_penalty) == (40, 0.05, 1.0)
    default = load_config(BuildConfig).generation
    assert (default.top_k, default.min_p, default.repetition_penalty) == (0, 0.0, 1.0)


def test_top_p_keeps_the_defined_tokens_whichever_way_a_row_is_resolved():
    """Rows built so that each is resolved another way (its 64 likeliest tokens, its 1024 likeliest, its least likely
    sixth, a full sort) keep exactly the tokens of the definition, computed here in float64 on a sorted copy."""
    from realign_data.engines.decoding import Sampler

    vocab, top_p = 49152, 0.9
    generator = torch.Generator().manual_seed(3)

    def row(head: int, head_mass: float) -> torch.Tensor:
        """``head`` likelier tokens holding ``head_mass`` and a thin tail, each slightly different, shuffled."""
        weights = 1 + torch.rand(vocab, generator=generator, dtype=torch.float64)
        weights[:head] *= head_mass / weights[:head].sum()
        weights[head:] *= (1 - head_mass) / weights[head:].sum()
        return weights[torch.randperm(vocab, generator=generator)]

    rows = {
        "64 likeliest": row(20, 0.97),
        "1024 likeliest": row(400, 0.97),
        "least likely sixth": torch.softmax(0.01 * torch.randn(vocab, generator=generator, dtype=torch.float64), 0),
        "full sort": row(5000, 0.905),
    }
    probs = torch.stack(list(rows.values())).float()
    probs = probs / probs.sum(-1, keepdim=True)
    served = {}
    for members, tokens, kept in Sampler(SamplingParams(temperature=1.0, top_p=top_p))._kept(probs):
        for member, row_tokens, row_kept in zip(members.tolist(), tokens, kept, strict=True):
            served[member] = set(row_tokens[row_kept].tolist())
    assert sorted(served) == [0, 1, 2, 3], "every row is resolved once"
    for index, name in enumerate(rows):
        exact = probs[index].double()
        ascending, order = exact.sort()
        removed = ascending.cumsum(0) <= 1 - top_p
        removed[-1] = False
        assert served[index] == set(order[~removed].tolist()), name
        assert 0 < len(served[index]) < vocab, name
