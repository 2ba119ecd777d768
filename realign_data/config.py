"""Typed configs loaded from YAML manifests, with CLI overrides.

A manifest is a YAML mapping validated by a pydantic model. Precedence, lowest first: the model's defaults, the
manifest file, dotted ``--set a.b=value`` overrides, then explicit CLI options. Unknown keys and wrong types are
rejected with the dotted path of the field, and so are NaN and infinite numbers. Secrets never live in a config:
fields such as ``api_key_env`` name the environment variable that holds them, a value shaped like a key or token
is refused with its field named, and credentials in URLs are left out of every stored copy of the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from realign_data.errors import InputError
from realign_data.provenance import looks_like_secret, strip_url_credentials
from realign_data.schema import PairType

SECRET_KEYS = frozenset({"api_key", "token", "hf_token", "password", "secret", "openai_api_key", "access_token"})


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelConfig(StrictModel):
    """A model spec (Hub id, local directory, .gguf file or built-in alias) and how to load it."""

    spec: str = "smollm2-135m-instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")


class NearDuplicates(StrictModel):
    """Prompts that nearly repeat an earlier one: MinHash over word n-grams (datasketch's MinHashLSH)."""

    threshold: float = Field(
        0.8, gt=0, lt=1, description="estimated Jaccard similarity of the word n-gram sets at which a prompt is dropped"
    )
    ngram: int = Field(3, ge=1, description="words per n-gram (a prompt shorter than this is one n-gram)")
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more is more exact and slower")


DEFAULT_NGRAM = 8  # decontamination's n-gram, as open-r1's decontaminate.py


class Decontaminate(StrictModel):
    """Drop prompts that contain a benchmark prompt (see realign_data.decontaminate for the method)."""

    against: list[str] = Field(
        min_length=1,
        description="benchmarks: alpaca_eval, arena-hard-v0.1, arena-hard-v2.0 (their official files), "
        "NAME=FILE (e.g. alpaca_eval=reference_outputs_gpt4_1106_preview.json) or any prompt file",
    )
    ngram: int = Field(DEFAULT_NGRAM, ge=1, description="words in a shared n-gram that counts as contamination")


class PromptsConfig(StrictModel):
    """Where prompts come from and how they are filtered."""

    source: str = Field("builtin", description="builtin, a .jsonl/.json/.parquet/.csv file, or a Hub ID:SPLIT")
    column: str | None = Field(
        None, description="text or chat-messages column; default: first of prompt, instruction, messages, question"
    )
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    near_duplicates: NearDuplicates | None = Field(
        default_factory=NearDuplicates, description="drop near-duplicate prompts (after exact ones); null: keep them"
    )
    decontaminate: Decontaminate | None = Field(
        None, description="drop prompts that contain a benchmark prompt (after the duplicates); null: no check"
    )
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="drop prompts longer than this under `tokenizer`")
    tokenizer: str | None = Field(None, description="model spec whose tokenizer counts tokens; default: the policy")
    reference_column: str | None = Field(
        None,
        description="optional reference responses (text, or messages whose "
        "last assistant turn is used), e.g. UltraFeedback's chosen",
    )


NO_BASE_URLS = (
    "engine.base_urls is empty: name at least one OpenAI-compatible server, e.g. "
    "--set engine.base_urls=[http://127.0.0.1:8000/v1]"
)


class PriceConfig(StrictModel):
    """What an engine's tokens cost, for `realign-data build --plan`: USD per million tokens."""

    input: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    output: float = Field(0.0, ge=0, description="USD per million generated tokens")


class EngineConfig(StrictModel):
    """The generation backend; `openai` reaches any OpenAI-compatible server."""

    kind: Literal["hf", "openai", "vllm"] = "hf"
    batch_size: int = Field(
        32,
        ge=1,
        description="hf: sequences decoded at once (continuous batching; on CPU, more rows per step cost little "
        "more than one: a step reads every weight whatever the batch)",
    )
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(16, ge=1)
    max_retries: int = Field(5, ge=0)
    retry_backoff_s: float = Field(0.5, ge=0, description="first retry waits up to this; doubles, capped at 30 s")
    timeout_s: float = Field(120.0, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="vllm: GPU memory share for its KV cache; leave room for an in-process reward model",
    )
    price: PriceConfig | None = Field(None, description="USD per million tokens, for the cost `build --plan` shows")


