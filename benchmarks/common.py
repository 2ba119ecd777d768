"""Timing rules every benchmark follows: warm-up, alternating repeats, medians, ratios, and one JSON object."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: --repeats and --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (the median is reported)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of every figure")
    return parser


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def compare(sides: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each side; one untimed warm-up run each, then the sides alternate in each repeat (the
    first side changes every round) so drift in the machine's state hits them alike."""
    if warmup:
        for work in sides.values():
            work()
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(seconds(sides[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def tiny_model(folder: Path, hidden: int = 64, layers: int = 2, reward: bool = False) -> Path:
    """A random-weight Llama with SmolLM2's tokenizer and chat template (no download), saved under ``folder``:
    a causal LM, or with ``reward`` a one-logit sequence classifier (a reward model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from realign_data.models import DEFAULT_MODEL, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    (LlamaForSequenceClassification if reward else LlamaForCausalLM)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bench_pairs(store, prompts: int, **settings):
    """A small pairs version for the training benchmarks: ``prompts`` built-in prompts through the embedded
    recipe with 96 new tokens, on_policy and revision pairs; ``settings`` override more (dotted keys)."""
    from realign_data.build import Build
    from realign_data.config import BuildConfig, load_config

    overrides = {
        "dataset": "bench",
        "prompts.limit": prompts,
        "generation.max_new_tokens": 96,
        "pairs.types": ["on_policy", "revision"],
        **settings,
    }
    build = Build(load_config(BuildConfig, None, [], overrides), store)
    return build.commit(build.run())


def plain_generate(engine, conversations, batch_size: int, params) -> int:
    """What a careful user writes with transformers: batches of ``batch_size`` (in the given order) through
    ``model.generate`` with its own sampling; returns the tokens produced. ``engine`` lends its model and tokenizer."""
    import torch

    tokenizer, model = engine.tokenizer, engine.model
    tokenizer.padding_side = "left"
    sampling = (
        {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        if params.temperature > 0
        else {"do_sample": False}
    )
    produced = 0
    with torch.inference_mode():
        for start in range(0, len(conversations), batch_size):
            batch = tokenizer.apply_chat_template(
                conversations[start : start + batch_size],
                add_generation_prompt=True,
                padding=True,
                return_tensors="pt",
                return_dict=True,
            ).to(model.device)
            output = model.generate(
                **batch, max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
            produced += int((output[:, batch["input_ids"].shape[1] :] != tokenizer.pad_token_id).sum())
    return produced


def finish(figures: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, allow_nan=False))


def plain_chat_calls(url: str, prompts: list[str], concurrency: int, max_tokens: int = 32) -> list[str]:
    """What a careful user writes without realign: one AsyncOpenAI client, a semaphore, asyncio.gather."""
    import asyncio

    import openai

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=30)
        limit = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> str:
            async with limit:
                response = await client.chat.completions.create(
                    model="bench",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens,
                    temperature=0.7,
                )
                return response.choices[0].message.content

        try:
            return await asyncio.gather(*(one(prompt) for prompt in prompts))
        finally:
            await client.close()

    return asyncio.run(run())


class LatencyServer:
    """The local stand-in OpenAI server (tests/openai_server.py) in its own process, with a fixed latency."""

    def __init__(self, latency: float):
        import subprocess
        import sys
        from pathlib import Path

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.openai_server", "--latency", str(latency)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.process.stdout.readline().strip()

    def __enter__(self) -> LatencyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait()
