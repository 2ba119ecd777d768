"""Scores for (prompt, response): a reward model, or an instruct model as a pointwise 1-10 judge.

- ``RewardModelScorer``: a sequence-classification model (Skywork-Reward, ArmoRM style) over the chat template of
  the conversation plus the response; the score is the first logit.
- ``LogprobJudge``: in-process; the score is the expected rating under the model's probabilities of the ratings
  after "Rating: ", read exactly: a rating is its digits followed by a non-digit ("1" then "0" is 10, "11" none).
- ``TextJudge``: through any generation engine (e.g. the OpenAI-compatible one); the rating is parsed from the
  answer, unparseable answers are re-asked and then counted as failures.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from realign_data.config import EngineConfig, ModelConfig, ScoringConfig
from realign_data.engines.base import GenerationRequest, Progress, SamplingParams
from realign_data.errors import InputError
from realign_data.models import load_model, load_tokenizer, prompt_token_ids, resolve_model
from realign_data.templates import Template

RATINGS = tuple(range(1, 11))
DIGITS = "0123456789"
RATING_PREFIX = "Rating: "
# "Rating: 7", "Rating: 7." or "Rating: 7/10", never "Rating: 11" or "Rating: 7.5"; or a line that starts with N
RATING_PATTERN = re.compile(
    r"rating\s*[:=]?\s*\**\s*(10|[1-9])(?![0-9]|[.,][0-9])|^\s*\**(10|[1-9])(?![0-9.])", re.I | re.M
)


@dataclass(frozen=True)
class ScoreItem:
    key: str
    prompt: list[dict[str, str]]
    response: str


@dataclass(frozen=True)
class Score:
    key: str
    score: float | None  # None: the scorer could not rate this item
    detail: str = ""


JUDGE_MAX_NEW_TOKENS = 24  # a text judge's answer: "Rating: N" and a few words
REWARD_MAX_LENGTH = 4096  # tokens of (prompt, response) a reward model reads; the rest is cut


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The batches (indices) an in-process scorer forms: by token length, ties in the given order, then cut every
    ``batch_size``. Padding, and so the last bits of a score, depend on a batch's members: scoring the same batches
    gives the same floats whichever process or Ray worker runs them."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def reward_ids(tokenizer, item: ScoreItem, max_length: int = REWARD_MAX_LENGTH) -> list[int]:
    """The tokens a reward model scores: the conversation and the response under its chat template."""
    messages = item.prompt + [{"role": "assistant", "content": item.response}]
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][:max_length]


def judge_ids(tokenizer, template: Template, item: ScoreItem) -> list[int]:
    """The tokens an in-process judge reads before its rating: the judge prompt, then "Rating: "."""
    prefix = tokenizer(RATING_PREFIX, add_special_tokens=False)["input_ids"]
    return prompt_token_ids(tokenizer, judge_messages(template, item)) + prefix


def batch_plan(
    scoring: ScoringConfig, judge: tuple[EngineConfig, ModelConfig], template: Template, items: list[ScoreItem]
) -> list[list[int]] | None:
    """The batches the transformers scorer of ``scoring`` forms over ``items`` (only their tokenizer is loaded), or
    None for a scorer whose items are independent requests (a text judge, a reward model on vLLM or served)."""
    engine_config, model_config = judge
    if engine_config.kind != "hf":
        return None
    tokenizer = load_tokenizer(resolve_model(model_config.spec))
    encode = reward_ids if scoring.method == "reward_model" else lambda t, item: judge_ids(t, template, item)
    return length_batches([len(encode(tokenizer, item)) for item in items], scoring.batch_size)


def judge_messages(template: Template, item: ScoreItem) -> list[dict[str, str]]:
    """The judge sees the instruction (last user turn) and the response, rendered into the judge template."""
    return [
        {"role": "user", "content": template.render(instruction=item.prompt[-1]["content"], response=item.response)}
    ]


def parse_rating(text: str) -> int | None:
    match = RATING_PATTERN.search(text)
    return int(match.group(1) or match.group(2)) if match else None


class RewardModelScorer:
    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int = REWARD_MAX_LENGTH):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        encoded = [reward_ids(self.tokenizer, item, self.max_length) for item in items]
        for chunk in length_batches([len(ids) for ids in encoded], self.batch_size):
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            logits = self.model(**batch.to(self.model.device)).logits[:, 0].float().tolist()
            for i, value in zip(chunk, logits, strict=True):
                yield Score(items[i].key, value)
            if progress:
                progress(len(chunk))


class VLLMRewardScorer:
    """The same reward model and tokens as ``RewardModelScorer``, on vLLM's pooling runner (``engine.kind: vllm``):
    the classification head's raw first output (vLLM's sigmoid switched off), in chunks of ``CHUNK`` items."""

    def __init__(self, model, engine: EngineConfig, dtype: str, max_length: int = REWARD_MAX_LENGTH):
        from realign_data.engines.vllm_engine import load_llm

        self.llm = load_llm(
            model,
            engine.tensor_parallel_size,
            dtype,
            engine.gpu_memory_utilization,
            runner="pooling",
            convert="classify",
        )
        from vllm import PoolingParams

        # vLLM renamed the switch: `activation` up to 0.11.0, `use_activation` from 0.11.1
        names = inspect.signature(PoolingParams).parameters
        self.params = PoolingParams(**{"use_activation" if "use_activation" in names else "activation": False})
        self.tokenizer, self.max_length = load_tokenizer(model), max_length

    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        from realign_data.engines.vllm_engine import CHUNK

        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            prompts = [{"prompt_token_ids": reward_ids(self.tokenizer, item, self.max_length)} for item in chunk]
            outputs = self.llm.classify(prompts, pooling_params=self.params, use_tqdm=False)
            for item, output in zip(chunk, outputs, strict=True):
                yield Score(item.key, float(output.outputs.probs[0]))
            if progress:
                progress(len(chunk))


class ServedRewardScorer:
    """A reward model served by vLLM (``engine.kind: openai``; ``vllm serve MODEL --runner pooling``): each
    conversation and response through ``/classify`` (rendered by the server's chat template), the raw first output.
    A request that fails after its retries is an unrated item, counted, and asked again by a re-run."""

    def __init__(self, engine):
        self.engine = engine

    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        conversations = [(item.key, item.prompt + [{"role": "assistant", "content": item.response}]) for item in items]
        for result in self.engine.classify(conversations, progress):
            if result.values is None:
                yield Score(result.request_id, None, result.error or "no score")
            else:
                yield Score(result.request_id, result.values[0])


class LogprobJudge:
    """Expected 1-10 rating from the probabilities an in-process instruct model gives the ratings after "Rating: ".

    P(rating r) is the probability that the answer spells r and then does not go on with a digit: "1" then "0" is
    10, "1" then "1" is no rating, "1" then "." is 1. It is summed over every way to spell r with the vocabulary:
    all-digit tokens ("1", "0", "10"), the last of which may carry a non-digit tail ("7."). One forward pass reads
    the prompts; a second one, on their KV cache, reads each all-digit spelling (one or two tokens) and what follows.
    """

    method = "judge-logprob.v2"  # the scorer id's prefix; v2: exact multi-token ratings (cached v1 scores differ)

    def __init__(self, engine, template: Template, batch_size: int = 8):
        self.engine, self.template = engine, template  # an HFEngine: its model, tokenizer and chat template
        self.batch_size = batch_size
        self.spellings, self.finishing = self._rating_spellings()
        contexts = {context for terms in self.spellings.values() for context, _ in terms}
        self.paths = sorted(c for c in contexts if c and not any(o != c and o[: len(c)] == c for o in contexts))

    def _rating_spellings(self) -> tuple[dict[int, list[tuple[tuple[int, ...], str]]], dict[str, torch.Tensor]]:
        """For each rating, the (all-digit tokens, rest) that spell it: the tokens spell its first digits and a
        token from ``finishing[rest]`` (digits ``rest``, then a non-digit or nothing) ends it. E.g. 10: (("1", "0"),
        ""), and where the vocabulary has such tokens (("10",), ""), (("1",), "0") for "0." and ((), "10") for "10."."""
        tokenizer = self.engine.tokenizer
        base = tokenizer(RATING_PREFIX, add_special_tokens=False)["input_ids"]
        for rating in RATINGS:
            if tokenizer(RATING_PREFIX + str(rating), add_special_tokens=False)["input_ids"][: len(base)] != base:
                raise InputError(
                    f"scoring.model: its tokenizer merges {RATING_PREFIX!r} with the rating, so the "
                    f"logprob judge cannot read it; judge through a text engine (scoring.engine)"
                )
        numerals: dict[str, list[int]] = {}  # digits -> tokens that are exactly those digits
        finishing: dict[str, list[int]] = {}  # digits ("" for none) -> tokens that are those digits, then no digit
        for token, text in enumerate(tokenizer.batch_decode([[i] for i in range(len(tokenizer))])):
            digits = text[: len(text) - len(text.lstrip(DIGITS))]
            (numerals if digits and digits == text else finishing).setdefault(digits, []).append(token)

        def spell(number: str, done: int, context: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], str]]:
            if number[done:] in finishing:
                yield context, number[done:]
            for end in range(done + 1, len(number) + 1):
                for token in numerals.get(number[done:end], ()):
                    yield from spell(number, end, (*context, token))

        spellings = {rating: list(spell(str(rating), 0, ())) for rating in RATINGS}
        device = self.engine.model.device
        used = {rest for terms in spellings.values() for _, rest in terms}
        return spellings, {rest: torch.tensor(finishing[rest], device=device) for rest in used}

    @torch.inference_mode()
    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        prompts = [judge_ids(self.engine.tokenizer, self.template, item) for item in items]
        for chunk in length_batches([len(ids) for ids in prompts], self.batch_size):
            for i, next_token in zip(chunk, self._next_token_logprobs([prompts[i] for i in chunk]), strict=True):
                yield self._expected_rating(items[i].key, next_token)
            if progress:
                progress(len(chunk))

    def _next_token_logprobs(self, prompts: list[list[int]]) -> list[dict[tuple[int, ...], torch.Tensor]]:
        """Per prompt: {digit tokens after it: log-probabilities of the next token} for every context in paths."""
        model, pad = self.engine.model, self.engine.tokenizer.pad_token_id
        width, copies, depth = max(map(len, prompts)), len(self.paths), max(map(len, self.paths))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        cache = DynamicCache(config=model.config)  # filled in place by the first pass, read by the second
        accepted = inspect.signature(model.forward).parameters
        cache_arg = "cache" if "cache" in accepted else "past_key_values"  # renamed in transformers 5.x
        last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **{cache_arg: cache},
            **last_only,
        ).logits
        after_prompt = torch.log_softmax(logits[:, -1].float(), dim=-1)
        cache.batch_repeat_interleave(copies)  # row b * copies + j continues prompt b with paths[j]
        paths = torch.tensor([list(p) + [pad] * (depth - len(p)) for p in self.paths], device=model.device)
        path_mask = torch.tensor([[1] * len(p) + [0] * (depth - len(p)) for p in self.paths], device=model.device)
        lengths = torch.tensor([len(p) for p in prompts], device=model.device).repeat_interleave(copies)
        steps = model(
            input_ids=paths.repeat(len(prompts), 1),
            use_cache=True,
            **{cache_arg: cache},
            attention_mask=torch.cat([mask.repeat_interleave(copies, 0), path_mask.repeat(len(prompts), 1)], dim=1),
            position_ids=lengths[:, None] + torch.arange(depth, device=model.device),
        ).logits
        steps = torch.log_softmax(steps.float(), dim=-1)
        results = []
        for b in range(len(prompts)):
            next_token: dict[tuple[int, ...], torch.Tensor] = {(): after_prompt[b]}
            for j, path in enumerate(self.paths):
                for k in range(len(path)):
                    next_token[path[: k + 1]] = steps[b * copies + j, k]
            results.append(next_token)
        return results

    def _expected_rating(self, key: str, next_token: dict[tuple[int, ...], torch.Tensor]) -> Score:
        probability = {}
        for rating, terms in self.spellings.items():
            probability[rating] = sum(
                math.exp(
                    sum(next_token[context[:k]][token].item() for k, token in enumerate(context))
                    + torch.logsumexp(next_token[context][self.finishing[rest]], dim=0).item()
                )
                for context, rest in terms
            )
        mass = sum(probability.values())
        if mass <= 0:
            return Score(key, None, "no probability on any rating")
        expected = sum(r * p for r, p in probability.items()) / mass
        return Score(key, expected, f"rating mass {mass:.3f}")


class TextJudge:
    """A judge reached through a generation engine: parse "Rating: N", re-ask unparseable answers."""

    method = "judge-text.v2"  # the scorer id's prefix; v2: "Rating: 11" and "Rating: 7.5" are no longer ratings

    def __init__(self, engine, template: Template, max_attempts: int = 3, seed: int = 0):
        self.engine, self.template = engine, template
        self.max_attempts = max_attempts
        self.seed = seed
        self.reasks = 0  # answers without a rating that were asked again

    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        remaining = {item.key: item for item in items}
        for attempt in range(self.max_attempts):
            params = SamplingParams(
                n=1,
                temperature=0.0 if attempt == 0 else 0.7,
                top_p=1.0,
                max_new_tokens=JUDGE_MAX_NEW_TOKENS,
                seed=self.seed + attempt,
            )
            requests = [
                GenerationRequest(key, judge_messages(self.template, item), params) for key, item in remaining.items()
            ]
            for result in self.engine.generate(requests):
                text = result.completions[0].text if result.completions else ""
                rating = parse_rating(text) if result.error is None else None
                if rating is not None:
                    del remaining[result.request_id]
                    if progress:
                        progress(1)
                    yield Score(result.request_id, float(rating), text[:200])
                elif attempt < self.max_attempts - 1:
                    self.reasks += 1
                else:
                    if progress:
                        progress(1)
                    yield Score(result.request_id, None, result.error or f"unparseable: {text[:200]!r}")


def make_scorer(scoring: ScoringConfig, judge: tuple[EngineConfig, ModelConfig], template: Template, engine_for):
    """The scorer ``scoring`` asks for: a reward model loaded here, or a judge on the engine ``engine_for(engine
    config, model config)`` gives (the build's shared engines in-process, a fresh one on a Ray worker)."""
    engine_config, model_config = judge
    if scoring.method == "reward_model" and engine_config.kind == "openai":
        return ServedRewardScorer(engine_for(engine_config, model_config))
    if scoring.method == "reward_model":
        model = resolve_model(model_config.spec)
        if engine_config.kind == "vllm":
            return VLLMRewardScorer(model, engine_config, model_config.dtype)
        return RewardModelScorer(
            load_model(model, "reward", model_config.dtype, model_config.device),
            load_tokenizer(model),
            scoring.batch_size,
        )
    if engine_config.kind == "hf":
        return LogprobJudge(engine_for(engine_config, model_config), template, scoring.batch_size)
    return TextJudge(engine_for(engine_config, model_config), template, scoring.max_attempts)
