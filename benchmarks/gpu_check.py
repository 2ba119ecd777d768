"""A prepared check for a single-GPU machine without network: the GPU paths run, agree, and how fast they are.

Random-weight models built from a config with SmolLM2's tokenizer (the embedded GGUF; no download):
(a) generation with the hf engine on the GPU, in this process and through one Ray engine actor holding the GPU
    (a local Ray cluster): samples/s, tokens/s and the Ray/local ratio;
(b) reward-model scoring on the GPU, in-process (transformers) and through one Ray scorer actor: items/s, the
    ratio, and the largest score difference between the two (identical batches: expected 0);
(c) where vLLM is installed: the vllm engine against (a)'s hf one, and vLLM's pooling runner for the reward model
    against transformers (items/s and the largest score difference; vLLM's HF-parity tolerance is about 2e-3 in
    float32).
In-process engines and scorers are made once, outside the timing, as a build loads its models once; a Ray side
starts its actor inside every timed run, as every Ray stage does.
Each side: a warm-up, then the median of alternating repeats (benchmarks/common.py). About 2-4 minutes on an H100.

    python benchmarks/gpu_check.py [--prompts 256] [--samples 4] [--tokens 128] [--items 2048] [--repeats 3] [--json]
    python benchmarks/gpu_check.py --device cpu --prompts 8 --items 32 --tokens 16   # a dry run without a GPU
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from common import arguments, compare, finish, tiny_model

from realign_data.config import EngineConfig, ExecutionConfig, ModelConfig, ScoringConfig
from realign_data.engines import GenerationRequest, SamplingParams, create_engine
from realign_data.execution import RayExecutor
from realign_data.scoring import ScoreItem, make_scorer


def generation(policy: Path, device: str, prompts: int, samples: int, tokens: int, repeats: int) -> dict:
    """The policy's requests through engines made once (a build loads its models once): the hf engine here, one
    Ray engine actor (whose start, as in every Ray stage, is inside the timing) and, where installed, vLLM."""
    params = SamplingParams(n=samples, temperature=1.0, top_p=0.95, max_new_tokens=tokens)
    requests = [
        GenerationRequest(f"p{i}", [{"role": "user", "content": f"Write a short note about topic {i}."}], params)
        for i in range(prompts)
    ]
    model = ModelConfig(spec=str(policy), device=device, dtype="float32")
    hf = EngineConfig(kind="hf", batch_size=64)
    gpus = 1.0 if device.startswith("cuda") else 0.0
    executor = RayExecutor(ExecutionConfig(backend="ray", workers=1, gpus_per_worker=gpus, chunk=64))
    engines = {"local": create_engine(hf, model), "ray": executor.engine(hf, model)}
    if has_vllm(device):
        engines["vllm"] = create_engine(EngineConfig(kind="vllm", gpu_memory_utilization=0.3), model)
    produced: dict[str, int] = {}

    def side(name: str):
        def run() -> None:
            results = list(engines[name].generate(requests, lambda n: None))
            produced[name] = sum(c.completion_tokens for r in results for c in r.completions)

        return run

    times = compare({name: side(name) for name in engines}, repeats)
    figures: dict[str, float | int] = {"samples": prompts * samples, "max_new_tokens": tokens}
    for name, spent in times.items():
        figures |= {f"{name}_s": spent, f"{name}_samples_per_s": prompts * samples / spent}
        figures[f"{name}_tokens_per_s"] = produced[name] / spent
    figures["ray_over_local_throughput"] = times["local"] / times["ray"]
    if "vllm" in times:
        figures["vllm_over_hf_throughput"] = times["local"] / times["vllm"]
    return figures


def has_vllm(device: str) -> bool:
    return importlib.util.find_spec("vllm") is not None and device.startswith("cuda")


def reward_scoring(reward: Path, device: str, items: int, repeats: int) -> dict:
    scoring = ScoringConfig(method="reward_model", model=ModelConfig(spec=str(reward)), batch_size=32)
    model = ModelConfig(spec=str(reward), device=device, dtype="float32")
    work = [
        ScoreItem(
            f"i{i}", [{"role": "user", "content": f"Question {i}: explain item {i % 97}."}], "An answer. " * (i % 40)
        )
        for i in range(items)
    ]
    local_scorer = make_scorer(scoring, (EngineConfig(kind="hf"), model), None, create_engine)
    gpus = 1.0 if device.startswith("cuda") else 0.0
    executor = RayExecutor(ExecutionConfig(backend="ray", workers=1, gpus_per_worker=gpus, chunk=256))
    remote_scorer = executor.scorer(scoring, (EngineConfig(kind="hf"), model), None)
    scores: dict[str, dict[str, float]] = {}

    def side(name: str, scorer):
        def run() -> None:
            scores[name] = {s.key: s.score for s in scorer.score(work)}

        return run

    sides = {"local": side("local", local_scorer), "ray": side("ray", remote_scorer)}
    if has_vllm(device):
        vllm = EngineConfig(kind="vllm", gpu_memory_utilization=0.3)
        sides["vllm"] = side("vllm", make_scorer(scoring, (vllm, model), None, create_engine))
    times = compare(sides, repeats)
    figures: dict[str, float | int] = {"items": items}
    for name, spent in times.items():
        figures[f"{name}_items_per_s"] = items / spent
        if name != "local":
            figures[f"{name}_max_abs_diff"] = max(abs(scores[name][k] - scores["local"][k]) for k in scores["local"])
    figures["ray_over_local_throughput"] = times["local"] / times["ray"]
    if "vllm" in times:
        figures["vllm_over_hf_throughput"] = times["local"] / times["vllm"]
    return figures


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--items", type=int, default=2048)
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --device cpu for a dry run")
    folder = Path(tempfile.mkdtemp())
    policy = tiny_model(folder / "policy", hidden=512, layers=8)
    reward = tiny_model(folder / "reward", hidden=512, layers=8, reward=True)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    figures: dict[str, object] = {"device": where, "vllm": importlib.util.find_spec("vllm") is not None}
    g = generation(policy, args.device, args.prompts, args.samples, args.tokens, args.repeats)
    figures["generation"] = g
    line = (
        f"(a) generate on {where}, {g['samples']} samples of <= {g['max_new_tokens']} tokens: hf "
        f"{g['local_tokens_per_s']:,.0f} tok/s, through a Ray actor {g['ray_tokens_per_s']:,.0f} tok/s "
        f"({g['ray_over_local_throughput']:.2f}x)"
    )
    if "vllm_tokens_per_s" in g:
        line += f", vllm {g['vllm_tokens_per_s']:,.0f} tok/s ({g['vllm_over_hf_throughput']:.2f}x hf)"
    print(line)
    r = reward_scoring(reward, args.device, args.items, args.repeats)
    figures["reward"] = r
    line = (
        f"(b) reward scoring, {r['items']} items: transformers {r['local_items_per_s']:,.0f}/s, through a Ray actor "
        f"{r['ray_items_per_s']:,.0f}/s ({r['ray_over_local_throughput']:.2f}x; max |diff| {r['ray_max_abs_diff']:.1e})"
    )
    if "vllm_items_per_s" in r:
        line += (
            f"; (c) vllm pooling {r['vllm_items_per_s']:,.0f}/s ({r['vllm_over_hf_throughput']:.2f}x, "
            f"max |diff| {r['vllm_max_abs_diff']:.1e})"
        )
    print(line)
    finish(figures, args.json)


if __name__ == "__main__":
    main()
