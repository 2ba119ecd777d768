"""CPU generation on the demo's workload, side by side: realign's hf engine, plain transformers and llama.cpp.

Workload: built-in chat prompts x K samples (8 x 4 by default), temperature 0.8, top-p 0.95, up to --tokens new
tokens, stop at EOS, --threads threads; the embedded SmolLM2-135M-Instruct: its Q4_1 GGUF for llama.cpp, its
de-quantized weights for transformers. Sides, each at batch (or parallel sequences) 8 and 32, sampled and greedy:
- realign's hf engine as it runs by default (continuous batching, realign_data/engines/decoding.py) in float32
  and bfloat16 (where the CPU has native bf16, and there the default); sampled, also through `model.generate` batch by
  batch (the path of sliding-window models, and all of realign's before the decoder);
- the plain transformers loop (prompts sorted by length, `generate` with its own sampling), float32 and bfloat16;
- llama.cpp batched decoding through llama-cpp-python, the K samples of a prompt sharing its prefill (KV copied),
  one seeded sampler chain per row, continuous batching, with one KV stream per sequence and with one unified KV
  buffer (where llama-cpp-python is installed: `pip install llama-cpp-python`, a source build of about 4 minutes
  on 2 cores);
- llama-cpp-python's bundled server (`python -m llama_cpp.server`) through realign's openai engine at concurrency
  8 (where installed with its [server] extra; --skip-server leaves it out: it serves one request at a time).
Tokens/s of each side, its ratio to the best llama.cpp figure of the same mode and size, and how many of a
request's samples come out the same alone as in the batch (what resuming a killed build row-exactly relies on).
Warm-up, alternating order, median of the repeats (benchmarks/common.py).

    python benchmarks/cpu_generation.py [--prompts 8] [--samples 4] [--tokens 128] [--sizes 8,32]
        [--modes sampled,greedy] [--skip-server] [--repeats 3] [--json]
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from functools import partial

import torch
from common import arguments, compare, finish, plain_generate

from realign_data.config import PromptsConfig
from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.base import row_seed
from realign_data.engines.hf import HFEngine
from realign_data.engines.openai_engine import OpenAIEngine
from realign_data.models import (
    DEFAULT_MODEL,
    alias_gguf,
    load_tokenizer,
    native_bf16,
    prompt_token_ids,
    resolve_model,
)
from realign_data.prompts import load_prompts


class LlamaBatched:
    """llama.cpp's best batched use from Python: continuous batching over ``slots`` sequences, a prompt prefilled
    once and its KV copied to its K sample sequences, one seeded sampler chain (temperature, top-p, dist) per row."""

    def __init__(self, threads: int, slots: int, unified: bool):
        import llama_cpp as llama

        self.llama, self.slots = llama, slots
        self.quiet = llama.llama_log_callback(lambda level, text, data: None)  # kept: llama.cpp holds a pointer
        llama.llama_log_set(self.quiet, None)
        llama.llama_backend_init()
        model_params = llama.llama_model_default_params()
        if hasattr(model_params, "use_extra_bufts"):  # the AMX buffer type of Q4_1 crashes some CPUs
            model_params.use_extra_bufts = False
        self.model = llama.llama_model_load_from_file(str(alias_gguf(DEFAULT_MODEL)).encode(), model_params)
        self.vocab = llama.llama_model_get_vocab(self.model)
        params = llama.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 32768, 2048, 512, slots
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = unified
        self.context = llama.llama_init_from_model(self.model, params)
        self.memory = llama.llama_get_memory(self.context)
        self.batch = llama.llama_batch_init(2048, 0, 1)

    def _sampler(self, seed: int, params: SamplingParams):
        llama = self.llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if params.temperature == 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
            return chain
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(params.temperature))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
        return chain

    def _put(self, n: int, token: int, position: int, sequence: int, logits: bool) -> None:
        batch = self.batch
        batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, position, 1, logits
        batch.seq_id[n][0] = sequence

    def generate(self, jobs: list[tuple[str, list[int]]], params: SamplingParams) -> dict[tuple[str, int], list[int]]:
        """Every job's ``params.n`` samples: {(request id, sample index): tokens}."""
        llama, k = self.llama, params.n
        llama.llama_memory_clear(self.memory, True)
        free, active, queue, done = list(range(self.slots)), {}, list(jobs), {}
        while queue or active:
            n, admitted = 0, []
            while queue and len(free) >= k and n + len(queue[0][1]) <= 2048 - self.slots:
                request_id, ids = queue.pop(0)
                sequences = [free.pop(0) for _ in range(k)]
                for position, token in enumerate(ids):
                    self._put(n, token, position, sequences[0], position == len(ids) - 1)
                    n += 1
                admitted.append((request_id, len(ids), sequences, n - 1))
            stepping = []
            for sequence, row in active.items():
                self._put(n, row["tokens"][-1], row["position"], sequence, True)
                stepping.append((sequence, n))
                n += 1
            self.batch.n_tokens = n
            if llama.llama_decode(self.context, self.batch) != 0:
                raise RuntimeError("llama_decode failed")
            for request_id, length, sequences, index in admitted:
                for sample, sequence in enumerate(sequences):
                    if sample:
                        llama.llama_memory_seq_cp(self.memory, sequences[0], sequence, -1, -1)
                    sampler = self._sampler(row_seed(params.seed, request_id, sample), params)
                    token = llama.llama_sampler_sample(sampler, self.context, index)
                    active[sequence] = {"id": (request_id, sample), "sampler": sampler, "tokens": [token]}
                    active[sequence]["position"] = length
            for sequence, index in stepping:
                row = active[sequence]
                row["tokens"].append(llama.llama_sampler_sample(row["sampler"], self.context, index))
                row["position"] += 1
            for sequence in list(active):
                row = active[sequence]
                if (
                    llama.llama_vocab_is_eog(self.vocab, row["tokens"][-1])
                    or len(row["tokens"]) >= params.max_new_tokens
                ):
                    done[row["id"]] = row["tokens"]
                    llama.llama_sampler_free(row["sampler"])
                    llama.llama_memory_seq_rm(self.memory, sequence, -1, -1)
                    del active[sequence]
                    free.append(sequence)
        return done


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bundled_server(threads: int):
    """llama-cpp-python's server on the GGUF, started here; returns (process, base url) once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(alias_gguf(DEFAULT_MODEL))]
    command += ["--n_threads", str(threads), "--n_ctx", "8192", "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("llama_cpp.server did not start")


def same_alone(generate, requests) -> str:
    """How many samples of the first two requests are the same generated alone as in the whole batch."""
    together = generate(requests)
    same = total = 0
    for request in requests[:2]:
        alone = generate([request])
        for key, tokens in alone.items():
            same += tokens == together[key]
            total += 1
    return f"{same}/{total}"


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="8,32", help="batch sizes (parallel sequences), comma-separated")
    parser.add_argument("--modes", default="sampled,greedy", help="sampled (temperature 0.8, top-p 0.95), greedy")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(size) for size in args.sizes.split(",")]
    model = resolve_model(DEFAULT_MODEL)
    tokenizer = load_tokenizer(model)
    prompts = load_prompts(PromptsConfig(limit=args.prompts)).prompts
    modes = {
        "sampled": SamplingParams(n=args.samples, temperature=0.8, top_p=0.95, max_new_tokens=args.tokens, seed=0),
        "greedy": SamplingParams(n=args.samples, temperature=0.0, max_new_tokens=args.tokens),
    }
    modes = {name: modes[name] for name in args.modes.split(",")}
    dtypes = ["float32", "bfloat16"] if native_bf16() else ["float32"]
    figures: dict[str, object] = {
        "threads": args.threads,
        "native_bf16": native_bf16(),
        "samples": len(prompts) * args.samples,
    }
    tokens: dict[str, int] = {}
    sides, meta = {}, {}  # meta: side -> (mode, size)

    def add(name: str, mode: str, size: int, run) -> None:
        def side() -> None:
            tokens[name] = run()

        sides[name], meta[name] = side, (mode, size)

    def engine_tokens(engine, requests) -> int:
        return sum(c.completion_tokens for r in engine.generate(requests) for c in r.completions)

    def texts(engine, subset):
        return {(r.request_id, i): c.text for r in engine.generate(subset) for i, c in enumerate(r.completions)}

    for mode, params in modes.items():
        requests = [GenerationRequest(p.prompt_id, p.messages, params) for p in prompts]
        for dtype in dtypes:
            for size in sizes:
                # realign: the hf engine as it runs by default (continuous batching); generate_path: the same
                # engine through model.generate batch by batch (the path of sliding-window models, and realign's
                # before its decoder); plain: a length-sorted model.generate loop with its own sampling
                engine = HFEngine(model, batch_size=size, dtype=dtype, device="cpu")
                add(f"realign_{mode}_{dtype}_{size}", mode, size, partial(engine_tokens, engine, requests))
                if mode == "sampled":
                    fixed = HFEngine(model, batch_size=size, dtype=dtype, device="cpu")
                    fixed.decoder = None
                    add(f"generate_path_{mode}_{dtype}_{size}", mode, size, partial(engine_tokens, fixed, requests))
                    if size == max(sizes):
                        figures[f"realign_{mode}_{dtype}_{size}_same_alone"] = same_alone(
                            partial(texts, engine), requests
                        )
                by_length = sorted((p.messages for p in prompts for _ in range(args.samples)), key=engine.encode)
                plain = partial(plain_generate, engine, by_length, size, params)
                add(f"plain_{mode}_{dtype}_{size}", mode, size, plain)
        if importlib.util.find_spec("llama_cpp") is not None:
            jobs = [(p.prompt_id, prompt_token_ids(tokenizer, p.messages)) for p in prompts]
            for unified in (False, True):
                for size in sizes:
                    name = f"llamacpp_{'unified' if unified else 'streams'}_{mode}_{size}"
                    batched = LlamaBatched(args.threads, size, unified)

                    def run(batched=batched, params=params, jobs=jobs) -> int:
                        return sum(len(t) for t in batched.generate(jobs, params).values())

                    add(name, mode, size, run)
                    if size == max(sizes) and mode == "sampled":
                        figures[f"{name}_same_alone"] = same_alone(
                            lambda subset, batched=batched, params=params: batched.generate(
                                [(r.request_id, prompt_token_ids(tokenizer, r.messages)) for r in subset], params
                            ),
                            requests,
                        )
    server = None
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp sides left out: pip install 'llama-cpp-python[server]' (a source build of 4-6 minutes)")
    elif importlib.util.find_spec("llama_cpp.server") is not None and not args.skip_server and "sampled" in modes:
        server, url = bundled_server(args.threads)
        client = OpenAIEngine("smollm2", [url], concurrency=8)
        requests = [GenerationRequest(p.prompt_id, p.messages, modes["sampled"]) for p in prompts]
        add("llamacpp_server_sampled_8", "sampled", 8, partial(engine_tokens, client, requests))
    try:
        times = compare(sides, args.repeats)
    finally:
        if server is not None:
            server.kill()
    rates = {name: tokens[name] / seconds for name, seconds in times.items()}
    for name, rate in rates.items():
        figures[f"{name}_tokens_per_s"] = rate
        line = f"{name:<34} {rate:6.1f} tok/s"
        rivals = [r for n, r in rates.items() if n.startswith("llamacpp") and meta[n] == meta[name]]
        if rivals:  # the best llama.cpp figure of the same mode and size
            figures[f"{name}_over_best_llamacpp"] = rate / max(rivals)
            line += f" {rate / max(rivals):5.2f}x llama.cpp"
        if f"{name}_same_alone" in figures:
            line += f" alone: {figures[f'{name}_same_alone']}"
        print(line)
    finish(figures, args.json)


if __name__ == "__main__":
    main()
