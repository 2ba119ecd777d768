"""The Ray backend's cost and gain on this machine, against the local backend in the same script.

(a) Orchestration: 100,000 generation requests through the Ray backend's actor pool (RayExecutor.map, the path
    every Ray stage takes: pickling, Ray Data batches, results streamed back) and through the local loop, against
    an engine that answers at once, with every result written to a real stage cache in both. Items/s for each, the
    ratio, and the share of the Ray side's time spent writing the cache. Target: Ray >= 2,000 items/s.
(b) Generation: the generate stage of a build on a tiny random Llama (SmolLM2's tokenizer), 1 and 2
    single-threaded Ray workers against the local backend (this process's torch threads): throughput ratios.

Warm-up, then the median of alternating repeats (benchmarks/common.py).

    python benchmarks/scale_out.py [--requests 100000] [--chunk 256] [--prompts 76] [--repeats 3] [--json]
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from common import arguments, compare, finish, tiny_model

from realign_data.build import GENERATIONS
from realign_data.config import BuildConfig, ExecutionConfig, load_config
from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.base import Completion, GenerationResult
from realign_data.execution import RayExecutor
from realign_data.runs import StageCache


class InstantEngine:
    """Answers every request at once with one fixed completion."""

    stats: Counter = Counter()

    def generate(self, requests, progress=None):
        for request in requests:
            yield GenerationResult(request.request_id, [Completion("ok", 1, 1, "stop")])


class InstantWorker:
    """The Ray side of InstantEngine: the actor call shape of realign's engine actors."""

    def __init__(self):
        self.engine = InstantEngine()

    def __call__(self, batch):
        import json
        import pickle

        requests = [request for blob in batch["item"] for request in pickle.loads(blob)]
        return {"item": [pickle.dumps(list(self.engine.generate(requests)))], "stats": [json.dumps({})]}


def cache_rows(results, cache: StageCache) -> float:
    """Write each result to the stage cache; returns the seconds spent doing so."""
    spent = 0.0
    for result in results:
        start = time.perf_counter()
        cache.add(
            {
                "key": result.request_id,
                "prompt_id": result.request_id,
                "index": 0,
                "text": result.completions[0].text,
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "finish_reason": "stop",
            }
        )
        spent += time.perf_counter() - start
    start = time.perf_counter()
    cache.flush()
    return spent + time.perf_counter() - start


def orchestration(count: int, chunk: int, repeats: int) -> dict[str, float]:
    params = SamplingParams(n=1, max_new_tokens=1)
    requests = [GenerationRequest(f"r{i}", [{"role": "user", "content": f"q{i}"}], params) for i in range(count)]
    executor = RayExecutor(ExecutionConfig(backend="ray", workers=2, chunk=chunk))
    cache_share: list[float] = []

    def local() -> None:
        with tempfile.TemporaryDirectory() as folder:
            cache_rows(InstantEngine().generate(requests), StageCache(Path(folder), GENERATIONS))

    def ray_side() -> None:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            groups = [[r] for r in requests]
            results = executor.map(groups, InstantWorker, (), Counter(), chunk, lambda r: r.request_id)
            spent = cache_rows(results, StageCache(Path(folder), GENERATIONS))
            cache_share.append(spent / (time.perf_counter() - start))

    times = compare({"local": local, "ray": ray_side}, repeats)
    return {
        "requests": count,
        "chunk": chunk,
        "local_s": times["local"],
        "ray_s": times["ray"],
        "local_items_per_s": count / times["local"],
        "ray_items_per_s": count / times["ray"],
        "ray_over_local_time": times["ray"] / times["local"],
        "ray_cache_share": sorted(cache_share)[len(cache_share) // 2],
    }


def generation(prompts: int, repeats: int) -> dict[str, float]:
    from realign_data.build import Build
    from realign_data.store import Store

    folder = Path(tempfile.mkdtemp())
    model = tiny_model(folder / "tiny")
    base = [f"policy.spec={model}", f"prompts.limit={prompts}", "generation.num_samples=2"]
    base += ["generation.max_new_tokens=32", "generation.temperature=1.0"]

    def side(*sets: str):
        def run() -> None:
            config = load_config(BuildConfig, None, [*base, *sets])
            Build(config, Store(Path(tempfile.mkdtemp(dir=folder))), fresh=True).run("generate")

        return run

    times = compare(
        {
            "local": side(),
            "ray_1": side("execution.backend=ray", "execution.workers=1", "execution.chunk=16"),
            "ray_2": side("execution.backend=ray", "execution.workers=2", "execution.chunk=16"),
        },
        repeats,
    )
    samples = prompts * 2
    return {
        "prompts": prompts,
        "samples": samples,
        **{f"{name}_s": seconds for name, seconds in times.items()},
        **{f"{name}_samples_per_s": samples / seconds for name, seconds in times.items()},
        "ray_1_over_local_throughput": times["local"] / times["ray_1"],
        "ray_2_over_local_throughput": times["local"] / times["ray_2"],
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=76)
    args = parser.parse_args()
    figures: dict[str, object] = {"orchestration": orchestration(args.requests, args.chunk, args.repeats)}
    o = figures["orchestration"]
    assert isinstance(o, dict)
    print(
        f"(a) {o['requests']:,} instant requests, chunk {o['chunk']}: local {o['local_items_per_s']:,.0f} items/s, "
        f"ray {o['ray_items_per_s']:,.0f} items/s ({o['ray_over_local_time']:.2f}x the local time; cache writes "
        f"{o['ray_cache_share']:.0%} of the Ray side's time); target >= 2,000 items/s: "
        f"{'holds' if o['ray_items_per_s'] >= 2000 else 'missed'}"
    )
    g = generation(args.prompts, args.repeats)
    figures["generation"] = g
    print(
        f"(b) generate, {g['samples']} samples of a tiny Llama: local {g['local_samples_per_s']:.1f}/s, ray 1 worker "
        f"{g['ray_1_samples_per_s']:.1f}/s ({g['ray_1_over_local_throughput']:.2f}x), 2 workers "
        f"{g['ray_2_samples_per_s']:.1f}/s ({g['ray_2_over_local_throughput']:.2f}x)"
    )
    finish(figures, args.json)


if __name__ == "__main__":
    main()
