"""The OpenAI-compatible engine: vllm serve, SGLang, TGI, transformers serve, or a hosted API.

Requests run concurrently (bounded by ``concurrency``) and are spread round-robin over several ``base_urls``
(e.g. one per vLLM replica). 429s, 5xx, timeouts, connection errors and malformed bodies are retried with
exponential backoff and full jitter; requests that still fail are yielded with their error and counted, never
dropped. Servers that ignore ``n`` are asked again until each request has its ``n`` completions.

``top_k``, ``min_p`` and ``repetition_penalty`` are not OpenAI API fields: they are sent in the request body only
when set to something other than off (0, 0, 1), which vLLM and SGLang servers honour and OpenAI's hosted API
rejects as unknown. ``top_logprobs > 0`` asks for ``logprobs``; a server that sends none leaves them ``None``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import queue
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import openai

from realign_data.config import NO_BASE_URLS
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
from realign_data.errors import InputError

log = logging.getLogger(__name__)

RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.APIResponseValidationError,
    json.JSONDecodeError,
)
BACKOFF_CAP_S = 30.0


T = TypeVar("T")


@dataclass(frozen=True)
class Classification:
    request_id: str
    values: list[float] | None  # one per class; None when the request failed
    error: str | None = None


class MalformedResponse(Exception):
    """The server answered 2xx with a body that is not a usable chat completion."""


class OpenAIEngine:
    def __init__(
        self,
        model: str,
        base_urls: list[str],
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        retry_backoff_s: float = 0.5,
    ):
        if not base_urls:
            raise InputError(NO_BASE_URLS)
        self.model = model
        self.base_urls = list(base_urls)
        self.api_key = os.environ.get(api_key_env) or "EMPTY"  # local servers accept any key
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.model_id = model_identity("openai", model, str)
        self.stats: Counter = Counter()

    @classmethod
    def from_config(cls, engine_config, model_config) -> OpenAIEngine:
        return cls(
            model_config.spec,
            engine_config.base_urls,
            engine_config.api_key_env,
            engine_config.concurrency,
            engine_config.max_retries,
            engine_config.timeout_s,
            engine_config.retry_backoff_s,
        )

    def generate(
        self, requests: list[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[GenerationResult]:
        """Run the requests on a private event loop in a thread; yield each result as soon as it is done."""
        yield from self._stream(
            requests,
            self.base_urls,
            self._complete,
            lambda r, error: GenerationResult(r.request_id, error=error),
            progress,
        )

    def classify(
        self, conversations: list[tuple[str, list[dict[str, str]]]], progress: Progress | None = None
    ) -> Iterator[Classification]:
        """The raw outputs (no activation) of a classifier served by vLLM (``vllm serve MODEL --runner pooling``,
        vLLM >= 0.13) for each ``(id, messages)``: ``POST /classify`` beside ``/v1`` with the chat messages, which the
        server renders with the model's chat template; retried and counted as completions are."""
        roots = [url.rstrip("/").removesuffix("/v1") for url in self.base_urls]
        yield from self._stream(
            conversations, roots, self._classify, lambda job, error: Classification(job[0], None, error), progress
        )

    def _stream(self, jobs: list, urls: list[str], run_one, failed, progress: Progress | None) -> Iterator:
        """``run_one(job, clients)`` for every job, ``concurrency`` at a time, on a private event loop in a thread;
        each result yielded as soon as it is done (an unexpected exception becomes ``failed(job, error)``)."""
        results: queue.Queue = queue.Queue()
        done = object()

        async def run_all() -> None:
            clients = [
                openai.AsyncOpenAI(base_url=url, api_key=self.api_key, max_retries=0, timeout=self.timeout_s)
                for url in urls
            ]
            rotation = itertools.cycle(clients)
            limit = asyncio.Semaphore(self.concurrency)

            async def one(job) -> None:
                async with limit:
                    try:
                        result = await run_one(job, rotation)
                    except Exception as exc:  # an unexpected failure is still reported for this job
                        self.stats["failed"] += 1
                        result = failed(job, f"{type(exc).__name__}: {exc}")
                    results.put(result)

            try:
                await asyncio.gather(*(one(job) for job in jobs))
            finally:
                for client in clients:
                    await client.close()

        def run() -> None:
            try:
                asyncio.run(run_all())
            finally:
                results.put(done)

        worker = threading.Thread(target=run, name="openai-engine", daemon=True)
        worker.start()
        while (item := results.get()) is not done:
            if progress:
                progress(1)
            yield item
        worker.join()

    async def _classify(self, job: tuple[str, list[dict[str, str]]], rotation) -> Classification:
        key, messages = job
        body = {"model": self.model, "messages": messages, "add_generation_prompt": False}
        body |= {"use_activation": False, "activation": False}  # the switch's name from vLLM 0.11.1, and before

        async def call() -> list[float]:
            return classification_values(await next(rotation).post("/classify", cast_to=object, body=body))

        values, error = await self._retrying(key, call, [0])
        return Classification(key, values, error)

    async def _complete(self, request: GenerationRequest, rotation) -> GenerationResult:
        params = request.params
        completions: list[Completion] = []
        attempts = [0]  # one retry budget for the whole request, however many calls its n completions take
        while len(completions) < params.n:
            wanted, seed = params.n - len(completions), row_seed(params.seed, request.request_id, len(completions))

            async def call(n: int = wanted, seed: int = seed) -> list[Completion]:
                return await self._call(next(rotation), request, n, seed)  # the next server on every try

            more, error = await self._retrying(request.request_id, call, attempts)
            if more is None:
                return GenerationResult(request.request_id, completions, error=error)
            completions += more
        return GenerationResult(request.request_id, completions[: params.n])

    async def _retrying(
        self, request_id: str, call: Callable[[], Awaitable[T]], attempts: list[int]
    ) -> tuple[T, None] | tuple[None, str]:
        """``await call()`` until it succeeds: a retryable failure waits (full-jitter backoff) and tries again while
        ``attempts[0]`` (shared by the calls of one request) is within ``max_retries``; a refusal (4xx other than
        429) is not retried. The value, or None and the error of the last try."""
        while True:
            try:
                value = await call()
                self.stats["calls"] += 1
                return value, None
            except (*RETRYABLE, MalformedResponse) as exc:
                self.stats[f"retry:{type(exc).__name__}"] += 1
                attempts[0] += 1
                if attempts[0] > self.max_retries:
                    self.stats["failed"] += 1
                    log.info("request %s failed after %d retries: %s", request_id, self.max_retries, type(exc).__name__)
                    return None, f"{type(exc).__name__}: {exc}"
                delay = self._backoff(attempts[0], exc)
                log.info(
                    "request %s: %s, retry %d of %d in %.2f s",
                    request_id,
                    type(exc).__name__,
                    attempts[0],
                    self.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
            except openai.APIStatusError as exc:  # 4xx other than 429: retrying will not help
                self.stats["failed"] += 1
                log.info("request %s refused by the server (HTTP %s), not retried", request_id, exc.status_code)
                return None, f"HTTP {exc.status_code}: {exc.message}"

    def _backoff(self, attempt: int, exc: Exception) -> float:
        """Full-jitter exponential backoff, never shorter than a server's Retry-After."""
        delay = random.uniform(0, min(BACKOFF_CAP_S, self.retry_backoff_s * 2 ** (attempt - 1)))
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            delay = max(delay, min(BACKOFF_CAP_S, float(retry_after)))
        return delay

    async def _call(
        self, client: openai.AsyncOpenAI, request: GenerationRequest, n: int, seed: int
    ) -> list[Completion]:
        params = request.params
        logprob_fields = {"logprobs": True, "top_logprobs": params.top_logprobs} if params.top_logprobs > 0 else {}
        response = await client.chat.completions.create(
            model=self.model,
            messages=request.messages,
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            stop=list(params.stop) or None,
            extra_body=server_sampling_fields(params) or None,
            **logprob_fields,
        )
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise MalformedResponse("no choices in the response body")
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None) or 0
        completion_tokens = (getattr(usage, "completion_tokens", None) or 0) // len(choices)
        completions = []
        for choice in choices:
            content = getattr(getattr(choice, "message", None), "content", None)
            if not isinstance(content, str):
                raise MalformedResponse("a choice has no message content")
            finish = "length" if getattr(choice, "finish_reason", None) == "length" else "stop"
            tokens = getattr(getattr(choice, "logprobs", None), "content", None) if logprob_fields else None
            completions.append(
                Completion(
                    content.strip(),
                    prompt_tokens,
                    completion_tokens,
                    finish,
                    parse_logprobs(tokens, params.top_logprobs) if tokens else None,
                )
            )
        return completions


