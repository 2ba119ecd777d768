"""Judge calls through any generation engine, cached on disk and counted.

Every answer is stored in a SQLite file as soon as it arrives, keyed by (judge, messages, sampling settings), so a
rerun makes zero calls for what was judged and an interrupted run loses nothing it already paid for. Retries on
server faults are the engine's. A failure is never cached, and a cached answer that its caller cannot use (no
parseable verdict) is never replayed: the caller names it ``fresh`` and it is asked anew. How a benchmark handles
an unparseable answer within a run (Arena-Hard v0.1 continues the conversation, AlpacaEval and v2.0 do nothing) is
the benchmark's code, not this cache's.

Token log-probabilities (``top_logprobs > 0``) are cached with the text. Cache files written before they existed
are migrated in place (two columns added); their rows keep their keys and stay valid.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.base import TokenLogprob
from realign_data.files import content_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] | None = None


def _dump_logprobs(logprobs: tuple[TokenLogprob, ...] | None) -> str | None:
    if logprobs is None:
        return None
    return json.dumps([[t.token, t.logprob, [list(alt) for alt in t.top]] for t in logprobs], ensure_ascii=False)


def _load_logprobs(text: str | None) -> tuple[TokenLogprob, ...] | None:
    if text is None:
        return None
    return tuple(
        TokenLogprob(token, float(logprob), tuple((alt, float(value)) for alt, value in top))
        for token, logprob, top in json.loads(text)
    )


class CachedJudge:
    def __init__(self, engine, judge_id: str, cache_path: Path, prices: tuple[float, float] | None = None):
        self.engine, self.judge_id = engine, judge_id
        self.prices = prices  # USD per million prompt and completion tokens, when known
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(cache_path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER)"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(answers)")}
        for column in ("finish_reason", "logprobs"):  # added after the first cache files were written
            if column not in columns:
                try:
                    self.db.execute(f"ALTER TABLE answers ADD COLUMN {column} TEXT")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise
        self.db.commit()
        self.counts: Counter = Counter()
        log.info("judge %s, answers cached in %s", judge_id, cache_path)

    def key(self, messages: list[dict], params: SamplingParams) -> str:
        """The cache key; the same as before log-probabilities existed for a request that asks none."""
        extra = {
            name: getattr(params, name)
            for name, off in (("top_logprobs", 0), ("top_p", 1.0))
            if getattr(params, name) != off
        }
        return content_key(
            self.judge_id, messages, params.max_new_tokens, float(params.temperature), 0, *([extra] if extra else [])
        )

    def lookup(self, messages: list[dict], params: SamplingParams) -> Answer | None:
        """The cached answer to exactly this request, if any (no call, nothing counted)."""
        row = self.db.execute(
            "SELECT text, prompt_tokens, completion_tokens, finish_reason, logprobs FROM answers WHERE key = ?",
            (self.key(messages, params),),
        ).fetchone()
        if row is None:
            return None
        return Answer(row[0], row[1] or 0, row[2] or 0, row[3] or "stop", _load_logprobs(row[4]))

    def ask(
        self,
        items: dict[str, list[dict]],
        params: SamplingParams,
        fresh: set[str] | frozenset = frozenset(),
        usable: Callable[[Answer], bool] | None = None,
    ) -> dict[str, Answer | None]:
        """One answer per item (None when the call failed for good): from the cache unless the item is in
        ``fresh`` or its cached answer is not ``usable`` (then it is judged anew, and counted so); the rest asked
        at once. An answer lacking the log-probabilities it was asked for is returned but not cached (its caller
        refuses it)."""
        answers: dict[str, Answer | None] = {}
        for name, messages in items.items():
            if name in fresh or (answer := self.lookup(messages, params)) is None:
                continue
            if usable is None or usable(answer):
                answers[name] = answer
                self.counts["cached"] += 1
            else:
                self.counts["judged_anew"] += 1
        requests = [
            GenerationRequest(name, messages, params) for name, messages in items.items() if name not in answers
        ]
        for result in self.engine.generate(requests) if requests else ():
            self.counts["calls"] += 1
            if result.error is not None or not result.completions:
                self.counts["failed"] += 1
                answers[result.request_id] = None
                continue
            completion = result.completions[0]
            self.counts["prompt_tokens"] += completion.prompt_tokens
            self.counts["completion_tokens"] += completion.completion_tokens
            answer = Answer(
                completion.text,
                completion.prompt_tokens,
                completion.completion_tokens,
                completion.finish_reason,
                completion.logprobs,
            )
            if params.top_logprobs == 0 or answer.logprobs is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO answers (key, text, prompt_tokens, completion_tokens, "
                    "finish_reason, logprobs) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        self.key(items[result.request_id], params),
                        answer.text,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        answer.finish_reason,
                        _dump_logprobs(answer.logprobs),
                    ),
                )
                self.db.commit()
            answers[result.request_id] = answer
        return answers

    def usage(self) -> dict[str, object]:
        """Calls, cache hits, tokens and failures, with the engine's retries by reason (e.g. RateLimitError)."""
        usage = dict(self.counts)
        stats = getattr(self.engine, "stats", None) or {}  # OpenAIEngine counts "retry:<exception name>"
        retries = {
            key.split(":", 1)[1]: int(count)
            for key, count in sorted(stats.items())
            if key.startswith("retry:") and count
        }
        usage["retries"] = retries
        usage["retries_total"] = sum(retries.values())
        if self.prices is not None:
            usage["cost_usd"] = round(
                (self.counts["prompt_tokens"] * self.prices[0] + self.counts["completion_tokens"] * self.prices[1])
                / 1e6,
                6,
            )
        return usage
