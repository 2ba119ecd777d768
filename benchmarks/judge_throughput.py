"""Judged items per second through the cached judge against a local server with a fixed latency.

Runs pairwise-judge-style calls at concurrency 1, 8 and 32 with a fresh cache for every timed run (so every item
is a real call) beside the plain alternative (one AsyncOpenAI client, a semaphore, asyncio.gather, no cache):
warm-up, alternating repeats, medians; prints the ratio judge / plain, then reruns once from the cache to show
that a cached rerun makes no calls.

    python benchmarks/judge_throughput.py [--latency 0.5] [--waves 8] [--repeats 3] [--json]
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

from common import LatencyServer, arguments, compare, finish, plain_chat_calls

from evaluation.judging import CachedJudge
from realign_data.engines import SamplingParams
from realign_data.engines.openai_engine import OpenAIEngine

PARAMS = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=32)  # as a judge config sets them


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--waves", type=int, default=8, help="items per concurrency slot")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    fresh = itertools.count()
    with LatencyServer(args.latency) as server, tempfile.TemporaryDirectory() as scratch:

        def judged(items: dict, concurrency: int) -> CachedJudge:
            engine = OpenAIEngine("judge", [server.url], concurrency=concurrency, timeout_s=30)
            judge = CachedJudge(engine, "judge", Path(scratch) / f"cache-{next(fresh)}.sqlite")
            judge.ask(items, PARAMS)
            return judge

        for concurrency in (1, 8, 32):
            count = concurrency * args.waves
            prompts = [f"Compare the two answers to question {i}." for i in range(count)]
            items = {f"q{i}": [{"role": "user", "content": p}] for i, p in enumerate(prompts)}
            times = compare(
                {
                    "judge": lambda items=items, c=concurrency: judged(items, c),
                    "plain": lambda prompts=prompts, c=concurrency: plain_chat_calls(server.url, prompts, c),
                },
                args.repeats,
            )
            ratio = times["judge"] / times["plain"]
            figures.update(
                {
                    f"c{concurrency}_judge_s": times["judge"],
                    f"c{concurrency}_plain_s": times["plain"],
                    f"c{concurrency}_ratio": ratio,
                }
            )
            print(
                f"concurrency {concurrency:2d}: {count} items, judge {times['judge']:.2f} s "
                f"({count / times['judge']:.1f} items/s), plain {times['plain']:.2f} s, ratio {ratio:.3f}"
            )
            judge = judged(items, concurrency)
            calls = judge.counts["calls"]
            start = time.perf_counter()
            judge.ask(items, PARAMS)
            rerun = time.perf_counter() - start
            figures[f"c{concurrency}_cached_rerun_s"] = rerun
            print(f"{'':15s}rerun from the cache: {judge.counts['calls'] - calls} new calls, {rerun:.3f} s")
    finish(figures, args.json)


if __name__ == "__main__":
    main()
