"""Every response of a build kept as a dataset of its own: the samples version, and the pair inputs read back from it.

A build commits ``NAME-samples@vN`` beside its pairs: one row per sample, revision and reference with its score,
finish reason and tokens (realign_data.schema.SAMPLE_SCHEMA). Its record keeps what pairing needs besides the rows:
the pair origin (models, scorer, sampling settings) and the revision template's text. ``read_samples`` turns a
samples version back into the inputs of ``build_pairs``, so pairs can be rebuilt under other rules (margin, mix,
length control, truncation) without generating or scoring again, row for row as a fresh build would make them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from realign_data.errors import InputError
from realign_data.pairs import PairOrigin, PromptResults, Response
from realign_data.schema import SAMPLE_SCHEMA
from realign_data.store import SAMPLES, Store, Version
from realign_data.templates import Template

SUFFIX = "-samples"  # NAME-samples holds the samples of dataset NAME


def samples_name(dataset: str) -> str:
    return dataset + SUFFIX


def _sample_id(prompt_id: str, source: str, text: str) -> str:
    payload = json.dumps([prompt_id, source, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _index(source: str) -> int | None:
    return int(source.split(":", 1)[1]) if ":" in source else None


def samples_table(results: list[PromptResults], origin: PairOrigin) -> pa.Table:
    """One row per response, prompt by prompt: its samples by index, its revisions, its reference."""
    rows = []
    for item in results:
        responses = [
            *((r, "sample", origin.policy_model) for r in item.samples),
            *((item.revisions[i], "revision", origin.reviser_model) for i in sorted(item.revisions)),
            *([(item.reference, "reference", None)] if item.reference is not None else []),
        ]
        for response, kind, model in responses:
            rows.append(
                {
                    "sample_id": _sample_id(item.prompt_id, response.source, response.text),
                    "prompt_id": item.prompt_id,
                    "prompt": item.messages,
                    "kind": kind,
                    "index": _index(response.source),
                    "text": response.text,
                    "score": response.score,
                    "finish_reason": response.finish_reason,
                    "completion_tokens": response.tokens,
                    "model": model,
                    "scorer": origin.scorer,
                }
            )
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def samples_inputs(origin: PairOrigin, template: Template) -> dict[str, Any]:
    """What a samples record keeps besides the rows, for ``read_samples``."""
    return {
        "origin": asdict(origin),
        "revision_template": {"origin": template.origin, "sha256": template.sha256, "text": template.text},
    }


def read_samples(store: Store, ref: str) -> tuple[Version, list[PromptResults], PairOrigin, Template]:
    """The samples version ``ref`` as the inputs of ``build_pairs``: prompt results in build order, the pair origin
    and the revision template the samples were revised with."""
    version = store.resolve(ref, kind=SAMPLES)
    inputs = version.record["inputs"]
    try:
        origin = PairOrigin(**inputs["origin"])
        saved = inputs["revision_template"]
        template = Template(saved["text"], ("instruction", "draft"), saved["origin"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"{version.record_path}: the record lacks the pair inputs ({exc})") from None
    results: dict[str, PromptResults] = {}
    positions: dict[str, dict[int, int]] = {}  # prompt -> sample index -> position among its samples
    for row in version.read(SAMPLE_SCHEMA.names).to_pylist():
        pid = row["prompt_id"]
        item = results.get(pid)
        if item is None:
            item = results[pid] = PromptResults(pid, row["prompt"], [])
            positions[pid] = {}
        source = "reference" if row["kind"] == "reference" else f"{row['kind']}:{row['index']}"
        response = Response(row["text"], row["score"], source, row["finish_reason"], row["completion_tokens"])
        if row["kind"] == "sample":
            positions[pid][row["index"]] = len(item.samples)
            item.samples.append(response)
        elif row["kind"] == "revision":
            if row["index"] not in positions[pid]:
                raise InputError(
                    f"{version.ref}: the revision of prompt {pid} revises sample {row['index']}, which does not "
                    "come before it in the version"
                )
            item.revisions[positions[pid][row["index"]]] = response
        else:
            item.reference = response
    return version, list(results.values()), origin, template
