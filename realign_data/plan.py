"""``realign-data build --plan``: what a build still has to compute, read from its config and stage caches.

Per stage: the requests (generation) or items (scoring) its cache does not hold yet, the tokens they can generate
at most, the time they should take at the throughput this store measured for the same worker (engine kind and
model, or scorer) on the same backend and host in earlier runs (``<store>/runs/throughput.jsonl``), and what they
cost at the stage engine's ``price`` (USD per million tokens). A stage after one that still has work depends on
responses not generated yet: its counts are upper bounds (``<=``), since some of those responses may come out
equal to ones already cached. Prompt tokens are counted at the ratio of tokens to characters measured for the
worker, or 4 characters per token where nothing was measured yet. No weights are loaded and nothing is written
to the store; models are resolved as a build resolves them (a Hub model may be downloaded, a GGUF converted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from realign_data.build import GENERATIONS, SCORES, STAGES, Build
from realign_data.config import EngineConfig
from realign_data.pairs import revision_prompt
from realign_data.runs import StageCache, read_throughput
from realign_data.scoring import JUDGE_MAX_NEW_TOKENS, ScoreItem, judge_messages
from realign_data.store import HOST

CHARS_PER_TOKEN = 4  # prompt characters per token where this store measured none for the worker
REVISION_TYPES = {"revision", "revision_direct", "reviser_train"}


@dataclass
class StagePlan:
    stage: str
    unit: str  # "requests" (generation; each asks for one or more completions) or "items" (scoring)
    needed: int  # what the config asks of the stage
    cached: int
    to_run: int
    exact: bool  # False: counted before the responses it depends on exist, so an upper bound
    new_tokens: int  # generated at most
    prompt_tokens: int  # estimated
    worker: str
    backend: str
    seconds: float | None  # None: no earlier run of this worker on this backend
    measured_from: int  # earlier stage runs the estimate comes from
    cost_usd: float | None  # None: the engine has no price

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Rate:
    """What earlier runs of the store measured for one worker on one backend: seconds per generated token
    (generation) or per item (scoring), tokens per completion, and prompt tokens per character."""

    def __init__(self, records: list[dict[str, Any]], worker: str, backend: str):
        mine = [r for r in records if (r.get("worker"), r.get("backend"), r.get("host")) == (worker, backend, HOST)]
        self.runs = len(mine)
        total = {field: sum(r.get(field, 0) or 0 for r in mine) for field in ("seconds", "units", "completion_tokens")}
        self.seconds, self.units, self.tokens = total["seconds"], total["units"], total["completion_tokens"]
        chars = sum(r.get("prompt_chars", 0) for r in mine if r.get("prompt_tokens"))
        tokens = sum(r.get("prompt_tokens", 0) for r in mine if r.get("prompt_chars"))
        self.tokens_per_char = tokens / chars if chars and tokens else 1 / CHARS_PER_TOKEN

    def generation_seconds(self, completions: int, max_new_tokens: int) -> float | None:
        if not (self.tokens and self.units):
            return None
        per_completion = min(max_new_tokens, self.tokens / self.units)  # the tokens a completion took, capped
        return completions * per_completion * self.seconds / self.tokens

    def scoring_seconds(self, items: int) -> float | None:
        return items * self.seconds / self.units if self.units else None


def _cost(engine: EngineConfig, prompt_tokens: int, new_tokens: int) -> float | None:
    if engine.price is None:
        return None
    return round((prompt_tokens * engine.price.input + new_tokens * engine.price.output) / 1e6, 4)


def _chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


class Planner:
    """The plan of ``build`` up to ``until`` from its config, its stage caches and the store's measurements."""

    def __init__(self, build: Build, until: str):
        self.build, self.until = build, until
        self.records = read_throughput(build.run_dir.parent)
        execution = build.config.execution
        self.backend = "local" if execution.backend == "local" else f"ray x{execution.workers}"

    def _cache(self, stage: str, schema) -> StageCache:
        """A stage's cache as the build would find it (empty under --fresh, which discards it first); read only."""
        cache = StageCache(self.build.run_dir / stage, schema)
        if self.build.fresh:
            cache.rows.clear()
        return cache

    def _stage(
        self,
        stage: str,
        engine: EngineConfig,
        worker: str,
        *,
        unit: str,
        needed: int,
        cached: int,
        to_run: int,
        exact: bool,
        new_tokens: int,
        prompt_chars: float,
        completions: int | None = None,  # generation stages: timed per generated token, scoring per item
        max_new_tokens: int = 0,
    ) -> StagePlan:
        rate = Rate(self.records, worker, self.backend)
        prompt_tokens = round(prompt_chars * rate.tokens_per_char)
        if completions is None:
            seconds = rate.scoring_seconds(to_run)
        else:
            seconds = rate.generation_seconds(completions, max_new_tokens)
        return StagePlan(
            stage,
            unit,
            needed,
            cached,
            to_run,
            exact,
            new_tokens,
            prompt_tokens,
            worker,
            self.backend,
            None if seconds is None else round(seconds, 3),
            rate.runs,
            _cost(engine, prompt_tokens, new_tokens),
        )

    def plan(self) -> list[StagePlan]:
        build, config = self.build, self.build.config
        prompts = build.load_prompts()
        build.check_models(self.until)
        by_id = {p.prompt_id: p for p in prompts.prompts}

        keys = build.sample_keys(prompts)
        generated = self._cache("generate", GENERATIONS)
        waiting = [p for p in prompts.prompts if not all(k in generated for k in keys[p.prompt_id])]
        params = build.sample_params()
        plans = [
            self._stage(
                "generate",
                config.engine,
                build.generator_id(config.engine, config.policy),
                unit="requests",
                needed=len(prompts.prompts),
                cached=len(prompts.prompts) - len(waiting),
                to_run=len(waiting),
                exact=True,
                new_tokens=len(waiting) * params.n * params.max_new_tokens,
                completions=len(waiting) * params.n,
                max_new_tokens=params.max_new_tokens,
                prompt_chars=sum(_chars(p.messages) for p in waiting),
            )
        ]
        if STAGES.index(self.until) < 1:
            return plans
        samples = {
            pid: [row for k in ks if (row := generated.get(k)) is not None] for pid, ks in keys.items()
        }  # the samples known now; the rest come from the generate stage
        complete = not waiting
        items = [ScoreItem("", by_id[pid].messages, s["text"]) for pid, rows in samples.items() for s in rows]
        references = [ScoreItem("", p.messages, p.reference) for p in prompts.prompts if p.reference]
        not_generated = len(keys) * params.n - len(items)
        average_prompt = sum(_chars(p.messages) for p in prompts.prompts) / max(1, len(prompts.prompts))
        plans.append(self._scoring("score", items + references, not_generated, average_prompt, params.max_new_tokens))
        if STAGES.index(self.until) < 2 or not set(config.pairs.types) & REVISION_TYPES:
            return plans

        drafts = build.revision_drafts(prompts, samples)  # by key: a prompt's equal drafts are revised once
        revised = self._cache("revise", GENERATIONS)
        per_prompt = min(config.revision.drafts_per_prompt, params.n)
        unknown = sum(max(0, per_prompt - len(samples[pid])) for pid in keys)  # drafts not generated yet
        known_missing = [(prompt, draft) for key, (prompt, _, draft) in drafts.items() if key not in revised]
        revision = build.revision_params()
        template = build.revision_template
        engine, model = build.reviser
        to_run = len(known_missing) + unknown
        plans.append(
            self._stage(
                "revise",
                engine,
                build.generator_id(engine, model),
                unit="requests",
                needed=len(drafts) + unknown,
                cached=len(drafts) - len(known_missing),
                to_run=to_run,
                exact=complete,
                new_tokens=to_run * revision.max_new_tokens,
                completions=to_run,
                max_new_tokens=revision.max_new_tokens,
                prompt_chars=sum(_chars(revision_prompt(template, p.messages, d["text"])) for p, d in known_missing)
                + unknown * (len(template.text) + average_prompt + params.max_new_tokens * CHARS_PER_TOKEN),
            )
        )
        revisions = [
            ScoreItem("", prompt.messages, row["text"])
            for key, (prompt, _, _) in drafts.items()
            if (row := revised.get(key)) is not None
        ]
        plans.append(self._scoring("score revisions", revisions, to_run, average_prompt, revision.max_new_tokens))
        return plans

    def _scoring(
        self, stage: str, known: list[ScoreItem], unknown: int, average_prompt: float, max_new_tokens: int
    ) -> StagePlan:
        """A scoring stage over the ``known`` items (responses at hand; equal ones are scored once) and ``unknown``
        more whose responses are not generated yet. A transformers scorer also rescores the cached batch-mates of
        a missing item, which the counts leave out."""
        build, scoring = self.build, self.build.config.scoring
        engine, _ = build.judge
        cache = self._cache("score", SCORES)
        distinct = {build.score_key(item.prompt, item.response): item for item in known}
        missing = [item for key, item in distinct.items() if key not in cache]
        to_run = len(missing) + unknown
        text_judge = scoring.method == "judge" and engine.kind != "hf"  # writes its rating, may be asked again
        asks = scoring.max_attempts if text_judge else 1
        if scoring.method == "reward_model":  # the conversation and the response
            chars = sum(_chars(item.prompt) + len(item.response) for item in missing)
            unknown_chars = average_prompt + max_new_tokens * CHARS_PER_TOKEN
        else:  # the judge template around the instruction and the response
            chars = sum(_chars(judge_messages(build.judge_template, item)) for item in missing)
            unknown_chars = len(build.judge_template.text) + average_prompt + max_new_tokens * CHARS_PER_TOKEN
        return self._stage(
            stage,
            engine,
            build.scorer_id(),
            unit="items",
            needed=len(distinct) + unknown,
            cached=len(distinct) - len(missing),
            to_run=to_run,
            exact=unknown == 0,
            new_tokens=to_run * JUDGE_MAX_NEW_TOKENS * asks if text_judge else 0,
            prompt_chars=round((chars + unknown * unknown_chars) * asks),
        )


def plan_build(build: Build, until: str = "pairs") -> list[StagePlan]:
    return Planner(build, until).plan()
