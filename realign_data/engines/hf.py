"""The transformers engine: in-process, ``batch_size`` sequences at once, shortest prompts first.

Models whose attention sees the whole context decode with continuous batching (realign_data/engines/decoding.py:
a prompt prefilled once for its samples, a finished row's slot refilled at once, each row attended over its own
keys). Others (sliding-window attention) run ``model.generate`` batch by batch. Both draw every sample's Gumbel
noise from its own seeded generator (the Gumbel-max trick samples exactly from the filtered softmax), the same
draws on either path: a resumed run regenerates a missing sample as an uninterrupted run would have (exactly on
the decoder on CPU; up to the float rounding other rows bring to a padded batch on ``model.generate``).

Only the request's ``SamplingParams`` decide decoding: the checkpoint's own ``generation_config.json``
(``repetition_penalty``, ``top_k``, ``suppress_tokens``, ...) is replaced by a blank one when the model is loaded,
so that hf, vllm and openai engines agree for the same model. A batch holds requests with equal parameters only.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import astuple, replace
from typing import cast

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from realign_data.engines.base import (
    Completion,
    GenerationRequest,
    GenerationResult,
    Progress,
    SamplingParams,
    TokenLogprob,
    model_identity,
    row_seed,
)
from realign_data.engines.decoding import Decoder, supports
from realign_data.models import (
    ResolvedModel,
    load_model,
    load_tokenizer,
    pick_device,
    prompt_token_ids,
    resolve_model,
)


class SeededGumbelNoise(LogitsProcessor):
    """Adds per-row Gumbel noise from per-row generators, so that greedy argmax becomes seeded sampling."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.empty(len(self.generators), scores.shape[-1])
        for row, generator in zip(uniform, self.generators, strict=True):  # filled in place: stacking is slow
            torch.rand(scores.shape[-1], generator=generator, out=row)
        gumbel = uniform.clamp_(1e-10, 1 - 1e-7).log_().neg_().log_().neg_()  # -log(-log(u))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


