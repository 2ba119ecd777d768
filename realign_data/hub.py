"""Hub layout of a pair-dataset version: one config per pair_type plus ``default``, and a dataset card.

``publish --dry-run DIR`` writes exactly what would be uploaded: ``data/<config>/train-0000k-of-0000n.parquet``,
``README.md`` (YAML metadata with ``configs`` and ``dataset_info`` features, the ReAlign recipe, full provenance,
statistics, load snippets), ``margins.png`` and ``realign_version.json`` (the version record, so that ``pull``
restores its provenance). ``pull`` imports a published dataset back as a new local version.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import yaml

from realign_data import plots
from realign_data.errors import InputError, RealignError
from realign_data.quality import COLUMNS as LENGTH_COLUMNS
from realign_data.quality import length_bias
from realign_data.schema import PAIR_SCHEMA
from realign_data.store import PAIRS, Store, Version, check_name

SHARD_ROWS = 250_000
HUB_RECORD_FILE = "realign_version.json"  # the version record, published beside the shards
LEGACY_HUB_RECORD_FILE = "realign_manifest.json"  # its name before realign 0.2, still read by pull


def size_category(rows: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if rows < bound:
            return label
    return "10M<n<100M"


def _write_config(con: duckdb.DuckDBPyConnection, where: str, folder: Path) -> tuple[int, int]:
    """Write one config's shards; returns (rows, bytes written)."""
    rows = con.sql(f"SELECT count(*) FROM v {where}").fetchall()[0][0]
    shards = max(1, -(-rows // SHARD_ROWS))
    folder.mkdir(parents=True)
    for index in range(shards):
        table = con.sql(
            f"SELECT * FROM v {where} ORDER BY pair_type, prompt_id, pair_id "
            f"LIMIT {SHARD_ROWS} OFFSET {index * SHARD_ROWS}"
        ).to_arrow_table()
        pq.write_table(table, folder / f"train-{index:05d}-of-{shards:05d}.parquet", compression="zstd")
    return rows, sum(f.stat().st_size for f in folder.iterdir())


def _margin_histogram(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    with plots.figure(path) as axis:
        for (pair_type,) in con.execute("SELECT DISTINCT pair_type FROM v ORDER BY 1").fetchall():
            margins = [m for (m,) in con.execute("SELECT margin FROM v WHERE pair_type = ?", [pair_type]).fetchall()]
            axis.hist(margins, bins=30, alpha=0.55, label=f"{pair_type} ({len(margins)})")
        axis.set_xlabel("margin = chosen_score - rejected_score")
        axis.set_ylabel("pairs")
        axis.legend()


PAPER = (
    'The recipe: Chen et al., "ReAlign: Structured Revision for Small Language Model Alignment", Findings of '
    "the Association for Computational Linguistics: EMNLP 2025, doi:10.18653/v1/2025.findings-emnlp.642 "
    "(https://doi.org/10.18653/v1/2025.findings-emnlp.642). Not to be confused with the unrelated 2024 "
    '"ReAlign" (Reformatted Alignment, Fan et al.), which reformats the responses of instruction data.'
)


def _quality(record: dict[str, Any], bias: dict[str, dict[str, Any]]) -> str:
    """The card's data-quality section: length bias, what the pair rules dropped, truncation, decontamination."""
    rows = "\n".join(
        f"| {t} | {b['pairs']} | "
        + (
            f"{b['chosen_tokens_mean']:.0f} | {b['rejected_tokens_mean']:.0f} | {b['chosen_longer_share']:.0%} | "
            + ("n/a" if b["margin_length_corr"] is None else f"{b['margin_length_corr']:.2f}")
            if b["pairs"]
            else "- | - | - | -"
        )
        + " |"
        for t, b in bias.items()
    )
    stats = record.get("stats", {})
    dropped = ", ".join(f"`{k}` {v}" for k, v in sorted(stats.get("dropped", {}).items())) or "none"
    truncation = (
        f"{stats['truncated_samples']} of {stats['samples']} samples and {stats.get('truncated_revisions', '?')} of "
        f"{stats['revisions']} revisions hit the token limit"
        if "truncated_samples" in stats
        else "not recorded"
    )
    pairs_config = record["config"].get("pairs", {})
    if "allow_truncated" not in pairs_config:  # built before the truncation rule existed
        cut = "paired like any other (the build predates `pairs.allow_truncated`)"
    else:
        cut = "kept" if pairs_config["allow_truncated"] else "not paired"
    ratio = pairs_config.get("max_length_ratio")
    control = "off" if ratio is None else f"a chosen response has at most {ratio}x the rejected's tokens"
    report = record["inputs"].get("prompts", {}).get("decontamination")
    if report:
        decontamination = (
            f"{report['removed']} prompt(s) sharing a word {report['ngram']}-gram with a benchmark prompt, or "
            "equal to one after normalization, were removed; benchmark prompts found: "
        )
        decontamination += ", ".join(
            f"{name} {b['matched_prompts']} of {b['reference_prompts']}" for name, b in report["benchmarks"].items()
        )
        if report.get("earlier"):
            decontamination += f" (after {len(report['earlier'])} earlier check(s), in `realign_version.json`)"
    else:
        decontamination = "the prompts were not checked against benchmark prompts (`prompts.decontaminate`)"
    return f"""## Data quality

Length bias per pair type (tokens; r: Pearson correlation of the margin with chosen minus rejected length):

| pair_type | pairs with token counts | mean chosen | mean rejected | chosen longer | r(margin, length diff) |
|---|---|---|---|---|---|
{rows}

- Truncation: {truncation}; cut responses were {cut} (`pairs.allow_truncated`).
- Length control (`pairs.max_length_ratio`): {control}.
- Candidates dropped by the pair rules: {dropped}.
- Decontamination: {decontamination}.
"""


def _card(
    version: Version,
    repo_id: str,
    license_id: str,
    sizes: dict[str, tuple[int, int]],
    stats: list[tuple],
    bias: dict[str, dict[str, Any]],
) -> str:
    import datasets

    counts = {name: rows for name, (rows, _) in sizes.items()}
    record = version.record
    # the pair contract's columns as `datasets` itself writes them into a card's dataset_info
    features = datasets.Features.from_arrow_schema(PAIR_SCHEMA)._to_yaml_list()
    configs = [
        {"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}/train-*"}]}
        for name in ["default", *sorted(t for t in counts if t != "default")]
    ]
    metadata = {
        "license": license_id,
        "task_categories": ["text-generation"],
        "language": ["en"],
        "size_categories": [size_category(counts["default"])],
        "tags": ["dpo", "preference", "realign", "synthetic", *sorted(t for t in counts if t != "default")],
        "configs": configs,
        "dataset_info": [
            {
                "config_name": name,
                "features": features,
                "splits": [{"name": "train", "num_examples": rows, "num_bytes": size}],
            }
            for name, (rows, size) in sizes.items()
        ],
    }
    config, models, code = record["config"], record["models"], record["code"]
    model_rows = "\n".join(
        f"| {role} | `{m.get('spec', m.get('id'))}` | `{m.get('identity', m.get('id'))}` |"
        for role, m in models.items()
    )
    stat_rows = "\n".join(
        f"| {t} | {n} | {margin:.3f} | {chosen:.3f} | {rejected:.3f} |" for t, n, margin, chosen, rejected in stats
    )
    first_type = sorted(t for t in counts if t != "default")[0]
    loads = (
        f'pairs = load_dataset("{repo_id}", split="train")  # every pair type\n'
        f'{first_type} = load_dataset("{repo_id}", "{first_type}", split="train")'
    )
    body = f"""
# {repo_id}

Preference pairs built with realign (`realign-data build`) by the ReAlign recipe (Chen et al., Findings of EMNLP
2025; see Citation): a small policy's own samples paired best-vs-worst by a scorer (`on_policy`), and the policy's
drafts improved by a reviser and posed as a structured revision task (`revision`: prompt = instruction + draft,
chosen = revision, rejected = draft), plus `revision_direct` and `reviser_train` pairs where built. Rows follow
TRL's conversational preference format (`prompt`, `chosen`, `rejected`) with provenance columns.

This is version `{version.ref}` of the local store, created {record["created_at"]}.

## PairOrigin

| role | model | identity (spec@sha256 fingerprint) |
|---|---|---|
{model_rows}

- Prompt source: `{record["inputs"].get("prompts", {}).get("source")}`
  (fingerprint `{record["inputs"].get("prompts", {}).get("fingerprint")}`)
- Generation: `{json.dumps(config.get("generation", {}))}`; engine `{config.get("engine", {}).get("kind")}`
- Scoring: `{json.dumps(config.get("scoring", {}))}`
- Revision: `{json.dumps(config.get("revision", {}))}`
- Pairs: `{json.dumps(config.get("pairs", {}))}`
- Code: realign {code["realign_version"]}, git `{code["git_sha"]}`; build command: `{code["command"]}`
- Packages: {", ".join(f"{k} {v}" for k, v in sorted(code["packages"].items()))}
- Files: the source version's record (config, inputs, models, code, sha256 of every shard) is `realign_version.json`.

## Statistics

| pair_type | pairs | mean margin | mean chosen score | mean rejected score |
|---|---|---|---|---|
{stat_rows}

![margins per pair type](margins.png)

{_quality(record, bias)}
## Use

```python
from datasets import load_dataset
{loads}
```

```python
from trl import DPOConfig, DPOTrainer
trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="out"), train_dataset=pairs, processing_class=tokenizer)
```

## Citation

{PAPER}
"""
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n" + body


def build_hub_folder(store: Store, ref: str, out: Path, repo_id: str, license_id: str = "other") -> Path:
    """Write the Hub layout of ``ref`` into ``out`` (created, must not exist) and return it."""
    version = store.resolve(ref, PAIRS)
    if out.exists():
        raise InputError(f"{out} already exists; choose another --dry-run folder")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with duckdb.connect() as con:
            con.register("v", version.dataset())  # every column of the contract, nulls where the files predate it
            sizes = {"default": _write_config(con, "", staging / "data" / "default")}
            for (pair_type,) in con.execute("SELECT DISTINCT pair_type FROM v ORDER BY 1").fetchall():
                sizes[pair_type] = _write_config(con, f"WHERE pair_type = '{pair_type}'", staging / "data" / pair_type)
            stats = con.execute(
                "SELECT pair_type, count(*), avg(margin), avg(chosen_score), avg(rejected_score) "
                "FROM v GROUP BY 1 ORDER BY 1"
            ).fetchall()
            _margin_histogram(con, staging / "margins.png")
        bias = length_bias(version.read(list(LENGTH_COLUMNS)))
        (staging / "README.md").write_text(_card(version, repo_id, license_id, sizes, stats, bias))
        shutil.copyfile(version.record_path, staging / HUB_RECORD_FILE)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def hub_errors(repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub failures into one line a person can act on."""
    from httpx2 import TransportError  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise RealignError(f"{repo_id}: HF_HUB_OFFLINE is set; unset it to reach the Hub") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = str(exc).splitlines()[0]
        hint = " (check HF_TOKEN or `hf auth login`, and write access)" if status in (401, 403) else ""
        error = InputError if status == 404 else RealignError  # an unknown repo or revision is the user's input
        raise error(f"{repo_id}: the Hub answered {status}: {reason}{hint}") from None
    except (LocalEntryNotFoundError, TransportError) as exc:
        raise RealignError(f"{repo_id}: cannot reach the Hub at {_endpoint()}: {exc}") from None


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def publish(store: Store, ref: str, repo_id: str, private: bool, license_id: str) -> dict[str, Any]:
    """Create the dataset repo if needed and upload the Hub layout, replacing the repo's ``data/`` folder.

    The token comes from HF_TOKEN or the login cache. Files the repo already holds byte for byte are not sent again,
    so publishing a version the repo already holds makes no new commit (status ``unchanged``). A publication is
    recorded in the catalog only after the Hub accepted it.
    """
    from huggingface_hub import HfApi

    from realign_data.provenance import utc_now

    version = store.resolve(ref, PAIRS)
    api = HfApi()
    with tempfile.TemporaryDirectory() as scratch, hub_errors(repo_id):
        folder = build_hub_folder(store, version.ref, Path(scratch) / "hub", repo_id, license_id)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.dataset_info(repo_id)
        if private and not info.private:
            raise InputError(
                f"{repo_id} already exists and is public, but --private was asked; make it private "
                "on the Hub first, or publish without --private"
            )
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"realign: {version.ref}",
            delete_patterns=["data/*"],
        )
    record = {
        "ref": version.ref,
        "repo_id": repo_id,
        "hub_commit": commit.oid,
        "published_at": utc_now(),
        "private": bool(info.private),
    }
    known = any(
        (r["ref"], r["repo_id"], r["hub_commit"]) == (version.ref, repo_id, commit.oid) for r in store.publications()
    )
    if not known:
        store.record_publication(record)
    return {**record, "status": "unchanged" if commit.oid == info.sha else "published"}


def _config_patterns(card_path: Path, config: str, split: str, where: str) -> list[str] | None:
    """The data-file patterns of ``config``/``split`` declared in a dataset card; None when the card (if any)
    declares no configs, so that ``datasets`` infers the files of its single ``default`` config."""
    from huggingface_hub import DatasetCard

    declared = (DatasetCard.load(card_path).data.configs or []) if card_path.exists() else []
    if not declared:
        if config != "default":
            raise InputError(
                f"{where}: config {config!r} does not exist; the dataset declares no configs, so "
                "only 'default' can be pulled"
            )
        return None
    by_name = {entry["config_name"]: entry for entry in declared}
    if config not in by_name:
        raise InputError(f"{where}: config {config!r} is not in the dataset card (configs: {', '.join(by_name)})")
    files = by_name[config]["data_files"]
    if isinstance(files, str):
        return [files]
    patterns = []
    for entry in files:
        if isinstance(entry, str):
            patterns.append(entry)
        elif entry["split"] == split:
            patterns.extend([entry["path"]] if isinstance(entry["path"], str) else entry["path"])
    if not patterns:
        raise InputError(f"{where}: config {config!r} has no split {split!r} in the dataset card")
    return patterns


def pull(store: Store, spec: str, name: str | None, config: str, split: str) -> Version:
    """Import ``ORG/NAME[@REVISION]`` from the Hub as a new local version, checked against the pair contract.

    Only the card, the version record and the files of ``config``/``split`` are downloaded; ``datasets`` reads them. A
    realign-published dataset brings back its models, build config and inputs from ``realign_version.json``.
    """
    import datasets
    from huggingface_hub import HfApi, snapshot_download

    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"{spec!r}: expected ORG/NAME or ORG/NAME@REVISION")
    name = name or repo_id.split("/")[1]
    check_name(name, hint=" (choose one with --name)")  # before anything is downloaded
    revision = revision or "main"
    at = f"{repo_id}@{revision}"
    where = f"{at} (config {config}, split {split})"
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "snapshot"
        with hub_errors(repo_id):
            info = HfApi().dataset_info(repo_id, revision=revision)
            commit, present = info.sha, {sibling.rfilename for sibling in info.siblings or []}

            def download(patterns: list[str] | None) -> None:
                snapshot_download(
                    repo_id, repo_type="dataset", revision=commit, local_dir=local, allow_patterns=patterns
                )

            metadata_files = [
                path for path in ("README.md", HUB_RECORD_FILE, LEGACY_HUB_RECORD_FILE) if path in present
            ]
            if metadata_files:
                download(metadata_files)
            patterns = _config_patterns(local / "README.md", config, split, at)
            download(patterns)
        datasets.disable_progress_bars()
        try:
            dataset = datasets.load_dataset(
                str(local),
                data_files=None if patterns is None else {split: patterns},
                split=split,
                cache_dir=str(Path(scratch) / "cache"),
            )
        except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as exc:
            raise InputError(f"{where}: datasets cannot load it: {str(exc).splitlines()[0]}") from None
        published = next(
            (local / name for name in (HUB_RECORD_FILE, LEGACY_HUB_RECORD_FILE) if (local / name).exists()), None
        )
        source = json.loads(published.read_text()) if published is not None else {}
        hub_input = {
            "repo_id": repo_id,
            "revision": revision,
            "commit": commit,
            "config": config,
            "split": split,
            "endpoint": _endpoint(),
            "source_version": f"{source['dataset']}@v{source['version']}" if source else None,
        }
        return store.write_version(
            name,
            dataset.with_format("arrow").iter(batch_size=65_536),
            source=where,
            config=source.get("config", {}),
            models=source.get("models", {}),
            inputs={**source.get("inputs", {}), "hub": hub_input},
        )
