"""The `hf` engine against the plain transformers `generate` loop a careful user writes, greedy and sampled.

Same model, prompts, batch size and max new tokens. Two plain loops: prompts sorted by token length before
batching (what a careful user does to save padding: the fair baseline) and prompts in their given order (naive).
Sampled mode: the plain loops use transformers' own sampling (`do_sample=True` with the same temperature and
top-p); the engine draws from per-row seeded generators so a sample does not depend on its batch. Each side is
warmed up, the sides alternate in every repeat, and the median of the repeats is reported.
Target: the engine at most 1.05x the sorted plain loop in both modes.

    python benchmarks/engine_overhead.py [--model smollm2-135m-instruct] [--repeats 3] [--json]
"""

from __future__ import annotations

import torch
from common import arguments, compare, finish, plain_generate

from realign_data.config import PromptsConfig
from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.hf import HFEngine
from realign_data.models import resolve_model
from realign_data.prompts import load_prompts


def mixed_length_prompts(count: int) -> list[list[dict[str, str]]]:
    """Built-in prompts, every third one lengthened with context, so lengths vary several-fold."""
    base = load_prompts(PromptsConfig(source="builtin", limit=count, seed=1)).prompts
    padding = " Please answer carefully, give one example, and explain each step of your reasoning."
    return [[{"role": "user", "content": p.instruction + padding * (3 * (i % 3))}] for i, p in enumerate(base)]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = HFEngine(resolve_model(args.model), batch_size=args.batch_size)
    conversations = mixed_length_prompts(args.prompts)
    lengths = [len(engine.encode(c)) for c in conversations]
    by_length = [conversations[i] for i in sorted(range(len(conversations)), key=lengths.__getitem__)]
    print(
        f"model {args.model}  prompts {len(conversations)} (tokens {min(lengths)}-{max(lengths)})  "
        f"batch {args.batch_size}  max_new_tokens {args.max_new_tokens}  threads {torch.get_num_threads()}  "
        f"median of {args.repeats}"
    )
    figures: dict[str, float] = {}
    for mode, temperature in (("greedy", 0.0), ("sampled", 0.8)):
        params = SamplingParams(n=1, temperature=temperature, top_p=0.95, max_new_tokens=args.max_new_tokens)
        requests = [GenerationRequest(str(i), c, params) for i, c in enumerate(conversations)]
        times = compare(
            {
                "engine": lambda requests=requests: list(engine.generate(requests)),
                "plain_sorted": lambda params=params: plain_generate(engine, by_length, args.batch_size, params),
                "plain_given_order": lambda params=params: plain_generate(
                    engine, conversations, args.batch_size, params
                ),
            },
            args.repeats,
        )
        for side, seconds in times.items():
            figures[f"{mode}_{side}_s"] = seconds
        figures[f"{mode}_ratio_vs_sorted"] = times["engine"] / times["plain_sorted"]
        figures[f"{mode}_ratio_vs_given_order"] = times["engine"] / times["plain_given_order"]
        print(
            f"{mode:8s} engine {times['engine']:.2f} s, plain sorted {times['plain_sorted']:.2f} s, plain in "
            f"given order {times['plain_given_order']:.2f} s"
        )
        print(
            f"{'':8s} ratio vs sorted {figures[f'{mode}_ratio_vs_sorted']:.3f} (target <= 1.05), "
            f"vs given order {figures[f'{mode}_ratio_vs_given_order']:.3f}"
        )
    finish(figures, args.json)


if __name__ == "__main__":
    main()
