"""Judged items per second through the cached judge against a local server with a fixed latency.

Runs Arena-Hard-style pairwise games at concurrency 1, 8 and 32 with a fresh cache each time (so every game is a
real call), prints items/s beside the ideal concurrency / latency, then reruns once to show a cached rerun makes
no calls.

    python benchmarks/judge_throughput.py [--latency 0.5] [--items 64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evaluation.judging import CachedJudge
from realign_data.engines.openai_engine import OpenAIEngine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--waves", type=int, default=8, help="items per concurrency slot")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--latency", str(args.latency)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for concurrency in (1, 8, 32):
                count = concurrency * args.waves
                items = {f"q{i}": [{"role": "system", "content": "Judge."},
                                   {"role": "user", "content": f"Compare answers to question {i}."}]
                         for i in range(count)}
                engine = OpenAIEngine("judge", [url], concurrency=concurrency, timeout_s=30)
                judge = CachedJudge(engine, "judge", Path(scratch) / f"cache-{concurrency}.sqlite",
                                    max_new_tokens=16, max_attempts=1)
                start = time.perf_counter()
                judge.judge(items, lambda text: text)
                elapsed = time.perf_counter() - start
                ideal = concurrency / args.latency
                rate = count / elapsed
                print(f"concurrency {concurrency:2d}: {count} items in {elapsed:.2f} s = {rate:6.1f} items/s; "
                      f"ideal {ideal:6.1f}; {100 * rate / ideal:5.1f} % of ideal")
                start = time.perf_counter()
                judge.judge(items, lambda text: text)
                print(f"               rerun from the cache: {judge.counts['calls']} calls in all "
                      f"({count} new), {time.perf_counter() - start:.3f} s")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
