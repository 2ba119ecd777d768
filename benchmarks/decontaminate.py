"""Scan 1,000,000 synthetic training prompts against 2,000 benchmark prompts for shared word 8-grams.

Prints realign's Decontaminator.scan beside the plain alternative, the pure-Python set lookup that open-r1's
decontamination script does (every benchmark 8-gram in a set, then each prompt's 8-grams looked up in it, stopping
at the first hit), both on the same sample of the prompts (warm-up, then the median of alternating repeats; the
plain side is too slow to repeat on all of them), as a ratio plain / realign; then realign alone on every prompt
for the acceptance: <= 60 s and <= 2 GiB peak RSS on a 2-core machine. Peak RSS is the process's, sampled during
the full scan and as ru_maxrss at the end (the 1M prompts themselves included).

The benchmark prompts are AlpacaEval's 805, Arena-Hard v0.1's 500 and the first 695 of Arena-Hard v2.0 from
../shared/data when present, else 2,000 synthetic ones. Training prompts are seeded: 10-120 words (log-normal,
median 45) drawn Zipf-like from a 30,000-word vocabulary whose frequent ranks are mostly the benchmark's own
words (so most windows have to be hashed and looked up, as with real prompts), plus planted benchmark prompts
(verbatim, re-cased, re-spaced, embedded in a longer request), every 1,000th prompt.

    python benchmarks/decontaminate.py [--prompts 1000000] [--sample 200000] [--repeats 3] [--json]
"""

from __future__ import annotations

import resource
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import arguments, compare, finish

from realign_data.decontaminate import DEFAULT_NGRAM, KNOWN, Decontaminator, Reference, load_reference

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
VOCABULARY = 30_000
PLANT_EVERY = 1_000


def benchmark_prompts(seed: int = 1) -> tuple[list[Reference], str]:
    """2,000 benchmark prompts: the real ones from ../shared/data when present, else synthetic."""
    alpaca = SHARED / "alpaca_eval" / "reference_outputs_gpt4_1106_preview.json"
    v01 = SHARED / "arena_hard" / "arena-hard-v0.1" / "question.jsonl"
    v2 = SHARED / "arena_hard" / "arena-hard-v2.0" / "question.jsonl"
    if alpaca.is_file() and v01.is_file() and v2.is_file():
        first, second, third = (
            load_reference(f"{name}={path}") for name, path in zip(KNOWN, (alpaca, v01, v2), strict=True)
        )
        third = Reference(third.name, third.items[:695], third.source)
        references = [first, second, third]
        return references, "alpaca_eval 805 + arena-hard-v0.1 500 + arena-hard-v2.0 695 (../shared/data)"
    rng = np.random.default_rng(seed)  # words drawn uniformly: benchmark prompts are specific, not boilerplate
    words = np.array([f"w{i}" for i in range(VOCABULARY)])
    texts = [" ".join(words[rng.integers(0, VOCABULARY, length)]) for length in rng.integers(3, 120, 2000)]
    return [Reference("synthetic", [(str(i), t) for i, t in enumerate(texts)], {"synthetic": seed})], "synthetic"


