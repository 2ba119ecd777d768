"""The generator contract shared by every engine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; ``temperature == 0`` means greedy decoding."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    messages: list[dict[str, str]]
    params: SamplingParams


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


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

    def generate(self, requests: list[GenerationRequest], progress: Progress | None = None) \
            -> Iterator[GenerationResult]: ...
