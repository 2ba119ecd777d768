"""Throughput of the OpenAI-compatible engine against a local server with a fixed latency per request.

The server runs in its own process. With concurrency C and latency L the ideal is C / L requests per second;
prints the measured rate and its share of the ideal for several concurrencies (target >= 90 %).

    python benchmarks/openai_engine.py [--latency 0.5] [--concurrency 1 8 32 64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.openai_engine import OpenAIEngine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the server waits per request")
    parser.add_argument("--waves", type=int, default=16, help="requests per concurrency slot")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    params = SamplingParams(n=1, temperature=0.7, max_new_tokens=32)
    server = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--latency", str(args.latency)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    try:
        for concurrency in args.concurrency:
            count = concurrency * args.waves
            requests = [GenerationRequest(f"r{i}", [{"role": "user", "content": f"q{i}"}], params)
                        for i in range(count)]
            engine = OpenAIEngine("bench", [url], concurrency=concurrency, timeout_s=30)
            start = time.perf_counter()
            results = list(engine.generate(requests))
            elapsed = time.perf_counter() - start
            failed = sum(r.error is not None for r in results)
            rate, ideal = count / elapsed, concurrency / args.latency
            print(f"concurrency {concurrency:3d}: {count} requests in {elapsed:.2f} s = {rate:7.1f} req/s; "
                  f"ideal {ideal:7.1f} req/s; {100 * rate / ideal:5.1f} % of ideal (target >= 90 %); failed {failed}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
