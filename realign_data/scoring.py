"""Scores for (prompt, response): a reward model, or an instruct model as a pointwise 1-10 judge.

- ``RewardModelScorer``: a sequence-classification model (Skywork-Reward, ArmoRM style) over the chat template of
  the conversation plus the response; the score is the first logit.
- ``LogprobJudge``: in-process; the score is the expected rating under the model's probabilities of the rating
  tokens after "Rating: " (multi-token ratings such as "1","0" handled exactly).
- ``TextJudge``: through any generation engine (e.g. the OpenAI-compatible one); the rating is parsed from the
  answer, unparseable answers are re-asked and then counted as failures.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from realign_data.engines.base import GenerationRequest, Progress, SamplingParams
from realign_data.templates import Template

RATINGS = tuple(range(1, 11))
RATING_PREFIX = "Rating: "
RATING_PATTERN = re.compile(r"rating\s*[:=]?\s*\**\s*(10|[1-9])(?![0-9])|^\s*\**(10|[1-9])(?![0-9.])", re.I | re.M)


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


def judge_messages(template: Template, item: ScoreItem) -> list[dict[str, str]]:
    """The judge sees the instruction (last user turn) and the response, rendered into the judge template."""
    return [{"role": "user", "content": template.render(instruction=item.prompt[-1]["content"],
                                                         response=item.response)}]


def parse_rating(text: str) -> int | None:
    match = RATING_PATTERN.search(text)
    return int(match.group(1) or match.group(2)) if match else None


class RewardModelScorer:
    def __init__(self, model, tokenizer, scorer_id: str, batch_size: int = 8, max_length: int = 4096):
        self.model, self.tokenizer = model, tokenizer
        self.scorer_id = scorer_id
        self.batch_size, self.max_length = batch_size, max_length
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        encoded = [self.tokenizer.apply_chat_template(item.prompt + [{"role": "assistant", "content": item.response}],
                                                      tokenize=True, return_dict=True)["input_ids"][:self.max_length]
                   for item in items]
        order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            logits = self.model(**batch.to(self.model.device)).logits[:, 0].float().tolist()
            for i, value in zip(chunk, logits, strict=True):
                yield Score(items[i].key, value)
            if progress:
                progress(len(chunk))


class LogprobJudge:
    """Expected 1-10 rating from the probabilities an in-process instruct model gives the rating tokens."""

    def __init__(self, engine, template: Template, scorer_id: str, batch_size: int = 8):
        self.engine, self.template = engine, template  # an HFEngine: its model, tokenizer and chat template
        self.scorer_id = scorer_id
        self.batch_size = batch_size
        self.continuations = self._rating_continuations()
        contexts = {tuple(c[:k]) for c in self.continuations.values() for k in range(len(c))}
        self.paths = [c for c in contexts if not any(o != c and o[:len(c)] == c for o in contexts)]

    def _rating_continuations(self) -> dict[int, tuple[int, ...]]:
        """Token ids of each rating after the prefix, e.g. {7: (39,), 10: (33, 32)} for digit-wise tokenizers."""
        tokenizer = self.engine.tokenizer
        base = tokenizer(RATING_PREFIX, add_special_tokens=False)["input_ids"]
        continuations = {}
        for rating in RATINGS:
            ids = tokenizer(RATING_PREFIX + str(rating), add_special_tokens=False)["input_ids"]
            if ids[:len(base)] != base:
                raise ValueError(f"tokenizer merges '{RATING_PREFIX}' with the rating; cannot read rating logits")
            continuations[rating] = tuple(ids[len(base):])
        return continuations

    @torch.inference_mode()
    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        tokenizer, model = self.engine.tokenizer, self.engine.model
        prefix_ids = tokenizer(RATING_PREFIX, add_special_tokens=False)["input_ids"]
        prompts = [self.engine.encode(judge_messages(self.template, item)) + prefix_ids for item in items]
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows = [(i, path) for i in chunk for path in self.paths]
            sequences = [prompts[i] + list(path) for i, path in rows]
            width = max(map(len, sequences))
            pad = tokenizer.pad_token_id
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=model.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=model.device)
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            next_token = {i: {} for i in chunk}  # item -> {context: log-probabilities of the next token}
            for row, (i, path) in enumerate(rows):
                end = len(prompts[i])
                for k in range(len(path) + 1):
                    next_token[i][path[:k]] = logprobs[row, end - 1 + k]
            for i in chunk:
                yield self._expected_rating(items[i].key, next_token[i])
            if progress:
                progress(len(chunk))

    def _expected_rating(self, key: str, next_token: dict[tuple[int, ...], torch.Tensor]) -> Score:
        sequence_prob = {}
        for rating, tokens in self.continuations.items():
            logp = sum(next_token[tokens[:k]][token].item() for k, token in enumerate(tokens))
            sequence_prob[rating] = torch.tensor(logp).exp().item()
        exact = {}
        for rating, tokens in self.continuations.items():  # "1" must not be the start of "10"
            longer = sum(p for other, p in sequence_prob.items()
                         if len(self.continuations[other]) > len(tokens)
                         and self.continuations[other][:len(tokens)] == tokens)
            exact[rating] = max(sequence_prob[rating] - longer, 0.0)
        mass = sum(exact.values())
        if mass <= 0:
            return Score(key, None, "no probability on any rating")
        expected = sum(r * p for r, p in exact.items()) / mass
        return Score(key, expected, f"rating mass {mass:.3f}")


class TextJudge:
    """A judge reached through a generation engine: parse "Rating: N", re-ask unparseable answers."""

    def __init__(self, engine, template: Template, scorer_id: str, max_attempts: int = 3, seed: int = 0):
        self.engine, self.template = engine, template
        self.scorer_id = scorer_id
        self.max_attempts = max_attempts
        self.seed = seed
        self.reasks = 0  # answers without a rating that were asked again

    def score(self, items: list[ScoreItem], progress: Progress | None = None) -> Iterator[Score]:
        remaining = {item.key: item for item in items}
        for attempt in range(self.max_attempts):
            params = SamplingParams(n=1, temperature=0.0 if attempt == 0 else 0.7, top_p=1.0, max_new_tokens=24,
                                    seed=self.seed + attempt)
            requests = [GenerationRequest(key, judge_messages(self.template, item), params)
                        for key, item in remaining.items()]
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
