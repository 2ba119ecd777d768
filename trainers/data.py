"""Training inputs: stored versions or pair files, checked against the pair contract before training starts."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from realign_data.errors import InputError
from realign_data.models import sha256_file
from realign_data.schema import PAIR_TYPES
from realign_data.store import Store
from trainers.config import DatasetInput

TRAINING_COLUMNS = ("prompt", "chosen", "rejected")
REQUIRED = (*TRAINING_COLUMNS, "pair_type", "prompt_id")


def _files_of(ref: str, store: Store) -> tuple[list[Path], dict[str, Any]]:
    """The Parquet/JSONL files behind a reference and their provenance."""
    path = Path(ref).expanduser()
    if path.exists():
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*"))
                       if p.suffix in (".parquet", ".jsonl"))
        if not files:
            raise InputError(f"{ref}: no .parquet or .jsonl files")
        return files, {"ref": ref, "files": {str(f): sha256_file(f) for f in files}}
    version = store.resolve(ref)
    return version.files, {"ref": version.ref, "manifest_sha256": sha256_file(version.path / "manifest.json"),
                           "files": {f["path"]: f["sha256"] for f in version.manifest["files"]},
                           "models": version.manifest.get("models", {})}


def _load(files: list[Path], ref: str) -> datasets.Dataset:
    kind = "parquet" if files[0].suffix == ".parquet" else "json"
    if kind == "parquet" and sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0 or \
            kind == "json" and not any(f.read_bytes().strip() for f in files):
        raise InputError(f"{ref}: no rows")
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as exc:  # datasets raises many types for unreadable files; the reason is in the message
        raise InputError(f"{ref}: cannot read as {kind} ({str(exc).splitlines()[0]})") from None


def resample(dataset: datasets.Dataset, factor: float, seed: int) -> datasets.Dataset:
    """Each row appears ``factor`` times in expectation: whole copies, plus a seeded sample for the fraction."""
    if factor == 1.0 or len(dataset) == 0:
        return dataset
    whole, fraction = int(math.floor(factor)), factor - math.floor(factor)
    extra = sorted(random.Random(seed).sample(range(len(dataset)), round(fraction * len(dataset))))
    indices = [i for _ in range(whole) for i in range(len(dataset))] + extra
    return dataset.select(indices)


def load_training_pairs(inputs: list[DatasetInput], pair_types: list[str], store: Store, seed: int,
                        type_weights: dict[str, float] | None = None) -> tuple[datasets.Dataset, list[dict]]:
    """Concatenate the inputs' rows of ``pair_types``, weighted; refuse bad data with the reason."""
    if not inputs:
        raise InputError("no training data: pass --dataset NAME@vN (repeatable) or `datasets:` in the manifest")
    parts, provenance = [], []
    for index, item in enumerate(inputs):
        files, info = _files_of(item.ref, store)
        data = _load(files, item.ref)
        missing = [c for c in REQUIRED if c not in data.column_names]
        if missing:
            raise InputError(f"{item.ref}: missing column(s) {', '.join(missing)}; a pair dataset needs "
                             f"{', '.join(REQUIRED)}")
        if len(data) == 0:
            raise InputError(f"{item.ref}: no rows")
        counts = Counter(data["pair_type"])
        unknown = sorted(set(counts) - set(PAIR_TYPES))
        if unknown:
            raise InputError(f"{item.ref}: unknown pair_type value(s) {', '.join(map(str, unknown))}")
        wanted = data.filter(lambda row: row["pair_type"] in pair_types)
        if len(wanted) == 0:
            found = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
            raise InputError(f"{item.ref}: no {' or '.join(pair_types)} pairs to train on (it has {found})")
        wanted = resample(wanted.select_columns([*TRAINING_COLUMNS, "pair_type", "prompt_id"]), item.weight,
                          seed + index)
        parts.append(wanted)
        provenance.append({**info, "weight": item.weight, "rows": dict(sorted(counts.items())),
                           "used_rows": len(wanted)})
    combined = datasets.concatenate_datasets(parts)
    for pair_type, weight in (type_weights or {}).items():
        chosen = combined.filter(lambda row, t=pair_type: row["pair_type"] == t)
        others = combined.filter(lambda row, t=pair_type: row["pair_type"] != t)
        combined = datasets.concatenate_datasets([others, resample(chosen, weight, seed)])
    if len(combined) == 0:
        raise InputError("no training pairs left after weighting (is revision_weight 0 with only revision pairs?)")
    return combined, provenance


def held_out_split(dataset: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset,
                                                                                    datasets.Dataset | None]:
    """Split by prompt (never the same prompt on both sides): about ``fraction`` of prompts go to eval."""
    if fraction <= 0:
        return dataset.shuffle(seed=seed), None
    prompts = sorted(set(dataset["prompt_id"]), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    if len(prompts) < 2:
        raise InputError(f"held-out split needs at least 2 prompts, found {len(prompts)}; set eval_fraction=0")
    held = set(prompts[:max(1, round(fraction * len(prompts)))])
    train = dataset.filter(lambda row: row["prompt_id"] not in held).shuffle(seed=seed)
    return train, dataset.filter(lambda row: row["prompt_id"] in held)


def truncation_report(data: datasets.Dataset, tokenizer, max_length: int) -> dict[str, int]:
    """How many pairs exceed ``max_length`` tokens; refuses data where every prompt alone is too long."""
    fully = partly = 0
    shortest = None
    for row in data:
        prompt = len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"])
        longest = max(len(tokenizer(m[0]["content"], add_special_tokens=False)["input_ids"])
                      for m in (row["chosen"], row["rejected"]))
        shortest = prompt if shortest is None else min(shortest, prompt)
        fully += prompt >= max_length
        partly += prompt < max_length < prompt + longest
    if data.num_rows and fully == data.num_rows:
        raise InputError(f"every training prompt is at least max_length={max_length} tokens (shortest: {shortest});"
                         " raise max_length, or the responses would be cut away entirely")
    return {"pairs": data.num_rows, "prompt_over_max_length": fully, "response_truncated": partly}
