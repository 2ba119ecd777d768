"""The build pipeline: prompts -> generate -> score -> revise -> pairs -> commit, resumable at every step.

Each stage caches its results under ``<store>/runs/<run-id>/<stage>/`` keyed by content, so a re-run (after an
interruption, or with more samples) computes only what is missing. Only results are cached, never failures: a
request that failed, an empty response and an unrated item are counted by stage and reason, and a re-run asks for
exactly those again. One build at a time holds a run (a lock beside its folder, released by the kernel when the
process dies). Models are loaded once and shared between roles: in the embedded default, SmolLM2 is policy,
reviser and judge from one set of weights.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from filelock import FileLock, Timeout

from realign_data.config import (
    NO_BASE_URLS,
    BuildConfig,
    EngineConfig,
    ModelConfig,
    PairsConfig,
    config_to_dict,
    load_config,
)
from realign_data.engines import GenerationRequest, SamplingParams, create_engine
from realign_data.engines.base import model_identity
from realign_data.errors import InputError, RealignError
from realign_data.execution import RayExecutor
from realign_data.files import content_key, write_json
from realign_data.models import (
    chat_template_sha256,
    load_tokenizer,
    pick_device,
    pick_dtype,
    prompt_token_ids,
    resolve_model,
    token_ids_sha256,
)
from realign_data.pairs import PairOrigin, PromptResults, Response, build_pairs, mix_pairs, revision_prompt
from realign_data.prompts import PromptSet, load_prompts
from realign_data.provenance import redact, utc_now
from realign_data.quality import length_bias
from realign_data.runs import StageCache, record_throughput
from realign_data.samples import read_samples, samples_inputs, samples_name, samples_table
from realign_data.schema import PAIR_SCHEMA
from realign_data.scoring import LogprobJudge, ScoreItem, TextJudge, batch_plan, make_scorer
from realign_data.store import HOST, PAIRS, SAMPLES, Store, Version, check_name
from realign_data.templates import Template, load_template

log = logging.getLogger(__name__)
STAGES = ("generate", "score", "revise", "pairs")
TaskFactory = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)
VLLM_MEMORY_LIMIT = 0.95  # of one GPU, for the vLLM instances of one process together
EXAMPLES = 3  # failed items named in an error when nothing of a stage succeeded

GENERATIONS = pa.schema(
    [
        ("key", pa.string()),
        ("prompt_id", pa.string()),
        ("index", pa.int32()),
        ("text", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
    ]
)
SCORES = pa.schema([("key", pa.string()), ("score", pa.float64()), ("detail", pa.string())])


@dataclass
class BuildResult:
    prompts: PromptSet | None  # None for pairs rebuilt from a samples version
    results: list[PromptResults]
    rows: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    mix: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, list[dict]] = field(default_factory=dict)  # stage -> [{id, reason, detail}]
    retries: dict[str, Counter[str]] = field(default_factory=dict)  # stage -> {reason: count}
    stats: dict[str, Any] = field(default_factory=dict)
    origin: PairOrigin | None = None
    version: Version | None = None
    samples_version: Version | None = None

    @property
    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=PAIR_SCHEMA)

    @property
    def drop_reasons(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "no candidates"


def make_pairs(result: BuildResult, rules: PairsConfig, template: Template) -> None:
    """The pairs of ``result.results`` under ``rules``, mixed: the one pair step of a build and of a rebuild from
    a samples version, so both give the same rows from the same responses."""
    assert result.origin is not None, "pairs need the origin of the responses"
    rows, result.dropped = build_pairs(result.results, rules, template, result.origin)
    result.rows, result.mix = mix_pairs(rows, rules.mix, rules.seed)


def write_pairs(
    store: Store, config: BuildConfig, result: BuildResult, inputs: dict[str, Any], models: dict[str, Any]
) -> Version:
    """Write ``result``'s pairs as a new version of ``config.dataset``, with the rules' outcome in its stats."""
    table = result.table
    result.version = store.write_version(
        config.dataset,
        [table],
        config=config_to_dict(config),
        inputs=inputs,
        models=models,
        stats={
            **result.stats,
            "dropped": dict(result.dropped),
            "mix": {"weights": config.pairs.mix, "seed": config.pairs.seed, "counts": result.mix},
            "length_bias": length_bias(table),
            "failed_requests": result.failures,
        },
    )
    return result.version


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def failure_reason(detail: str) -> str:
    """A short, countable reason: ``HTTP 500: ...`` -> ``HTTP 500``, ``InternalServerError: ...`` -> its class."""
    return detail.split(":", 1)[0].strip()[:60] or "unknown"


def failure_summary(failures: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(f["reason"] for f in failures).items()))


def server_prompt_ids(engine: EngineConfig, model: str, messages: list[dict[str, str]]) -> tuple[list[int] | None, str]:
    """The prompt's tokens as an OpenAI-compatible server renders them for a chat completion, asked of its
    vLLM-style ``POST /tokenize`` (beside ``/v1``), and where they came from; None and the reason when the server
    does not answer that."""
    url = engine.base_urls[0].rstrip("/").removesuffix("/v1") + "/tokenize"
    shown = redact(url)
    body = json.dumps(
        {"model": model, "messages": messages, "add_generation_prompt": True, "add_special_tokens": False}
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {os.environ.get(engine.api_key_env) or 'EMPTY'}",
    }
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=engine.timeout_s) as answer:
            tokens = json.loads(answer.read()).get("tokens")
    except urllib.error.HTTPError as exc:
        return None, f"{shown} answered HTTP {exc.code}"
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:  # unreachable, cut, not JSON
        return None, f"{shown} gave no usable answer ({type(exc).__name__})"
    if not (isinstance(tokens, list) and tokens and all(type(t) is int for t in tokens)):
        return None, f"{shown} answered without a list of token ids"
    return tokens, shown


def settle_dtypes(config: BuildConfig) -> BuildConfig:
    """The config with ``dtype: auto`` of every transformers model resolved where it runs (this machine, or Ray's
    CPU workers alike), so that the engines compute in the dtype that the stored config and each text's generator
    id name. vLLM and GPU workers resolve their own ``auto``, and keep it as their label."""
    on_ray = config.execution.backend == "ray"

    def settled(model: ModelConfig, engine: EngineConfig, cpu_bf16: bool) -> ModelConfig:
        if model.dtype != "auto" or engine.kind != "hf":
            return model
        device = "cpu" if on_ray and model.device == "auto" else pick_device(model.device)
        if on_ray and (config.execution.gpus_per_worker > 0 or device != "cpu"):
            return model
        return model.model_copy(update={"dtype": str(pick_dtype("auto", device, cpu_bf16)).removeprefix("torch.")})

    revision, scoring = config.revision, config.scoring
    update: dict[str, Any] = {"policy": settled(config.policy, config.engine, cpu_bf16=True)}
    if revision.reviser is not None:
        reviser = settled(revision.reviser, revision.engine or config.engine, cpu_bf16=True)
        update["revision"] = revision.model_copy(update={"reviser": reviser})
    if scoring.model is not None:
        reward = scoring.method == "reward_model"
        engine = scoring.engine or (EngineConfig(kind="hf") if reward else config.engine)
        update["scoring"] = scoring.model_copy(update={"model": settled(scoring.model, engine, cpu_bf16=not reward)})
    return config.model_copy(update=update)


class Build:
    def __init__(
        self,
        config: BuildConfig,
        store: Store,
        run_id: str | None = None,
        fresh: bool = False,
        progress: TaskFactory | None = None,
    ):
        self.config = settle_dtypes(config)
        self.store = store
        run_id = run_id or config.dataset
        check_name(run_id, hint=" (--run-id names one folder under <store>/runs/)", what="run id")
        self.run_dir = store.root / "runs" / run_id
        self.fresh = fresh
        self.progress = progress or _no_progress
        self._engines: dict[tuple, Any] = {}
        self._scorer: Any = None
        self._scorer_id: str | None = None
        self._identities: dict[tuple, str] = {}
        self.failures: dict[str, list[dict]] = {}
        self.retries: dict[str, Counter[str]] = {}
        self.computed: Counter = Counter()
        self.revision_template = load_template("revision", ("instruction", "draft"), config.revision.template)
        self.executor = RayExecutor(config.execution) if config.execution.backend == "ray" else None
        self.judge_template = load_template("judge", ("instruction", "response"), config.scoring.template)

    # ---- models and engines, loaded lazily and shared between roles ------------------------------------------
    def identity(self, engine: EngineConfig, model: ModelConfig) -> str:
        """What produced a result, without loading weights: spec@fingerprint, or the served model name."""
        key = (engine.kind, model.spec)
        if key not in self._identities:
            self._identities[key] = model_identity(
                engine.kind, model.spec, lambda: resolve_model(model.spec).fingerprint()
            )
        return self._identities[key]

    def engine(self, engine: EngineConfig, model: ModelConfig):
        key = (engine.kind, model.spec, model.dtype, model.device, tuple(engine.base_urls))
        if key not in self._engines:
            self._engines[key] = (
                self.executor.engine(engine, model) if self.executor is not None else create_engine(engine, model)
            )
        return self._engines[key]

    @property
    def reviser(self) -> tuple[EngineConfig, ModelConfig]:
        return self.config.revision.engine or self.config.engine, self.config.revision.reviser or self.config.policy

    @property
    def judge(self) -> tuple[EngineConfig, ModelConfig]:
        model = self.config.scoring.model or self.config.policy
        if self.config.scoring.method == "reward_model" and self.config.scoring.model is None:
            raise InputError(
                "scoring.model is required with scoring.method=reward_model, e.g. "
                "--set scoring.model.spec=Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
            )
        if self.config.scoring.method == "reward_model":  # in-process transformers unless an engine is named
            return self.config.scoring.engine or EngineConfig(kind="hf"), model
        return self.config.scoring.engine or self.config.engine, model

    def sample_params(self) -> SamplingParams:
        g = self.config.generation
        return SamplingParams(
            n=g.num_samples,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            min_p=g.min_p,
            repetition_penalty=g.repetition_penalty,
            max_new_tokens=g.max_new_tokens,
            seed=g.seed,
            stop=tuple(g.stop),
        )

    def revision_params(self) -> SamplingParams:
        g, r = self.config.generation, self.config.revision
        return SamplingParams(
            n=1,
            temperature=r.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            min_p=g.min_p,
            repetition_penalty=g.repetition_penalty,
            max_new_tokens=r.max_new_tokens or g.max_new_tokens,
            seed=g.seed,
            stop=tuple(g.stop),
        )

    # ---- the run folder: one build at a time -----------------------------------------------------------------
    @contextmanager
    def holding_run(self) -> Iterator[None]:
        """Hold ``<run>.lock`` while stages write the cache; a second build on the run is refused, naming the first.

        The lock is an flock: the kernel releases it when its process dies, so a killed build leaves no stale
        lock. ``<run>.owner.json`` says who holds it (host, pid, start, command) for that message.
        """
        runs = self.run_dir.parent
        runs.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir) + ".lock")
        owner_file = self.run_dir.with_name(self.run_dir.name + ".owner.json")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            try:
                owner = json.loads(owner_file.read_text())
                who = f"pid {owner['pid']} on {owner['host']} since {owner['started_at']}: {owner['command']}"
            except (OSError, ValueError, KeyError):
                who = "another process"
            raise RealignError(
                f"run {self.run_dir.name!r} is in use by {who}; wait for it to finish, or pass another --run-id"
            ) from None
        try:
            write_json(
                owner_file,
                {"host": HOST, "pid": os.getpid(), "started_at": utc_now(), "command": redact(" ".join(sys.argv))},
            )
            if self.fresh:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.fresh = False
            yield
        finally:
            lock.release()

    def fail(self, stage: str, item: str, detail: str) -> None:
        """Count a failed item of ``stage``: it is not cached, so a re-run asks for it again."""
        self.failures.setdefault(stage, []).append(
            {"id": item, "reason": failure_reason(detail), "detail": detail[:300]}
        )

    def _check_stage(self, stage: str, succeeded: int, failed_before: int) -> None:
        """When nothing of a stage succeeded there is nothing to build on: stop, naming some of the failures."""
        failed = self.failures.get(stage, [])[failed_before:]
        if failed and not succeeded:
            reasons = ", ".join(f"{r}={n}" for r, n in failure_summary(failed).items())
            shown = "; ".join(f"{f['id'][:16]}: {f['detail'][:80]}" for f in failed[:EXAMPLES])
            raise RealignError(f"{stage}: every request failed ({len(failed)} failure(s): {reasons}); e.g. {shown}")

    def _measured(self, stage: str, worker: str, measured: Counter, started: float) -> None:
        """Record what ``stage`` computed and how long it took, for later --plan estimates (nothing when idle)."""
        if not measured["units"]:
            return
        execution = self.config.execution
        backend = "local" if execution.backend == "local" else f"ray x{execution.workers}"
        record = {"stage": stage, "worker": worker, "backend": backend, "host": HOST, "at": utc_now()}
        try:
            record_throughput(self.run_dir.parent, record | dict(measured) | {"seconds": time.monotonic() - started})
        except OSError as exc:  # a measurement is worth less than the stage it measured
            log.warning("%s: throughput not recorded (%s)", stage, exc)

    def _count_retries(self, stage: str, engine, before: Counter) -> None:
        stats = getattr(engine, "stats", Counter())
        delta = {
            key.removeprefix("retry:"): stats[key] - before.get(key, 0)
            for key in stats
            if key.startswith("retry:") and stats[key] > before.get(key, 0)
        }
        if delta:
            self.retries.setdefault(stage, Counter()).update(delta)

    # ---- stages ----------------------------------------------------------------------------------------------
    def load_prompts(self) -> PromptSet:
        tokenizer = None
        if self.config.prompts.max_tokens is not None:
            spec = self.config.prompts.tokenizer or self.config.policy.spec
            tokenizer = load_tokenizer(resolve_model(spec))
        return load_prompts(self.config.prompts, tokenizer)

    def _run_requests(
        self, stage: str, cache: StageCache, requests: list[GenerationRequest], engine_model, rows_for: Callable
    ) -> None:
        """Send the requests whose results are not cached yet; cache each non-empty result as soon as it arrives.

        A failed request and an empty (or whitespace-only) response are counted, never cached."""
        advance = self.progress(stage, len(requests))
        if not requests:
            return
        engine = self.engine(*engine_model)
        before = Counter(getattr(engine, "stats", Counter()))
        failed_before, succeeded = len(self.failures.get(stage, [])), 0
        measured: Counter[str] = Counter()
        chars = {r.request_id: sum(len(m["content"]) for m in r.messages) for r in requests}
        started = time.monotonic()
        try:
            for result in engine.generate(requests, advance):
                if result.error is not None:
                    self.fail(stage, result.request_id, result.error)
                    continue
                rows = []
                for row in rows_for(result):
                    if row["text"].strip():
                        rows.append(row)
                    else:
                        self.fail(
                            stage, f"{row['prompt_id']}#{row['index']}", "empty response: the model returned no text"
                        )
                # a sample cached by a killed run is asked again with its prompt's others: not computed twice
                self.computed[stage] += cache.add(*rows)
                succeeded += len(rows)
                if result.completions:
                    measured.update(
                        units=len(result.completions),
                        completion_tokens=sum(c.completion_tokens for c in result.completions),
                        prompt_chars=chars[result.request_id],
                        prompt_tokens=result.completions[0].prompt_tokens,
                    )
        finally:
            cache.flush()
            self._count_retries(stage, engine, before)
            self._measured(stage, self.generator_id(*engine_model), measured, started)
        self._check_stage(stage, succeeded, failed_before)

    def generate(self, prompts: PromptSet) -> dict[str, list[dict]]:
        """K samples per prompt from the policy: {prompt_id: [sample rows by index]}."""
        params = self.sample_params()
        keys = self.sample_keys(prompts)
        cache = StageCache(self.run_dir / "generate", GENERATIONS)
        missing = [
            GenerationRequest(p.prompt_id, p.messages, params)
            for p in prompts.prompts
            if not all(k in cache for k in keys[p.prompt_id])
        ]

        def rows_for(result):
            return [
                {
                    "key": keys[result.request_id][i],
                    "prompt_id": result.request_id,
                    "index": i,
                    "text": c.text,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(result.completions)
            ]

        self._run_requests("generate", cache, missing, (self.config.engine, self.config.policy), rows_for)
        present = {pid: [row for k in ks if (row := cache.get(k)) is not None] for pid, ks in keys.items()}
        return {pid: rows for pid, rows in present.items() if rows}

    def sample_keys(self, prompts: PromptSet) -> dict[str, list[str]]:
        """The cache keys of every prompt's K samples: {prompt_id: [key of sample 0, 1, ...]}."""
        params = self.sample_params()
        generator = self.generator_id(self.config.engine, self.config.policy)
        key_params = {k: v for k, v in params.as_dict().items() if k != "n"}
        return {
            p.prompt_id: [content_key("generate", generator, key_params, p.prompt_id, i) for i in range(params.n)]
            for p in prompts.prompts
        }

    def score_key(self, prompt: list[dict[str, str]], response: str) -> str:
        return content_key("score", self.scorer_id(), prompt, response)

    def revision_drafts(self, prompts: PromptSet, samples: dict[str, list[dict]]) -> dict[str, tuple]:
        """The drafts to revise by cache key: {key: (prompt, position among the prompt's samples, draft row)}."""
        params, generator = self.revision_params(), self.generator_id(*self.reviser)
        drafts = {}
        for prompt in prompts.prompts:
            for index, draft in enumerate(samples.get(prompt.prompt_id, [])[: self.config.revision.drafts_per_prompt]):
                key = content_key(
                    "revise",
                    generator,
                    self.revision_template.sha256,
                    params.as_dict(),
                    prompt.prompt_id,
                    draft["text"],
                )
                drafts[key] = (prompt, index, draft)
        return drafts

    def generator_id(self, engine: EngineConfig, model: ModelConfig) -> str:
        """What produced a text (part of its cache key) and what a stage's throughput depends on: a served model's
        name (openai:NAME), else the engine kind, the dtype it computes in (settle_dtypes) and the model
        (hf:bfloat16:SPEC@FP)."""
        identity = self.identity(engine, model)
        if engine.kind == "openai":
            return identity
        return f"{engine.kind}:{model.dtype}:{identity}"

    def scorer_id(self) -> str:
        """What a score depends on (part of every score's cache key): computed once, the config does not change."""
        if self._scorer_id is None:
            self._scorer_id = self._describe_scorer()
        return self._scorer_id

    def _describe_scorer(self) -> str:
        engine_config, model_config = self.judge
        generator = self.generator_id(engine_config, model_config)
        if self.config.scoring.method == "reward_model":  # reward:hf:DTYPE:SPEC@FP, reward:openai:NAME, ...
            return f"reward:{generator}"
        method = (LogprobJudge if engine_config.kind == "hf" else TextJudge).method
        return f"{method}:{generator}:{self.judge_template.sha256[:12]}"

    def scorer(self):
        """The scorer in this process (sharing its engines with the other roles), or on the Ray cluster; made once
        for both scoring stages (a reward model is loaded once)."""
        if self._scorer is None:
            if self.executor is not None:
                self._scorer = self.executor.scorer(self.config.scoring, self.judge, self.judge_template)
            else:
                self._scorer = make_scorer(self.config.scoring, self.judge, self.judge_template, self.engine)
        return self._scorer

    def score(self, items: list[ScoreItem], stage: str = "score") -> dict[str, float | None]:
        """Scores by item key (None where the scorer could not rate).

        An in-process scorer batches by length, and a score's last bits depend on its batch: the batches are planned
        over every item, cached or not, and a batch with a missing item is scored whole, so a score is the same
        whether the stage ran at once, resumed after a crash, or ran on Ray workers."""
        content = {item.key: self.score_key(item.prompt, item.response) for item in items}
        cache = StageCache(self.run_dir / "score", SCORES)
        unique = list(
            {content[item.key]: ScoreItem(content[item.key], item.prompt, item.response) for item in items}.values()
        )
        work = [item for item in unique if item.key not in cache]
        if work and (plan := batch_plan(self.config.scoring, self.judge, self.judge_template, unique)) is not None:
            work = [unique[i] for batch in plan if any(unique[i].key not in cache for i in batch) for i in batch]
        advance = self.progress(stage, len(work))
        if work:
            scorer = self.scorer()
            engine = getattr(scorer, "engine", None)
            before = Counter(getattr(engine, "stats", Counter()))
            failed_before, succeeded, rated = len(self.failures.get(stage, [])), 0, 0
            started = time.monotonic()
            try:
                for score in scorer.score(work, advance):
                    rated += 1
                    if score.key in cache:  # scored earlier: rated again only to keep its batch whole
                        continue
                    if score.score is None:  # never cached: a re-run rates it again
                        self.fail(stage, score.key, score.detail or "no score")
                        continue
                    cache.add({"key": score.key, "score": score.score, "detail": score.detail})
                    self.computed[stage] += 1
                    succeeded += 1
            finally:
                cache.flush()
                self._count_retries(stage, engine, before)
                self._measured(stage, self.scorer_id(), Counter(units=rated), started)
                if getattr(scorer, "reasks", 0):
                    self.retries.setdefault(stage, Counter())["reask:unparseable"] += scorer.reasks
            self._check_stage(stage, succeeded, failed_before)
        return {item_key: (cache.get(key) or {}).get("score") for item_key, key in content.items()}

    def prompt_rendering(self, prompts: PromptSet) -> dict[str, Any]:
        """How the policy's prompts became tokens, for realign-train to compare with its own tokenizer: the sha256 of
        one probe prompt's token ids (the probe is kept with it) and of the chat template, where known.

        hf and vllm render in-process with the policy folder's tokenizer and chat template, as TRL does. An
        OpenAI-compatible server renders with its own template, seen only through a vLLM-style ``/tokenize``;
        without one the record says that the prompt tokens are unknown."""
        engine, model = self.config.engine, self.config.policy
        probe = min(prompts.prompts, key=lambda p: p.prompt_id)
        record: dict[str, Any] = {"engine": engine.kind}
        if engine.kind == "openai":
            ids, detail = server_prompt_ids(engine, model.spec, probe.messages)
            record.update(rendered_by=f"the server's chat template, seen through {detail}", chat_template_sha256=None)
            if ids is None:
                record.update(
                    rendered_by="the server's chat template, unseen",
                    note=f"the server's prompt tokens are unknown ({detail}); realign-train cannot check "
                    "that it trains on the prompt tokens the policy was sampled with",
                )
        else:
            tokenizer = load_tokenizer(resolve_model(model.spec))
            ids = prompt_token_ids(tokenizer, probe.messages)
            record.update(
                rendered_by=f"the {engine.kind} engine: the chat template of {model.spec}",
                chat_template_sha256=chat_template_sha256(tokenizer),
            )
        record["probe"] = {
            "prompt_id": probe.prompt_id,
            "messages": probe.messages,
            "token_ids_sha256": token_ids_sha256(ids) if ids is not None else None,
            "tokens": len(ids) if ids is not None else None,
        }
        return record

    def revise(self, prompts: PromptSet, samples: dict[str, list[dict]]) -> dict[str, dict[int, dict]]:
        """Revisions of drafts 0..drafts_per_prompt-1: {prompt_id: {draft index: revision row}}."""
        params = self.revision_params()
        drafts = self.revision_drafts(prompts, samples)
        cache = StageCache(self.run_dir / "revise", GENERATIONS)
        missing = [
            GenerationRequest(key, revision_prompt(self.revision_template, prompt.messages, draft["text"]), params)
            for key, (prompt, _, draft) in drafts.items()
            if key not in cache
        ]

        def rows_for(result):  # "index": the sample index of the draft it revises
            prompt, _, draft = drafts[result.request_id]
            c = result.completions[0]
            return [
                {
                    "key": result.request_id,
                    "prompt_id": prompt.prompt_id,
                    "index": draft["index"],
                    "text": c.text,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "finish_reason": c.finish_reason,
                }
            ]

        self._run_requests("revise", cache, missing, self.reviser, rows_for)
        revisions: dict[str, dict[int, dict]] = {}
        for key, (prompt, index, _) in drafts.items():
            if (row := cache.get(key)) is not None:
                revisions.setdefault(prompt.prompt_id, {})[index] = row
        return revisions

    # ---- the whole run ---------------------------------------------------------------------------------------
    def run(self, until: str = "pairs") -> BuildResult:
        """Run the stages up to and including ``until`` (one of STAGES), holding the run folder."""
        prompts = self.load_prompts()  # bad input is refused before the run folder is touched
        self.check_models(until)
        self.store.check_kind(self.config.dataset, PAIRS)  # a name clash is refused before any compute
        self.store.check_kind(samples_name(self.config.dataset), SAMPLES)
        with self.holding_run():
            return self._run(prompts, until)

    def check_models(self, until: str) -> None:
        """Resolve every model and check every engine the stages up to ``until`` need, before anything is written."""
        roles = {"engine": (self.config.engine, self.config.policy)}
        if STAGES.index(until) >= 1:
            roles["scoring.engine"] = self.judge
        if STAGES.index(until) >= 2 and set(self.config.pairs.types) & {"revision", "revision_direct", "reviser_train"}:
            roles["revision.engine"] = self.reviser
        for engine, model in roles.values():
            if engine.kind == "openai" and not engine.base_urls:
                raise InputError(NO_BASE_URLS)
            self.identity(engine, model)
        if STAGES.index(until) >= 1:
            self.scorer_id()
        if self.executor is None:  # on Ray each actor holds its own GPU share
            self._check_vllm_memory(roles)

    def _check_vllm_memory(self, roles: dict[str, tuple[EngineConfig, ModelConfig]]) -> None:
        """The vLLM instances of one process share its GPU: their memory shares must fit in it together."""
        shares: dict[tuple[str, str], tuple[str, float]] = {}
        for field_name, (engine, model) in roles.items():
            if engine.kind == "vllm":
                reward = field_name == "scoring.engine" and self.config.scoring.method == "reward_model"
                shares.setdefault((str(reward), model.spec), (field_name, engine.gpu_memory_utilization))
        if sum(share for _, share in shares.values()) > VLLM_MEMORY_LIMIT:
            asked = " + ".join(f"{name}.gpu_memory_utilization={share}" for name, share in shares.values())
            raise InputError(
                f"the vLLM instances of this build ask for more than the GPU ({asked}): lower them to sum to at most "
                f"{VLLM_MEMORY_LIMIT}, or run the stages on Ray (--ray) with one GPU per worker"
            )

    def _run(self, prompts: PromptSet, until: str) -> BuildResult:
        samples = self.generate(prompts)
        by_id = {p.prompt_id: p for p in prompts.prompts}
        result = BuildResult(prompts, [], failures=self.failures, retries=self.retries)
        sample_scores: dict[str, float | None] = {}
        reference_scores: dict[str, float | None] = {}
        if STAGES.index(until) >= 1:
            items = [ScoreItem(s["key"], by_id[pid].messages, s["text"]) for pid, rows in samples.items() for s in rows]
            references = [ScoreItem(pid, p.messages, p.reference) for pid, p in by_id.items() if p.reference]
            sample_scores = self.score(items + references)
            reference_scores = {item.key: sample_scores.pop(item.key) for item in references}
        revisions: dict[str, dict[int, dict]] = {}
        revision_scores: dict[str, float | None] = {}
        wants_revisions = set(self.config.pairs.types) & {"revision", "revision_direct", "reviser_train"}
        if STAGES.index(until) >= 2 and wants_revisions:
            revisions = self.revise(prompts, samples)
            revision_scores = self.score(
                [
                    ScoreItem(r["key"], by_id[pid].messages, r["text"])
                    for pid, rows in revisions.items()
                    for r in rows.values()
                ],
                "score revisions",
            )
        reference_tokens = self.reference_tokens(prompts)
        for pid, rows in samples.items():
            reference = by_id[pid].reference
            result.results.append(
                PromptResults(
                    pid,
                    by_id[pid].messages,
                    [
                        Response(
                            s["text"],
                            sample_scores.get(s["key"]),
                            f"sample:{s['index']}",
                            s["finish_reason"],
                            s["completion_tokens"],
                        )
                        for s in rows
                    ],
                    {
                        i: Response(
                            r["text"],
                            revision_scores.get(r["key"]),
                            f"revision:{r['index']}",
                            r["finish_reason"],
                            r["completion_tokens"],
                        )
                        for i, r in revisions.get(pid, {}).items()
                    },
                    Response(reference, reference_scores.get(pid), "reference", None, reference_tokens.get(pid))
                    if reference
                    else None,
                )
            )
        result.stats = self._stats(prompts, samples, sample_scores, revisions, revision_scores)
        if until == "pairs":
            result.origin = PairOrigin(
                self.identity(self.config.engine, self.config.policy),
                self.identity(*self.reviser) if wants_revisions else None,
                self.scorer_id(),
                self.sample_params().as_dict(),
                self.revision_params().as_dict(),
            )
            make_pairs(result, self.config.pairs, self.revision_template)
        return result

    def reference_tokens(self, prompts: PromptSet) -> dict[str, int]:
        """Token counts of the reference responses under the policy's tokenizer (in-process engines; a served
        policy's tokenizer is not at hand, so its references' lengths stay unknown)."""
        references = {p.prompt_id: p.reference for p in prompts.prompts if p.reference}
        if not references or self.config.engine.kind == "openai":
            return {}
        tokenizer = load_tokenizer(resolve_model(self.config.policy.spec))
        return {pid: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for pid, text in references.items()}

    def _stats(self, prompts, samples, sample_scores, revisions, revision_scores) -> dict[str, Any]:
        def describe(values):
            values = [v for v in values if v is not None]
            if not values:
                return {}
            return {
                "n": len(values),
                "mean": round(statistics.fmean(values), 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
            }

        flat = [s for rows in samples.values() for s in rows]
        revised = [r for rows in revisions.values() for r in rows.values()]
        return {
            "prompts": len(prompts.prompts),
            "prompts_with_samples": len(samples),
            "samples": len(flat),
            "revisions": len(revised),
            "computed": dict(self.computed),
            "sample_tokens": sum(s["completion_tokens"] for s in flat),
            "truncated_samples": sum(s["finish_reason"] == "length" for s in flat),
            "truncated_revisions": sum(r["finish_reason"] == "length" for r in revised),
            "sample_scores": describe(sample_scores.values()),
            "revision_scores": describe(revision_scores.values()),
            "failures": {stage: failure_summary(items) for stage, items in self.failures.items()},
            "retries": {stage: dict(sorted(counts.items())) for stage, counts in self.retries.items()},
        }

    def commit(self, result: BuildResult) -> Version:
        """Write every response as a new version of ``NAME-samples``, then the pairs as a new version of ``NAME``,
        each with the full provenance. The samples are kept even when no pair survives the rules."""
        assert result.origin is not None and result.prompts is not None, "commit follows a run up to the pairs stage"
        models = {
            "policy": {
                "spec": self.config.policy.spec,
                "identity": self.identity(self.config.engine, self.config.policy),
                "generator": self.generator_id(self.config.engine, self.config.policy),
                "prompt_rendering": self.prompt_rendering(result.prompts),
            },
            "scorer": {"id": self.scorer_id()},
        }
        if self.config.revision.reviser or set(self.config.pairs.types) - {"on_policy"}:
            models["reviser"] = {
                "spec": self.reviser[1].spec,
                "identity": self.identity(*self.reviser),
                "generator": self.generator_id(*self.reviser),
            }
        inputs = {"prompts": result.prompts.record(), "run_dir": str(self.run_dir)}
        result.samples_version = self.store.write_version(
            samples_name(self.config.dataset),
            [samples_table(result.results, result.origin)],
            config=config_to_dict(self.config),
            inputs={**inputs, **samples_inputs(result.origin, self.revision_template)},
            models=models,
            stats={**result.stats, "failed_requests": result.failures},
            source="samples",
            kind=SAMPLES,
        )
        if not result.rows:
            ref = result.samples_version.ref
            raise InputError(
                f"no pairs survived the pair rules ({result.drop_reasons}); the samples are kept as {ref}: re-pair "
                f"them with `realign-data pairs --from-samples {ref} --set pairs.min_margin=0` (or "
                "pairs.allow_truncated=true), or sample more (generation.num_samples, a higher temperature)"
            )
        return write_pairs(self.store, self.config, result, {**inputs, "samples": result.samples_version.ref}, models)


def pairs_from_samples(store: Store, ref: str, sets: list[str], dataset: str | None = None) -> BuildResult:
    """Rebuild pairs from the samples version ``ref`` under its build's config with ``pairs.*`` overrides, and
    write them as a new version of the build's dataset (or ``dataset``): nothing is generated or scored again."""
    for item in sets:
        key = item.partition("=")[0].strip()
        if not key.startswith("pairs."):
            raise InputError(
                f"--set {item!r}: --from-samples rebuilds pairs only; set pairs.* (the samples fix generation, "
                "scoring and revision)"
            )
    version, results, origin, template = read_samples(store, ref)
    record = version.record
    config = load_config(BuildConfig, sets=sets, options={"dataset": dataset}, base=record["config"])
    result = BuildResult(None, results, stats=dict(record["stats"]), origin=origin)
    result.failures = result.stats.pop("failed_requests", {})
    result.stats["computed"] = {}  # nothing is generated or scored again
    wanted = {"revision", "revision_direct"} & set(config.pairs.types)
    if wanted and not any(item.revisions for item in results):
        raise InputError(
            f"{version.ref} holds no revisions (its build made pairs.types={record['config']['pairs']['types']}); "
            f"{', '.join(sorted(wanted))} pairs need them: rebuild with those types, or leave them out"
        )
    make_pairs(result, config.pairs, template)
    if not result.rows:
        raise InputError(f"{version.ref}: no pairs survived the pair rules ({result.drop_reasons})")
    inputs = {**{k: record["inputs"][k] for k in ("prompts", "run_dir")}, "samples": version.ref}
    write_pairs(store, config, result, inputs, record["models"])
    result.samples_version = version
    return result
