"""Throughput of the OpenAI-compatible engine against a local server with a fixed latency per request.

The server runs in its own process. At each concurrency C the engine (retries, round-robin, n handling, result
streaming) is timed beside the plain alternative a careful user writes (one AsyncOpenAI client, a semaphore,
asyncio.gather) on the same requests: warm-up, alternating repeats, medians. Prints the ratio engine / plain
(target <= 1.05) and the share of the ideal C / latency.

    python benchmarks/openai_engine.py [--latency 0.5] [--concurrency 1 8 32 64] [--repeats 3] [--json]
"""

from __future__ import annotations

from common import LatencyServer, arguments, compare, finish, plain_chat_calls

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.openai_engine import OpenAIEngine


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the server waits per request")
    parser.add_argument("--waves", type=int, default=8, help="requests per concurrency slot")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    params = SamplingParams(n=1, temperature=0.7, max_new_tokens=32)
    figures: dict[str, float] = {}
    with LatencyServer(args.latency) as server:
        for concurrency in args.concurrency:
            count = concurrency * args.waves
            prompts = [f"q{i}" for i in range(count)]
            requests = [
                GenerationRequest(f"r{i}", [{"role": "user", "content": p}], params) for i, p in enumerate(prompts)
            ]
            engine = OpenAIEngine("bench", [server.url], concurrency=concurrency, timeout_s=30)
            times = compare(
                {
                    "engine": lambda engine=engine, requests=requests: list(engine.generate(requests)),
                    "plain": lambda prompts=prompts, c=concurrency: plain_chat_calls(server.url, prompts, c),
                },
                args.repeats,
            )
            ratio, ideal = times["engine"] / times["plain"], count * args.latency / concurrency  # ideal seconds
            figures.update(
                {
                    f"c{concurrency}_engine_s": times["engine"],
                    f"c{concurrency}_plain_s": times["plain"],
                    f"c{concurrency}_ratio": ratio,
                    f"c{concurrency}_engine_share_of_ideal": ideal / times["engine"],
                }
            )
            print(
                f"concurrency {concurrency:3d}: {count} requests, engine {times['engine']:.2f} s, plain "
                f"{times['plain']:.2f} s, ratio {ratio:.3f} (target <= 1.05); engine at "
                f"{100 * ideal / times['engine']:5.1f} % of ideal; failed {engine.stats['failed']}"
            )
    finish(figures, args.json)


if __name__ == "__main__":
    main()
