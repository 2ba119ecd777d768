"""The `hf` engine against a plain transformers `generate` loop on the same 32 mixed-length prompts.

Same model, batch size, max new tokens and greedy decoding. The baseline batches prompts in their given order;
the engine groups them by length (less padding). Prints both times and the ratio engine / baseline
(target <= 1.10; below 1.0 thanks to length grouping).

    python benchmarks/engine_overhead.py [--model smollm2-135m-instruct] [--batch-size 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import time

import torch

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


@torch.inference_mode()
def plain_generate(engine: HFEngine, conversations, batch_size: int, max_new_tokens: int) -> int:
    tokenizer, model = engine.tokenizer, engine.model
    tokenizer.padding_side = "left"
    produced = 0
    for start in range(0, len(conversations), batch_size):
        batch = tokenizer.apply_chat_template(conversations[start:start + batch_size], add_generation_prompt=True,
                                              padding=True, return_tensors="pt", return_dict=True).to(model.device)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        produced += int((output[:, batch["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum())
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = HFEngine(resolve_model(args.model), batch_size=args.batch_size)
    conversations = mixed_length_prompts(args.prompts)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    requests = [GenerationRequest(str(i), c, params) for i, c in enumerate(conversations)]
    lengths = [len(engine.encode(c)) for c in conversations]
    print(f"model {args.model}  prompts {len(conversations)} (tokens {min(lengths)}-{max(lengths)})  "
          f"batch {args.batch_size}  max_new_tokens {args.max_new_tokens}  threads {torch.get_num_threads()}")
    plain_generate(engine, conversations[:args.batch_size], args.batch_size, 4)  # warm-up
    start = time.perf_counter()
    plain_tokens = plain_generate(engine, conversations, args.batch_size, args.max_new_tokens)
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    results = list(engine.generate(requests))
    ours = time.perf_counter() - start
    engine_tokens = sum(c.completion_tokens for r in results for c in r.completions)
    print(f"plain generate loop: {baseline:.2f} s ({plain_tokens} tokens)")
    print(f"hf engine:           {ours:.2f} s ({engine_tokens} tokens)")
    print(f"ratio engine/plain:  {ours / baseline:.3f}   target <= 1.10")


if __name__ == "__main__":
    main()
