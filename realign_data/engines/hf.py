"""The transformers engine: in-process, batched with left padding, batches grouped by prompt length.

Sampling is reproducible per request, independent of which other requests share its batch: every output row
draws Gumbel noise from its own seeded generator and decoding takes the argmax of the warped, noised logits (the
Gumbel-max trick samples exactly from softmax(logits / T) restricted to the min-p, top-k and top-p filters). A
resumed run therefore regenerates a missing sample exactly as an uninterrupted run would have.

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

    @classmethod
    def from_config(cls, engine_config, model_config) -> HFEngine:
        return cls(resolve_model(model_config.spec), engine_config.batch_size, model_config.dtype, model_config.device)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The very prompt ids TRL's DPOTrainer trains the policy on (tests/test_on_policy_fidelity.py)."""
        return prompt_token_ids(self.tokenizer, messages)

    def generate(
        self, requests: list[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[GenerationResult]:
        rows = []  # one row per (request, sample): (group key, length, request, sample index, input ids)
        for request in requests:
            ids = self.encode(request.messages)
            group = astuple(replace(request.params, n=1, seed=0))  # everything but n and seed shapes the batch
            rows += [(group, len(ids), request, sample, ids) for sample in range(request.params.n)]
        rows.sort(key=lambda row: (row[0], row[1], row[2].request_id, row[3]))
        batches = []
        for _, members in itertools.groupby(rows, key=lambda row: row[0]):
            grouped = list(members)
            batches += [grouped[start : start + self.batch_size] for start in range(0, len(grouped), self.batch_size)]
        pending = {r.request_id: r.params.n for r in requests}
        # placeholders: every slot holds its completion before the result is yielded (pending reaches 0)
        results = {
            r.request_id: GenerationResult(r.request_id, cast(list[Completion], [None] * r.params.n)) for r in requests
        }
        for batch in batches:
            for (_, _, request, sample, _), completion in zip(batch, self._generate_batch(batch), strict=True):
                results[request.request_id].completions[sample] = completion
                pending[request.request_id] -= 1
                if pending[request.request_id] == 0:
                    if progress:
                        progress(1)
                    yield results.pop(request.request_id)

    @torch.inference_mode()
    def _generate_batch(self, batch) -> list[Completion]:
        params: SamplingParams = batch[0][2].params  # the same for every row but n and seed
        width = max(row[1] for row in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row[4])) + row[4] for row in batch], device=self.device)
        attention = torch.tensor([[0] * (width - len(row[4])) + [1] * len(row[4]) for row in batch], device=self.device)
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
            processors.append(
                SeededGumbelNoise([row_seed(row[2].params.seed, row[2].request_id, row[3]) for row in batch])
            )
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
        for index, (row, tokens) in enumerate(zip(batch, output.sequences[:, width:].tolist(), strict=True)):
            ended = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
            kept = tokens[:ended] if ended is not None else tokens
            generated = tokens[: len(kept) + (ended is not None)]
            logprobs = (
                self._token_logprobs(
                    generated, torch.stack([step[index] for step in output.logits]), params.top_logprobs
                )
                if params.top_logprobs > 0
                else None
            )
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            stop_at = min((text.find(s) for s in params.stop if s in text), default=-1)
            if stop_at >= 0:
                text = text[:stop_at]
            finish = "stop" if ended is not None or stop_at >= 0 else "length"
            completions.append(Completion(text.strip(), row[1], len(generated), finish, logprobs))
        return completions

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
