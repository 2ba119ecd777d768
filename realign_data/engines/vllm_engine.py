"""The in-process vLLM engine (optional extra ``vllm``; CUDA only): tensor parallelism and per-request seeds.

Requests go to ``llm.chat`` in chunks of ``CHUNK`` (vLLM schedules within a chunk as it would within the whole
stage), and each chunk's results are yielded, and so cached, before the next one starts: a crash loses at most the
chunk in flight, not the stage. Seeds are per request, so the chunking does not change the samples.
Logprobs are vLLM's default raw ones: under the model's logits before penalties, temperature and filters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from realign_data.engines.base import (
    Completion,
    GenerationRequest,
    GenerationResult,
    Progress,
    TokenLogprob,
    model_identity,
    row_seed,
)
from realign_data.errors import RealignError
from realign_data.models import ResolvedModel, resolve_model

CHUNK = 2048  # requests per llm.chat call: enough to keep the GPU busy, few enough to resume close to a crash


def load_llm(
    model: ResolvedModel, tensor_parallel_size: int, dtype: str, gpu_memory_utilization: float, **options: Any
):
    """A ``vllm.LLM`` for ``model`` (``options``: e.g. ``runner="pooling"``), or why vLLM is not at hand."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise RealignError(
            f"engine.kind=vllm needs the vllm extra on a CUDA machine (pip install 'realign-toolkit[vllm]'): {exc}"
        ) from None
    return LLM(
        model=str(model.path),
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        **options,
    )


class VLLMEngine:
    def __init__(
        self,
        model: ResolvedModel,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
    ):
        self.llm = load_llm(model, tensor_parallel_size, dtype, gpu_memory_utilization)
        self.model_id = model_identity("vllm", model.spec, model.fingerprint)
        self.stats: Counter = Counter()  # in-process: nothing is retried

    @classmethod
    def from_config(cls, engine_config, model_config) -> VLLMEngine:
        return cls(
            resolve_model(model_config.spec),
            engine_config.tensor_parallel_size,
            model_config.dtype,
            engine_config.gpu_memory_utilization,
        )

    def generate(
        self, requests: list[GenerationRequest], progress: Progress | None = None, chunk: int = CHUNK
    ) -> Iterator[GenerationResult]:
        for start in range(0, len(requests), chunk):
            yield from self._generate(requests[start : start + chunk], progress)

    def _generate(self, requests: list[GenerationRequest], progress: Progress | None) -> Iterator[GenerationResult]:
        from vllm import SamplingParams as VLLMSampling

        sampling = [
            VLLMSampling(
                n=r.params.n,
                temperature=r.params.temperature,
                top_p=r.params.top_p,
                top_k=r.params.top_k or -1,
                min_p=r.params.min_p,
                repetition_penalty=r.params.repetition_penalty,
                max_tokens=r.params.max_new_tokens,
                stop=list(r.params.stop) or None,
                logprobs=r.params.top_logprobs or None,
                seed=row_seed(r.params.seed, r.request_id, 0),
            )
            for r in requests
        ]
        outputs = self.llm.chat([r.messages for r in requests], sampling, use_tqdm=False)
        for request, output in zip(requests, outputs, strict=True):
            k = request.params.top_logprobs
            completions = [
                Completion(
                    c.text.strip(),
                    len(output.prompt_token_ids),
                    len(c.token_ids),
                    "length" if c.finish_reason == "length" else "stop",
                    token_logprobs(c.token_ids, c.logprobs, k) if k and c.logprobs else None,
                )
                for c in output.outputs
            ]
            if progress:
                progress(1)
            yield GenerationResult(request.request_id, completions)


def token_logprobs(token_ids, steps, k: int) -> tuple[TokenLogprob, ...]:
    """vLLM's per-step {token id: Logprob} (the k likeliest plus the chosen one) as TokenLogprob entries."""
    entries = []
    for token, step in zip(token_ids, steps, strict=True):
        top = sorted(step.values(), key=lambda logprob: logprob.rank)[:k]
        entries.append(
            TokenLogprob(
                step[token].decoded_token, step[token].logprob, tuple((alt.decoded_token, alt.logprob) for alt in top)
            )
        )
    return tuple(entries)