def classification_values(body: Any) -> list[float]:
    """The class outputs of the one input of a ``/classify`` answer: ``data[0].probs``."""
    data = body.get("data") if isinstance(body, dict) else None
    values = data[0].get("probs") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    if not (isinstance(values, list) and values and all(type(v) in (int, float) and math.isfinite(v) for v in values)):
        raise MalformedResponse("no data[0].probs list of finite numbers in the /classify answer")
    return [float(v) for v in values]


def server_sampling_fields(params: SamplingParams) -> dict:
    """The sampling knobs outside the OpenAI API, for vLLM/SGLang servers; only those switched on."""
    off = SamplingParams()
    return {
        name: getattr(params, name)
        for name in ("top_k", "min_p", "repetition_penalty")
        if getattr(params, name) != getattr(off, name)
    }


def parse_logprobs(tokens: list, k: int) -> tuple[TokenLogprob, ...]:
    """``choice.logprobs.content`` as TokenLogprob entries (k alternatives, likeliest first); a malformed entry
    makes the body malformed."""
    try:
        return tuple(
            TokenLogprob(
                entry.token,
                float(entry.logprob),
                tuple(
                    sorted(
                        ((alt.token, float(alt.logprob)) for alt in entry.top_logprobs or ()), key=lambda alt: -alt[1]
                    )[:k]
                ),
            )
            for entry in tokens
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedResponse(f"unusable logprobs in a choice: {exc}") from None
