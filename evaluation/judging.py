"""Judge calls through any generation engine, cached on disk and counted.

Every (judge, messages, attempt) answer is stored in a SQLite file as soon as it arrives, so a rerun makes zero
calls for what was judged and an interrupted run loses nothing it already paid for. Retries on server faults are
the engine's; an answer whose verdict cannot be parsed is re-asked as a new attempt (sampled) up to
``max_attempts``. A failure is never replayed: an item whose every cached attempt is unparseable is judged anew,
from the first attempt, on a rerun (a failed call is not cached at all).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.runs import content_key

Parse = Callable[[str], object | None]  # judge text -> verdict, or None when unparseable


class CachedJudge:
    def __init__(self, engine, judge_id: str, cache_path: Path, max_new_tokens: int = 1024,
                 temperature: float = 0.0, max_attempts: int = 2, prices: tuple[float, float] | None = None):
        self.engine, self.judge_id = engine, judge_id
        self.max_new_tokens, self.temperature, self.max_attempts = max_new_tokens, temperature, max_attempts
        self.prices = prices  # USD per million prompt and completion tokens, when known
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(cache_path)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT, "
                        "prompt_tokens INTEGER, completion_tokens INTEGER)")
        self.counts: Counter = Counter()

    def _key(self, messages: list[dict], attempt: int) -> str:
        return content_key(self.judge_id, messages, self.max_new_tokens, self.temperature, attempt)

    def _cached(self, key: str) -> str | None:
        row = self.db.execute("SELECT text FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _failed_before(self, messages: list[dict], parse: Parse) -> bool:
        """Every attempt is cached and none of them parses: the item failed in an earlier run."""
        texts = [self._cached(self._key(messages, attempt)) for attempt in range(self.max_attempts)]
        return all(text is not None and parse(text) is None for text in texts)

    def _ask(self, items: dict[str, list[dict]], attempt: int, anew: set[str]) -> dict[str, str | None]:
        keys = {name: self._key(messages, attempt) for name, messages in items.items()}
        answers: dict[str, str | None] = {}
        for name, key in keys.items():
            if name not in anew and (text := self._cached(key)) is not None:
                answers[name] = text
                self.counts["cached"] += 1
        params = SamplingParams(n=1, temperature=self.temperature if attempt == 0 else 0.7, top_p=1.0,
                                max_new_tokens=self.max_new_tokens, seed=attempt)
        requests = [GenerationRequest(name, messages, params) for name, messages in items.items()
                    if name not in answers]
        for result in self.engine.generate(requests):
            self.counts["calls"] += 1
            if result.error is not None or not result.completions:
                self.counts["failed"] += 1
                answers[result.request_id] = None
                continue
            completion = result.completions[0]
            self.counts["prompt_tokens"] += completion.prompt_tokens
            self.counts["completion_tokens"] += completion.completion_tokens
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                            (keys[result.request_id], completion.text, completion.prompt_tokens,
                             completion.completion_tokens))
            self.db.commit()
            answers[result.request_id] = completion.text
        return answers

    def judge(self, items: dict[str, list[dict]], parse: Parse) -> dict[str, tuple[object | None, str]]:
        """(verdict, judge text) per item; items still unparseable after every attempt get verdict None."""
        results: dict[str, tuple[object | None, str]] = {}
        pending = dict(items)
        anew = {name for name, messages in items.items() if self._failed_before(messages, parse)}
        self.counts["judged_anew"] += len(anew)
        for attempt in range(self.max_attempts):
            for name, text in self._ask(pending, attempt, anew).items():
                verdict = parse(text) if text is not None else None
                if verdict is not None or attempt == self.max_attempts - 1:
                    results[name] = (verdict, text or "")
                    pending.pop(name)
            if not pending:
                break
        self.counts["unparseable"] += sum(verdict is None for verdict, _ in results.values())
        return results

    def usage(self) -> dict[str, object]:
        """Calls, cache hits, tokens and failures, with the engine's retries by reason (e.g. RateLimitError)."""
        usage = dict(self.counts)
        stats = getattr(self.engine, "stats", None) or {}  # OpenAIEngine counts "retry:<exception name>"
        retries = {key.split(":", 1)[1]: int(count) for key, count in sorted(stats.items())
                   if key.startswith("retry:") and count}
        usage["retries"] = retries
        usage["retries_total"] = sum(retries.values())
        if self.prices is not None:
            usage["cost_usd"] = round((self.counts["prompt_tokens"] * self.prices[0]
                                       + self.counts["completion_tokens"] * self.prices[1]) / 1e6, 6)
        return usage
