"""Training inputs: stored versions or pair files, checked against the pair contract before training starts."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from realign_data.errors import InputError
from realign_data.files import sha256_file
from realign_data.models import chat_template_sha256, prompt_token_ids, token_ids_sha256
from realign_data.schema import PAIR_TYPES
from realign_data.store import PAIRS, Store
from trainers.config import DatasetInput

TRAINING_COLUMNS = ("prompt", "chosen", "rejected")
REQUIRED = (*TRAINING_COLUMNS, "pair_type", "prompt_id")


def _files_of(ref: str, store: Store) -> tuple[list[Path], dict[str, Any]]:
    """The Parquet/JSONL files behind a reference and their provenance."""
    path = Path(ref).expanduser()
    if path.exists():
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.suffix in (".parquet", ".jsonl"))
        if not files:
            raise InputError(f"{ref}: no .parquet or .jsonl files")
        return files, {"ref": ref, "files": {str(f): sha256_file(f) for f in files}}
    version = store.resolve(ref, PAIRS)
    return version.files, {
        "ref": version.ref,
        "record_sha256": sha256_file(version.record_path),
        "files": {f["path"]: f["sha256"] for f in version.record["files"]},
        "models": version.record.get("models", {}),
    }


def _load(files: list[Path], ref: str) -> datasets.Dataset:
    kind = "parquet" if files[0].suffix == ".parquet" else "json"
    if (
        kind == "parquet"
        and sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0
        or kind == "json"
        and not any(f.read_bytes().strip() for f in files)
    ):
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


def held_out_prompts(prompt_ids: list[str], fraction: float, seed: int) -> set[str]:
    """About ``fraction`` of the distinct prompts (at least one, never all), ranked by a seeded hash of the prompt
    id: the same prompts for the same data and seed, whatever the weights."""
    if fraction <= 0:
        return set()
    prompts = sorted(set(prompt_ids), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    if len(prompts) < 2:
        raise InputError(f"held-out split needs at least 2 prompts, found {len(prompts)}; set eval_fraction=0")
    return set(prompts[: min(len(prompts) - 1, max(1, round(fraction * len(prompts))))])


def _rows_where(dataset: datasets.Dataset, held: set[str], inside: bool) -> datasets.Dataset:
    return dataset.select([i for i, p in enumerate(dataset["prompt_id"]) if (p in held) == inside])


def load_training_pairs(
    inputs: list[DatasetInput],
    pair_types: Sequence[str],
    store: Store,
    seed: int,
    eval_fraction: float = 0.0,
    type_weights: dict[str, float] | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset | None, list[dict]]:
    """The inputs' rows of ``pair_types``, split by prompt into (train, held-out), and their provenance.

    The split comes first, over every pair as stored: the held-out set is the same for any input weight or
    ``type_weights`` (lambda), each of its pairs once, and never shares a prompt with training. Only the training
    side is then resampled (input weights, then type weights) and shuffled. Bad data is refused with the reason.
    """
    if not inputs:
        raise InputError("no training data: pass --dataset NAME@vN (repeatable) or `datasets:` in the manifest")
    pools, provenance = [], []
    for item in inputs:
        files, info = _files_of(item.ref, store)
        data = _load(files, item.ref)
        missing = [c for c in REQUIRED if c not in data.column_names]
        if missing:
            raise InputError(
                f"{item.ref}: missing column(s) {', '.join(missing)}; a pair dataset needs {', '.join(REQUIRED)}"
            )
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
        pools.append(wanted.select_columns(list(REQUIRED)))
        provenance.append({**info, "weight": item.weight, "rows": dict(sorted(counts.items()))})
    held = held_out_prompts([p for pool in pools for p in pool["prompt_id"]], eval_fraction, seed)
    train_parts, eval_parts = [], []
    for index, (pool, info) in enumerate(zip(pools, provenance, strict=True)):
        train_parts.append(resample(_rows_where(pool, held, False), info["weight"], seed + index))
        eval_parts.append(_rows_where(pool, held, True))
        info.update(used_rows=len(train_parts[-1]) + len(eval_parts[-1]), eval_rows=len(eval_parts[-1]))
    train = datasets.concatenate_datasets(train_parts)
    for pair_type, weight in (type_weights or {}).items():
        chosen = train.filter(lambda row, t=pair_type: row["pair_type"] == t)
        others = train.filter(lambda row, t=pair_type: row["pair_type"] != t)
        train = datasets.concatenate_datasets([others, resample(chosen, weight, seed)])
    if len(train) == 0:
        raise InputError("no training pairs left after weighting (is revision_weight 0 with only revision pairs?)")
    return train.shuffle(seed=seed), datasets.concatenate_datasets(eval_parts) if held else None, provenance


def truncation_report(data: datasets.Dataset, tokenizer, max_length: int) -> dict[str, int]:
    """Token counts as TRL's DPOTrainer takes them: the prompt alone (with the generation prompt) and the whole
    conversation, the response starting where the two token sequences diverge.

    Counts pairs whose prompt reaches ``max_length`` (TRL drops them), pairs whose response is cut, and pairs whose
    prompt is cut short at that divergence (``prompt_cut``: TRL then trains on other prompt tokens than the policy
    was sampled with, because the template renders the prompt otherwise when a response follows, or tokens merge
    across the boundary). Refuses data where every prompt alone is too long."""
    from trl.data_utils import common_prefix_length  # imports transformers: not needed to refuse bad input

    fully = partly = cut = 0
    shortest = None
    for row in data:
        prompt = prompt_token_ids(tokenizer, row["prompt"])
        whole = [
            tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=True, return_dict=True)["input_ids"]
            for side in ("chosen", "rejected")
        ]
        kept = min(common_prefix_length(prompt, ids) for ids in whole)
        shortest = kept if shortest is None else min(shortest, kept)
        cut += kept < len(prompt)
        fully += kept >= max_length
        partly += kept < max_length < max(len(ids) for ids in whole)
    if data.num_rows and fully == data.num_rows:
        raise InputError(
            f"every training prompt is at least max_length={max_length} tokens (shortest: {shortest});"
            " raise max_length, or the responses would be cut away entirely"
        )
    return {"pairs": data.num_rows, "prompt_over_max_length": fully, "response_truncated": partly, "prompt_cut": cut}


def prompt_rendering_check(inputs: list[dict], tokenizer) -> list[dict[str, Any]]:
    """Per input built by ``realign-data build``: are the training tokenizer's prompt tokens those the policy was
    sampled with? Compares the sha256 of the token ids of the build's probe prompt (and of the chat template, where
    the build knew it); a ``warning`` says what differs or could not be checked."""
    checks = []
    for info in inputs:
        record = info.get("models", {}).get("policy", {}).get("prompt_rendering")
        if record is None:  # a pair file, or a version written by other means: nothing to compare with
            continue
        probe = record["probe"]
        ids = prompt_token_ids(tokenizer, probe["messages"])
        same = None if probe["token_ids_sha256"] is None else token_ids_sha256(ids) == probe["token_ids_sha256"]
        template = record["chat_template_sha256"]
        check = {
            "ref": info["ref"],
            "engine": record["engine"],
            "rendered_by": record["rendered_by"],
            "probe_prompt_id": probe["prompt_id"],
            "same_prompt_tokens": same,
            "same_chat_template": None if template is None else template == chat_template_sha256(tokenizer),
        }
        if same is None:
            check["warning"] = (
                f"{info['ref']}: cannot check that training sees the prompt tokens the policy was "
                f"sampled with: {record.get('note', 'no probe tokens recorded')}"
            )
        elif not same:
            check["warning"] = (
                f"{info['ref']}: the training tokenizer renders prompts into other tokens than the "
                f"policy was sampled with ({record['rendered_by']}; probe prompt "
                f"{probe['prompt_id'][:12]}: {probe['tokens']} tokens then, {len(ids)} now); its "
                "on-policy pairs are not on-policy for this model"
            )
        checks.append(check)
    return checks
