"""Write 1,000,000 synthetic pairs as one store version, then time three catalog queries.

Prints the store write (contract checks, zstd shards, fsync, sha256, catalog) beside plain `pyarrow.parquet`
writing the same batches to one zstd file (both sides generate the same synthetic batches), and each query through
the store's sandbox beside plain DuckDB on that file, as ratios (warm-up, then the median of alternating repeats),
and peak RSS. Targets on a 2-core machine: write <= 60 s, each query <= 2 s, peak RSS <= 3 GiB.

    python benchmarks/store_scale.py [--rows 1000000] [--repeats 3] [--dir /tmp/realign-bench] [--json]
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import arguments, compare, finish

from realign_data.schema import MESSAGE, PAIR_SCHEMA, PAIR_TYPES
from realign_data.store import Store

WORDS = np.array(
    "the model answer prompt revise draft better clear step reason because data small align policy "
    "score judge reward sample token list write code function value explain simple result".split()
)


def text_pool(rng: np.random.Generator, size: int, mean_words: int) -> pa.Array:
    lengths = rng.poisson(mean_words, size) + 1
    return pa.array([" ".join(rng.choice(WORDS, n)) for n in lengths])


def conversation(roles: str, contents: pa.Array) -> pa.Array:
    offsets = pa.array(np.arange(len(contents) + 1, dtype=np.int32))
    messages = pa.StructArray.from_arrays([pa.array([roles] * len(contents)), contents], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(offsets, messages)


def synthetic_batches(rows: int, batch_rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts, answers = text_pool(rng, 20_000, 25), text_pool(rng, 50_000, 90)
    params = json.dumps({"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 512})
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        index = np.arange(start, start + n)
        prompt_index = index // 3  # about three pairs per prompt
        chosen_score = rng.normal(7, 1.5, n)
        rejected_score = chosen_score - rng.exponential(1.5, n)
        pair_type = np.array(PAIR_TYPES)[rng.choice(4, n, p=[0.5, 0.3, 0.1, 0.1])]
        yield pa.table(
            {
                "prompt": conversation("user", prompts.take(pa.array(prompt_index % len(prompts)))),
                "chosen": conversation("assistant", answers.take(pa.array(rng.integers(0, len(answers), n)))),
                "rejected": conversation("assistant", answers.take(pa.array(rng.integers(0, len(answers), n)))),
                "pair_id": pa.array([f"pair-{i:010d}" for i in index]),
                "prompt_id": pa.array([f"prompt-{i:010d}" for i in prompt_index]),
                "pair_type": pa.array(pair_type),
                "chosen_score": chosen_score,
                "rejected_score": rejected_score,
                "margin": chosen_score - rejected_score,
                "chosen_source": pa.array(["sample"] * n),
                "rejected_source": pa.array(["sample"] * n),
                "policy_model": pa.array(["bench-policy"] * n),
                "reviser_model": pa.array(["bench-reviser"] * n),
                "scorer": pa.array(["reward:bench"] * n),
                "sample_params": pa.array([params] * n),
            },
            schema=PAIR_SCHEMA,
        )


QUERIES = {
    "count by pair_type": "SELECT pair_type, count(*) FROM {pairs} GROUP BY 1 ORDER BY 1",
    "margin quantiles": "SELECT pair_type, quantile_cont(margin, [0.1, 0.5, 0.9]) FROM {pairs} GROUP BY 1 ORDER BY 1",
    "join on prompt_id": "SELECT count(*), avg(r.margin - o.margin) FROM {pairs} o JOIN {pairs} r USING (prompt_id) "
    "WHERE o.pair_type = 'on_policy' AND r.pair_type = 'revision'",
}


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="realign-bench-", dir=args.dir))
    runs = iter(range(10**6))

    def plain(rows: int):
        path = scratch / f"plain-{next(runs)}.parquet"
        with pq.ParquetWriter(path, PAIR_SCHEMA, compression="zstd") as writer:
            for batch in synthetic_batches(rows, args.batch_rows):
                writer.write_table(batch, row_group_size=65_536)
        return path

    def store(rows: int):
        target = Store(scratch / f"store-{next(runs)}")
        return target, target.write_version("bench", synthetic_batches(rows, args.batch_rows))

    try:
        plain(args.batch_rows), store(args.batch_rows)  # warm-up: imports, caches, the first catalog
        write = compare(
            {"store": lambda: store(args.rows), "plain": lambda: plain(args.rows)}, args.repeats, warmup=False
        )
        target, version = store(args.rows)
        baseline = plain(args.rows)
        size = sum(f["bytes"] for f in version.record["files"])
        figures = {
            "rows": args.rows,
            "shards": len(version.files),
            "bytes": size,
            "write_s": write["store"],
            "write_plain_s": write["plain"],
            "write_ratio": write["store"] / write["plain"],
        }
        print(
            f"rows: {args.rows:,}  shards: {len(version.files)}  bytes: {size:,}  "
            f"(median of {args.repeats}, after a warm-up)"
        )
        print(
            f"write: store {write['store']:.1f} s, plain pyarrow zstd {write['plain']:.1f} s, "
            f"ratio {figures['write_ratio']:.2f} (target: <= 60 s)"
        )
        for name, sql in QUERIES.items():
            timed = compare(
                {
                    "store": lambda sql=sql: target.query(sql.format(pairs="pairs")),
                    "plain": lambda sql=sql: duckdb.sql(sql.format(pairs=f"read_parquet('{baseline}')")).fetchall(),
                },
                max(args.repeats, 5),
            )
            key = name.replace(" ", "_")
            figures.update(
                {
                    f"query_{key}_s": timed["store"],
                    f"query_{key}_plain_s": timed["plain"],
                    f"query_{key}_ratio": timed["store"] / timed["plain"],
                }
            )
            print(
                f"query {name}: store {timed['store']:.3f} s, plain duckdb on the file {timed['plain']:.3f} s, "
                f"ratio {timed['store'] / timed['plain']:.2f} (target: <= 2 s)"
            )
        figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak RSS: {figures['peak_rss_gib']:.2f} GiB (target: <= 3 GiB)")
        finish(figures, args.json)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
