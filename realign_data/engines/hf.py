"""The transformers engine: in-process, batched with left padding, batches grouped by prompt length.

Sampling is reproducible per request, independent of which other requests share its batch: every output row
draws Gumbel noise from its own seeded generator and decoding takes the argmax of the warped, noised logits (the
Gumbel-max trick samples exactly from softmax(logits / T) restricted to the top-p nucleus). A resumed run therefore
regenerates a missing sample exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from realign_data.engines.base import Completion, GenerationRequest, GenerationResult, Progress, SamplingParams
from realign_data.models import ResolvedModel, load_model, load_tokenizer, pick_device, resolve_model


def row_seed(seed: int, request_id: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{request_id}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeededGumbelNoise(LogitsProcessor):
    """Adds per-row Gumbel noise from per-row generators, so that greedy argmax becomes seeded sampling."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


class HFEngine:
    def __init__(self, model: ResolvedModel, batch_size: int = 8, dtype: str = "auto", device: str = "auto"):
        self.resolved = model
        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, "causal_lm", dtype=dtype, device=self.device)
        self.batch_size = batch_size
        self.model_id = f"{model.spec}@{model.fingerprint()}"
        self.stats: Counter = Counter()  # in-process: nothing is retried
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        self.eos_ids = eos | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    @classmethod
    def from_config(cls, engine_config, model_config) -> HFEngine:
        return cls(resolve_model(model_config.spec), engine_config.batch_size, model_config.dtype,
                   model_config.device)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template applied once, tokenized directly (no second BOS)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]

    def generate(self, requests: list[GenerationRequest], progress: Progress | None = None) \
            -> Iterator[GenerationResult]:
        rows = []  # one row per (request, sample): (group key, length, request, sample index, input ids)
        for request in requests:
            ids = self.encode(request.messages)
            group = (request.params.temperature, request.params.top_p, request.params.max_new_tokens,
                     request.params.stop)
            rows += [(group, len(ids), request, sample, ids) for sample in range(request.params.n)]
        rows.sort(key=lambda row: (row[0], row[1], row[2].request_id, row[3]))
        pending = {r.request_id: r.params.n for r in requests}
        results = {r.request_id: GenerationResult(r.request_id, [None] * r.params.n) for r in requests}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            for (_, _, request, sample, _), completion in zip(batch, self._generate_batch(batch), strict=True):
                results[request.request_id].completions[sample] = completion
                pending[request.request_id] -= 1
                if pending[request.request_id] == 0:
                    if progress:
                        progress(1)
                    yield results.pop(request.request_id)

    @torch.inference_mode()
    def _generate_batch(self, batch) -> list[Completion]:
        params: SamplingParams = batch[0][2].params
        width = max(row[1] for row in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row[4])) + row[4] for row in batch], device=self.device)
        attention = torch.tensor([[0] * (width - len(row[4])) + [1] * len(row[4]) for row in batch],
                                 device=self.device)
        processors = LogitsProcessorList()
        if params.temperature > 0:
            processors += [TemperatureLogitsWarper(params.temperature), TopPLogitsWarper(params.top_p),
                           SeededGumbelNoise([row_seed(row[2].params.seed, row[2].request_id, row[3])
                                              for row in batch])]
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=sorted(self.eos_ids), stop_strings=list(params.stop) or None)
        output = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                     logits_processor=processors, tokenizer=self.tokenizer)
        completions = []
        for row, tokens in zip(batch, output[:, width:].tolist(), strict=True):
            ended = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
            kept = tokens[:ended] if ended is not None else tokens
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            stop_at = min((text.find(s) for s in params.stop if s in text), default=-1)
            if stop_at >= 0:
                text = text[:stop_at]
            finish = "stop" if ended is not None or stop_at >= 0 else "length"
            completions.append(Completion(text.strip(), row[1], len(kept) + (ended is not None), finish))
        return completions
