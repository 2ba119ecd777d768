"""The generator contract shared by every engine."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol


def row_seed(seed: int, request_id: str, sample: int) -> int:
    """The seed of sample ``sample`` of request ``request_id``: every engine seeds each sample from it, so what a
    request gets does not depend on its batch, its replica or a restart."""
    digest = hashlib.sha256(f"{seed}\0{request_id}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def model_identity(engine_kind: str, spec: str, fingerprint: Callable[[], str]) -> str:
    """What produced a text, as recorded in provenance: the served model's name for a server (its weights are not
    ours to hash), else the spec and the fingerprint of the weights."""
    return f"openai:{spec}" if engine_kind == "openai" else f"{spec}@{fingerprint()}"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; ``temperature == 0`` means greedy decoding.

    Every engine applies exactly these knobs, never a checkpoint's or server's own defaults, in vLLM's order:
    repetition penalty on the raw logits, then temperature, then min-p, top-k and top-p; the sample is drawn from
    what remains. ``top_k == 0``, ``min_p == 0`` and ``repetition_penalty == 1`` switch their knob off.
    """

    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    stop: tuple[str, ...] = ()
    top_k: int = 0  # > 0: sample only among the k likeliest tokens
    min_p: float = 0.0  # > 0: drop tokens less likely than min_p times the likeliest one (after temperature)
    repetition_penalty: float = 1.0  # > 1: divide positive / multiply negative logits of tokens already in the text
    top_logprobs: int = 0  # > 0: return, for every generated token, the log-probabilities of the k likeliest tokens

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    messages: list[dict[str, str]]
    params: SamplingParams


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-probability under the model (before temperature or top-p), and the
    ``top_logprobs`` likeliest alternatives at that step as (token text, log-probability), likeliest first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked (top_logprobs > 0) and the engine could give them


@dataclass
class GenerationResult:
    request_id: str
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None  # set when the request failed for good


Progress = Callable[[int], None]  # called with the number of requests just finished


class Engine(Protocol):
    """Generates ``params.n`` completions per request; yields results as they finish, in any order."""

    model_id: str  # what produced the text, for provenance (spec and fingerprint, or served model name)
    stats: Counter  # calls, failures and ``retry:<reason>`` counts, for the reports (empty where nothing retries)

    def generate(
        self, requests: list[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[GenerationResult]: ...