def vocabulary(references: list[Reference], seed: int) -> pa.Array:
    """30,000 words by Zipf rank: two ranks in three are benchmark words by their frequency there, one in three is a
    word no benchmark has."""
    counts = Counter(w for ref in references for _, text in ref.items for w in text.lower().split())
    own = [w for w, _ in counts.most_common(VOCABULARY * 2 // 3)]
    rng = np.random.default_rng(seed)
    filler = iter(f"{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), 7))}" for _ in range(VOCABULARY))
    own_words = iter(own)
    ranked = [next(filler) if rank % 3 == 2 else next(own_words, None) or next(filler) for rank in range(VOCABULARY)]
    return pa.array(ranked)


def training_prompts(references: list[Reference], count: int, seed: int = 0) -> tuple[list[str], dict[int, tuple]]:
    """``count`` seeded synthetic prompts and the planted ones: index -> (benchmark, item id, variant)."""
    rng = np.random.default_rng(seed)
    words = vocabulary(references, seed)
    weights = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.05
    cumulative = np.cumsum(weights / weights.sum())
    prompts: list[str] = []
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        lengths = np.clip(np.rint(rng.lognormal(np.log(45), 0.55, n)), 10, 120).astype(np.int32)
        ids = np.searchsorted(cumulative, rng.random(int(lengths.sum())))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(ids)))
        prompts.extend(pc.binary_join(lists, " ").to_pylist())
    items = [(ref.name, item_id, text) for ref in references for item_id, text in ref.items]
    order = rng.permutation(len(items))
    planted = {}
    variants = ("verbatim", "recased", "respaced", "embedded")
    for number, index in enumerate(range(PLANT_EVERY // 2, count, PLANT_EVERY)):
        name, item_id, text = items[order[number % len(items)]]
        variant = variants[number % len(variants)]
        if variant == "recased":
            text = text.upper()
        elif variant == "respaced":
            text = "\t".join(text.split()).replace("\t", "  \n", 3)
        elif variant == "embedded":
            text = f"Please help me with this: {text} Thanks!"
        prompts[index] = text
        planted[index] = (name, item_id, variant)
    return prompts, planted


def plain_scan(references: list[Reference], prompts: list[str], ngram: int) -> list[int]:
    """What open-r1's decontamination does, in plain Python: a set of the benchmarks' word n-grams, then each
    prompt's n-grams looked up until the first hit."""
    grams = set()
    for reference in references:
        for _, text in reference.items:
            words = text.lower().split()
            grams.update(" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    found = []
    for index, text in enumerate(prompts):
        words = text.lower().split()
        for i in range(len(words) - ngram + 1):
            if " ".join(words[i : i + ngram]) in grams:
                found.append(index)
                break
    return found


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


class PeakRss:
    """The peak resident set size while the block runs, sampled every 5 ms from /proc/self/statm."""

    def __enter__(self) -> PeakRss:
        self.peak, self.running = current_rss(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, current_rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, current_rss())


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_000_000, help="synthetic training prompts")
    parser.add_argument("--sample", type=int, default=200_000, help="prompts both sides scan for the ratio")
    parser.add_argument("--ngram", type=int, default=DEFAULT_NGRAM)
    args = parser.parse_args()
    references, origin = benchmark_prompts()
    total_items = sum(len(ref.items) for ref in references)
    start = time.perf_counter()
    prompts, planted = training_prompts(references, args.prompts)
    generated = time.perf_counter() - start
    words = sum(len(p.split()) for p in prompts[:100_000]) / min(len(prompts), 100_000)
    print(
        f"benchmark prompts: {total_items:,} ({origin}); training prompts: {len(prompts):,}, about {words:.0f} words "
        f"each, {len(planted):,} planted (generated in {generated:.1f} s)"
    )
    setup = time.perf_counter()
    scanner = Decontaminator(references, args.ngram)
    setup = time.perf_counter() - setup
    sample = prompts[: min(args.sample, len(prompts))]
    timed = compare(
        {"realign": lambda: scanner.scan(sample), "plain": lambda: plain_scan(references, sample, args.ngram)},
        args.repeats,
    )
    ratio = timed["plain"] / timed["realign"]
    print(
        f"sample of {len(sample):,}: realign {timed['realign']:.2f} s, plain Python n-gram set {timed['plain']:.2f} s, "
        f"ratio plain/realign {ratio:.1f}x (median of {args.repeats}, after a warm-up)"
    )
    before_scan = current_rss() / 2**30
    full_times = []
    for _ in range(args.repeats):
        with PeakRss() as rss:
            begin = time.perf_counter()
            found = scanner.scan(prompts)
            full_times.append(time.perf_counter() - begin)
    full = float(np.median(full_times))
    peak_scan = rss.peak / 2**30
    peak_process = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    hit = sum(
        1
        for index, (name, item_id, _) in planted.items()
        if any(m.benchmark == name and m.item_id == item_id for m in found.get(index, ()))
    )
    by_variant = Counter(variant for _, _, variant in planted.values())
    missed = Counter(
        variant
        for index, (name, item_id, variant) in planted.items()
        if not any(m.benchmark == name and m.item_id == item_id for m in found.get(index, ()))
    )
    plain_found = set(plain_scan(references, sample, args.ngram))
    realign_sample = set(i for i in found if i < len(sample))
    plain_planted = sum(1 for index in planted if index < len(sample) and index in plain_found)
    sample_planted = sum(1 for index in planted if index < len(sample))
    kinds = Counter(m.kind for matches in found.values() for m in matches)
    rate = len(prompts) / full
    print(
        f"all {len(prompts):,}: realign {full:.1f} s (median of {args.repeats}; set-up {setup:.2f} s), "
        f"{rate:,.0f} prompts/s; {len(found):,} prompts matched ({dict(kinds)} matches); "
        f"planted found {hit:,} / {len(planted):,} (missed by variant: {dict(missed) or 'none'})"
    )
    print(
        f"sample agreement: plain flags {len(plain_found):,}, realign {len(realign_sample):,}; plain-only "
        f"{len(plain_found - realign_sample)}; planted found by plain {plain_planted} / {sample_planted} "
        "(short benchmark prompts have no 8-gram)"
    )
    print(
        f"peak RSS: {peak_scan:.2f} GiB during the full scan ({before_scan:.2f} GiB before it, the prompts held), "
        f"{peak_process:.2f} GiB for the whole process"
    )
    limits = full <= 60 and max(peak_scan, peak_process) <= 2
    print(f"acceptance (<= 60 s and <= 2 GiB for {len(prompts):,} prompts): {'holds' if limits else 'FAILS'}")
    finish(
        {
            "prompts": len(prompts),
            "benchmark_prompts": total_items,
            "benchmark_origin": origin,
            "ngram": args.ngram,
            "planted": len(planted),
            "planted_by_variant": dict(by_variant),
            "planted_found": hit,
            "sample": len(sample),
            "sample_realign_s": timed["realign"],
            "sample_plain_s": timed["plain"],
            "ratio_plain_over_realign": ratio,
            "sample_plain_flagged": len(plain_found),
            "sample_realign_flagged": len(realign_sample),
            "sample_plain_only": len(plain_found - realign_sample),
            "sample_planted_found_plain": plain_planted,
            "sample_planted": sample_planted,
            "setup_s": setup,
            "scan_s": full,
            "scan_runs_s": full_times,
            "prompts_per_s": rate,
            "matched_prompts": len(found),
            "matches_by_kind": dict(kinds),
            "rss_before_scan_gib": before_scan,
            "peak_rss_scan_gib": peak_scan,
            "peak_rss_process_gib": peak_process,
            "acceptance_holds": limits,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