class HFEngine:
    def __init__(self, model: ResolvedModel, batch_size: int = 8, dtype: str = "auto", device: str = "auto"):
        self.resolved = model
        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, "causal_lm", dtype=dtype, device=self.device)
        self.batch_size = batch_size
        self.model_id = model_identity("hf", model.spec, model.fingerprint)
        self.stats: Counter = Counter()  # in-process: nothing is retried
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        self.eos_ids = eos | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())
        # generate() fills every knob a call leaves unset from model.generation_config: a blank one leaves only ours
        self.model.generation_config = GenerationConfig()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.decoder = Decoder(self.model, pad, self.eos_ids, batch_size) if supports(self.model) else None

    @classmethod
    def from_config(cls, engine_config, model_config) -> HFEngine:
        return cls(resolve_model(model_config.spec), engine_config.batch_size, model_config.dtype, model_config.device)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The very prompt ids TRL's DPOTrainer trains the policy on (tests/test_on_policy_fidelity.py)."""
        return prompt_token_ids(self.tokenizer, messages)

    def generate(
        self, requests: list[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[GenerationResult]:
        pending = {r.request_id: r.params.n for r in requests}
        # placeholders: every slot holds its completion before the result is yielded (pending reaches 0)
        results = {
            r.request_id: GenerationResult(r.request_id, cast(list[Completion], [None] * r.params.n)) for r in requests
        }
        for request, sample, completion in self._completions(requests):
            results[request.request_id].completions[sample] = completion
            pending[request.request_id] -= 1
            if pending[request.request_id] == 0:
                if progress:
                    progress(1)
                yield results.pop(request.request_id)

    def _completions(self, requests: list[GenerationRequest]) -> Iterator[tuple[GenerationRequest, int, Completion]]:
        """(request, sample index, completion) in the order they end; requests with equal parameters but n and
        seed decode together, shortest prompts first."""
        jobs = sorted(
            ((astuple(replace(r.params, n=1, seed=0)), r, self.encode(r.messages)) for r in requests),
            key=lambda job: (job[0], len(job[2]), job[1].request_id),
        )
        for _, members in itertools.groupby(jobs, key=lambda job: job[0]):
            group = [(request, ids) for _, request, ids in members]
            params = group[0][0].params
            if self.decoder is not None:
                stop = self._stop_check(params)
                for row in self.decoder.run(group, params, stop):
                    logits = torch.stack(row.logits) if row.logits else None
                    yield row.request, row.sample, self._completion(row.tokens, len(row.prompt), params, logits)
                continue
            rows = [(request, sample, ids) for request, ids in group for sample in range(request.params.n)]
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                for (request, sample, _), completion in zip(batch, self._generate_batch(batch), strict=True):
                    yield request, sample, completion

    def _stop_check(self, params: SamplingParams):
        """Whether a row has produced one of ``params.stop`` (checked on the text of its last tokens)."""
        if not params.stop:
            return lambda row: False
        window = 4 * max(len(s) for s in params.stop) + 8  # tokens enough to hold any stop string
        decode = self.tokenizer.decode

        def check(row) -> bool:
            tail = decode(row.tokens[-window:], skip_special_tokens=True)
            return any(s in tail for s in params.stop)

        return check

    @torch.inference_mode()
    def _generate_batch(self, batch: list[tuple[GenerationRequest, int, list[int]]]) -> list[Completion]:
        """``model.generate`` on one batch (models the decoder does not serve): per-row seeded Gumbel noise."""
        params = batch[0][0].params  # the same for every row but n and seed
        width = max(len(ids) for _, _, ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, _, ids in batch], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, _, ids in batch], device=self.device)
        # generate() applies the repetition penalty first (ignoring the padding), then these, in vLLM's order
        processors = LogitsProcessorList()
        if params.temperature > 0:
            processors.append(TemperatureLogitsWarper(params.temperature))
            if params.min_p > 0:
                processors.append(MinPLogitsWarper(params.min_p))
            if params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1:
                processors.append(TopPLogitsWarper(params.top_p))
            processors.append(SeededGumbelNoise([row_seed(r.params.seed, r.request_id, i) for r, i, _ in batch]))
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(self.eos_ids),
            stop_strings=list(params.stop) or None,
            repetition_penalty=float(params.repetition_penalty),
            return_dict_in_generate=True,
            output_logits=params.top_logprobs > 0,
        )
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=processors,
            tokenizer=self.tokenizer,
        )
        completions = []
        for index, ((_, _, ids), tokens) in enumerate(zip(batch, output.sequences[:, width:].tolist(), strict=True)):
            ended = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
            generated = tokens[: ended + 1] if ended is not None else tokens
            logits = torch.stack([step[index] for step in output.logits]) if params.top_logprobs > 0 else None
            completions.append(self._completion(generated, len(ids), params, logits))
        return completions

    def _completion(
        self, generated: list[int], prompt_tokens: int, params: SamplingParams, logits: torch.Tensor | None
    ) -> Completion:
        """The completion of a row's generated tokens (an EOS last included), cut at the first stop string; with
        ``logits`` (one row of raw logits per step), its tokens' log-probabilities."""
        ended = bool(generated) and generated[-1] in self.eos_ids
        kept = generated[:-1] if ended else generated
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        stop_at = min((text.find(s) for s in params.stop if s in text), default=-1)
        if stop_at >= 0:
            text = text[:stop_at]
        finish = "stop" if ended or stop_at >= 0 else "length"
        logprobs = self._token_logprobs(generated, logits, params.top_logprobs) if logits is not None else None
        return Completion(text.strip(), prompt_tokens, len(generated), finish, logprobs)

    def _token_logprobs(self, tokens: list[int], logits: torch.Tensor, k: int) -> tuple[TokenLogprob, ...]:
        """Per generated token (the EOS included): log-probabilities under the raw logits (one row per step),
        before any penalty, temperature or filter."""
        logprobs = torch.log_softmax(logits[: len(tokens)].float(), dim=-1)
        chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0].tolist()
        top = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
        decode = self.tokenizer.decode
        entries = []
        for token, logprob, ids, values in zip(tokens, chosen, top.indices.tolist(), top.values.tolist(), strict=True):
            alternatives = tuple((decode([i]), value) for i, value in zip(ids, values, strict=True))
            entries.append(TokenLogprob(decode([token]), logprob, alternatives))
        return tuple(entries)