class GenerationConfig(StrictModel):
    """Sampling parameters for on-policy samples and revisions."""

    num_samples: int = Field(2, ge=1)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(384, ge=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens only; 0: off")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="drop tokens below min_p times the likeliest; 0: off")
    repetition_penalty: float = Field(1.0, gt=0.0, description="> 1 discourages tokens already in the text; 1: off")


class ScoringConfig(StrictModel):
    """How responses are scored: a reward model, or an instruct model as a pointwise 1-10 judge."""

    method: Literal["judge", "reward_model"] = "judge"
    model: ModelConfig | None = Field(None, description="judge default: the policy model; required for reward_model")
    engine: EngineConfig | None = Field(
        None,
        description="a judge's engine (default: the top-level engine), or a reward model's: hf (default, "
        "transformers here), vllm (its pooling runner) or openai (a vLLM server's /classify)",
    )
    batch_size: int = Field(8, ge=1)
    template: str | None = Field(None, description="file with a judge template replacing the built-in one")
    max_attempts: int = Field(3, ge=1, description="text judges: asks per item before it counts as unparseable")


class RevisionConfig(StrictModel):
    """The reviser that rewrites a draft given the instruction and the draft."""

    reviser: ModelConfig | None = Field(None, description="default: the policy model, prompted zero-shot")
    engine: EngineConfig | None = Field(None, description="default: the top-level engine")
    template: str | None = Field(None, description="file with a revision template replacing the built-in one")
    drafts_per_prompt: int = Field(1, ge=1, description="samples 0..N-1 of each prompt are revised")
    temperature: float = Field(0.7, ge=0.0)
    max_new_tokens: int | None = Field(None, ge=1, description="default: generation.max_new_tokens")


class RevisionChecks(StrictModel):
    """Revisions that are not pair material: dropped and counted by reason (``revision:template_echo``, ...).

    Each check can be switched off; a dropped revision is not paired as a revision and not offered to reviser_train.
    """

    empty: bool = Field(True, description="no words at all")
    unchanged: bool = Field(True, description="the same words as the draft (case, spacing and punctuation aside)")
    template_echo: bool = Field(
        True, description="repeats the revision template's own text: 4 words in a row of one of its fixed lines"
    )
    restates_draft: float | None = Field(
        0.9,
        gt=0,
        le=1,
        description="starts by repeating at least this share of the draft's words in order (drafts of 8 words "
        "or more); null: off",
    )


class PairsConfig(StrictModel):
    """Which pair types are built, the margin, truncation and length rules, the revision checks and the final mix."""

    types: list[PairType] = Field(default_factory=lambda: list[PairType](["on_policy", "revision", "reviser_train"]))
    min_margin: float = 0.0
    allow_truncated: bool = Field(
        False, description="pair responses that hit the token limit (cut off mid-text); default: drop and count them"
    )
    max_length_ratio: float | None = Field(
        None,
        ge=1,
        description="length control: drop a pair whose chosen has more than this many times the rejected's tokens "
        "(counted TYPE:length_ratio); null: off",
    )
    revision_checks: RevisionChecks = Field(default_factory=RevisionChecks)
    mix: dict[PairType, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="weight per pair type, e.g. on_policy: 1.0 (0 drops the type)"
    )
    seed: int = 0


class ExecutionConfig(StrictModel):
    """Where the build stages run: in this process (``local``), or on a Ray cluster (``ray``), each stage's requests
    spread over long-lived engine actors while this process keeps the stage cache."""

    backend: Literal["local", "ray"] = "local"
    address: str = Field(
        "local",
        description="ray: 'local' starts Ray on this machine, 'auto' joins the cluster of `ray start`, or a "
        "cluster address (HOST:6379, ray://HOST:10001)",
    )
    workers: int = Field(2, ge=1, description="ray: engine actors per stage")
    cpus_per_worker: float = Field(1.0, gt=0, description="ray: CPUs each actor reserves (and its torch threads)")
    gpus_per_worker: float = Field(0.0, ge=0, description="ray: GPUs each actor reserves (vllm: tensor_parallel_size)")
    chunk: int = Field(
        32,
        ge=1,
        description="ray: requests per actor call: a killed actor redoes at most this many, and results "
        "reach the cache chunk by chunk",
    )


class BuildConfig(StrictModel):
    """The whole `realign-data build` recipe; its defaults are the embedded CPU smoke recipe (smoke-cpu.yaml)."""

    dataset: str = Field("smoke", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    prompts: PromptsConfig = Field(default_factory=lambda: PromptsConfig(limit=16))
    policy: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    revision: RevisionConfig = Field(default_factory=RevisionConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)


Config = TypeVar("Config", bound=BaseModel)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def read_manifest(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML manifest into a mapping; a missing or malformed file is an InputError naming it.

    ``extends: other.yaml`` (relative to this file), at the top or inside any section, starts that mapping from
    another manifest and overrides its keys.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a manifest file (e.g. manifests/smoke-cpu.yaml)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a manifest must be a YAML mapping, got {type(data).__name__}")
    return _resolve_extends(data, path, (*_seen, path.resolve()))


def _resolve_extends(data: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    data = {
        key: _resolve_extends(value, path, seen) if isinstance(value, dict) else value for key, value in data.items()
    }
    if "extends" not in data:
        return data
    parent = (path.parent / str(data.pop("extends"))).resolve()
    if parent in seen:
        raise InputError(f"{path}: extends {parent.name} again (a cycle)")
    return _deep_merge(read_manifest(parent, seen), data)


def set_dotted(data: dict[str, Any], key: str, value: Any, label: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key == "a.b.c"``, creating sections as needed."""
    *parents, leaf = key.strip().split(".")
    node = data
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"{label}: {'.'.join(parents[: depth + 1])} is not a section")
        node = child
    node[leaf] = value


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply dotted ``key.sub=value`` overrides; values are parsed as YAML scalars (``0.7``, ``true``, ``[a, b]``)."""
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. generation.temperature=0.7")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value, f"--set {item!r}")
    return data


def _reject_secrets(data: Any, path: str, origin: str) -> None:
    """Refuse secret-named keys and key-shaped values anywhere (URL credentials excepted: they are stripped)."""
    hint = (
        "put the secret in an environment variable (e.g. HF_TOKEN, OPENAI_API_KEY) and name that variable in "
        "an *_env field"
    )
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{path}.{key}" if path else str(key)
            if str(key).lower() in SECRET_KEYS:
                raise InputError(f"{origin}: {dotted}: secrets are not allowed in configs; {hint}")
            _reject_secrets(value, dotted, origin)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _reject_secrets(value, f"{path}[{index}]", origin)
    elif isinstance(data, str) and looks_like_secret(strip_url_credentials(data)):
        raise InputError(f"{origin}: {path}: the value looks like an API key or token; {hint}")


def _describe(error: ErrorDetails) -> str:
    dotted = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{dotted}: unknown key"
    return f"{dotted}: {error['msg']} (got {error.get('input')!r})"


def load_config(
    model: type[Config],
    manifest: str | Path | None = None,
    sets: list[str] | None = None,
    options: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Build a config from defaults, a manifest (or ``base``, a stored config), ``--set`` overrides and explicit
    options (dotted keys)."""
    origin = str(manifest) if manifest else "config"
    data = read_manifest(manifest) if manifest else json.loads(json.dumps(base or {}))
    data = apply_overrides(data, list(sets or []))
    for key, value in (options or {}).items():
        if value is not None:
            set_dotted(data, key, value, f"option {key}")
    _reject_secrets(data, "", origin)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{origin}: " + "; ".join(_describe(err) for err in exc.errors())) from None


def _without_credentials(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _without_credentials(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_without_credentials(value) for value in data]
    return strip_url_credentials(data) if isinstance(data, str) else data


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """The effective config as plain JSON-able data, as stored with every dataset, model and report (credentials
    in URLs left out)."""
    return _without_credentials(config.model_dump(mode="json"))
