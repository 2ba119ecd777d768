"""Prompt sources: the built-in set, JSONL / JSON / Parquet / CSV files, and Hub datasets (``ID:SPLIT``).

Every source yields chat conversations ending with a user turn. Text is stripped and Unicode-NFC normalized; the
``prompt_id`` is the sha256 of the normalized instruction (for a single user turn) or of the canonical JSON of the
conversation (multi-turn). Bad input raises an InputError naming the file, line or row, and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import re
import statistics
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from realign_data.config import NearDuplicates, PromptsConfig
from realign_data.errors import InputError, RealignError, one_line
from realign_data.files import decode_utf8, json_records

log = logging.getLogger(__name__)

BUILTIN = "builtin"
DEFAULT_COLUMNS = ("prompt", "instruction", "messages", "question")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
ROLES = ("system", "user", "assistant")
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)  # the csv module's default (131,072 characters) is too small
HUB_SOURCE = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<split>[\w.\[\]:%+-]+)$")

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    messages: Messages
    location: str  # where it came from, e.g. "prompts.jsonl:12"
    reference: str | None = None  # a reference response from the source, when one was asked for

    @property
    def instruction(self) -> str:
        """The last user turn: what the policy is asked to do."""
        return self.messages[-1]["content"]

    @property
    def num_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)

    @property
    def text(self) -> str:
        """Every turn's content, one after another: what decontamination scans."""
        return "\n".join(m["content"] for m in self.messages)


@dataclass
class PromptSet:
    prompts: list[Prompt]
    source: str
    source_fingerprint: str
    column: str
    counts: dict[str, int] = field(default_factory=dict)
    token_lengths: list[int] | None = None
    decontamination: dict[str, Any] | None = None  # the report of prompts.decontaminate, when it ran

    def record(self) -> dict[str, Any]:
        """The prompt set as recorded in a version: source, fingerprint, column, counts and the decontamination
        report (when one ran)."""
        record = {
            "source": self.source,
            "fingerprint": self.source_fingerprint,
            "column": self.column,
            "counts": self.counts,
        }
        if self.decontamination is not None:
            record["decontamination"] = self.decontamination
        return record


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def prompt_id_for(messages: Messages) -> str:
    if len(messages) == 1:
        key = messages[0]["content"]
    else:
        key = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _text(value: str, where: str, column: str) -> str:
    """Normalized text that can be written as UTF-8 (JSON escapes can smuggle in unpaired surrogates)."""
    text = normalize(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{where}: field '{column}' has an unpaired surrogate \\u{ord(text[exc.start]):04x} (a broken \\u escape?)"
        ) from None
    return text


def to_messages(value: Any, where: str, column: str) -> Messages:
    """Validate one raw cell (text or chat messages) into a normalized conversation ending with a user turn."""
    if isinstance(value, str):
        text = _text(value, where, column)
        if not text:
            raise InputError(f"{where}: field '{column}' is empty")
        return [{"role": "user", "content": text}]
    if isinstance(value, list) and value:
        messages = []
        for i, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise InputError(f"{where}: field '{column}[{i}]' must be a {{role, content}} message with strings")
            role = message["role"].strip().lower()
            if role not in ROLES:
                raise InputError(
                    f"{where}: field '{column}[{i}]' has role {message['role']!r}; expected "
                    f"{', '.join(ROLES[:-1])} or {ROLES[-1]}"
                )
            messages.append({"role": role, "content": _text(message["content"], where, f"{column}[{i}]")})
        while messages and messages[-1]["role"] == "assistant":  # keep the conversation up to the last user turn
            messages.pop()
        if not messages or messages[-1]["role"] != "user":
            raise InputError(f"{where}: field '{column}' has no user message to answer")
        if not messages[-1]["content"]:
            raise InputError(f"{where}: field '{column}' has an empty user message")
        return messages
    if value is None or value == []:
        raise InputError(f"{where}: field '{column}' is empty")
    raise InputError(
        f"{where}: field '{column}' must be a non-empty string or a list of chat messages, got {type(value).__name__}"
    )


def _pick_column(available: list[str], column: str | None, name: str) -> str:
    if column is not None:
        if column not in available:
            raise InputError(f"{name}: no column '{column}' (columns: {', '.join(available) or 'none'})")
        return column
    for candidate in DEFAULT_COLUMNS:
        if candidate in available:
            return candidate
    raise InputError(f"{name}: no prompt column among {', '.join(available) or 'none'}; pass --prompt-column")


def _read_json_records(
    data: bytes, name: str, column: str | None, jsonl: bool
) -> tuple[str, Iterator[tuple[str, Any]]]:
    rows = json_records(data, name, jsonl)
    if not rows:
        raise InputError(f"{name}: {'empty file' if jsonl else 'empty array'}, no prompts")
    return _pick_column(list(rows[0][1]), column, rows[0][0]), iter(rows)


def _field(row: dict[str, Any], column: str, where: str) -> Any:
    if column not in row:
        raise InputError(f"{where}: missing field '{column}'")
    return row[column]


def _read_csv(data: bytes, name: str, column: str | None) -> tuple[str, Iterator[tuple[str, Any]]]:
    nul = data.find(b"\0")
    if nul >= 0:
        line = 1 + data.count(b"\n", 0, nul)
        raise InputError(f"{name}:{line}: NUL byte in a CSV file (a binary or UTF-16 file? save it as UTF-8 CSV)")
    text = decode_utf8(data, name)
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)

    def records() -> Iterator[tuple[int, list[str]]]:
        """(first line of the row, fields) of every non-blank row."""
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    raise InputError(
                        f"{name}:{start}: unterminated quoted field: the '\"' opened in the row on "
                        f"line {start} is never closed"
                    ) from None
                raise InputError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from None
            if fields:
                yield start, fields

    parsed = records()
    header_line, header = next(parsed, (0, []))
    if not header:
        raise InputError(f"{name}: empty file, no header row")
    named = [h for h in header if h]
    duplicates = sorted({h for h in named if named.count(h) > 1})
    if duplicates:
        raise InputError(f"{name}:{header_line}: the header names column '{duplicates[0]}' more than once")
    column = _pick_column(list(header), column, name)

    def rows() -> Iterator[tuple[str, Any]]:
        count = 0
        for start, fields in parsed:
            if len(fields) != len(header):
                raise InputError(
                    f"{name}:{start}: row has {len(fields)} fields but the header has {len(header)} "
                    "(quote fields that contain commas)"
                )
            count += 1
            yield f"{name}:{start}", dict(zip(header, fields, strict=True))
        if count == 0:
            raise InputError(f"{name}: header only, no prompts")

    return column, rows()


def _read_parquet(path: Path, name: str, column: str | None, extra: list[str]) -> tuple[str, Iterator[tuple[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        if getattr(exc, "errno", None) is not None:
            raise
        raise InputError(f"{name}: not a readable Parquet file ({one_line(exc)[:300]})") from None
    schema = parquet.schema_arrow
    column = _pick_column(schema.names, column, name)
    kind = schema.field(column).type
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_chat = (
        (pa.types.is_list(kind) or pa.types.is_large_list(kind))
        and pa.types.is_struct(kind.value_type)
        and {"role", "content"} <= {f.name for f in kind.value_type}
    )
    if not (is_text or is_chat):
        raise InputError(
            f"{name}: column '{column}' has type {kind}; expected a string or a list of {{role, content}} messages"
        )
    if parquet.metadata.num_rows == 0:
        raise InputError(f"{name}: no rows, no prompts")

    for other in extra:
        _pick_column(schema.names, other, name)

    def rows() -> Iterator[tuple[str, Any]]:
        index = 0
        batches = parquet.iter_batches(columns=list(dict.fromkeys([column, *extra])), batch_size=8192)
        while True:
            try:
                batch = next(batches, None)
                records = batch.to_pylist() if batch is not None else []
            except (pa.ArrowException, OSError) as exc:
                if getattr(exc, "errno", None) is not None:
                    raise
                raise InputError(f"{name}: row {index}: corrupt Parquet data ({one_line(exc)[:300]})") from None
            if batch is None:
                return
            for record in records:
                yield f"{name}: row {index}", record
                index += 1

    return column, rows()


def _read_hub(source: str, column: str | None, extra: list[str]) -> tuple[str, Iterator[tuple[str, Any]], str]:
    try:
        import datasets
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:
        raise RealignError(
            f"{source}: reading a Hub dataset needs the datasets package; run "
            "`pip install datasets`, or pass a .jsonl/.json/.parquet/.csv file"
        ) from None

    match = HUB_SOURCE.match(source)
    assert match is not None  # read_source calls this only for a source that HUB_SOURCE matches
    try:
        dataset = datasets.load_dataset(match["id"], split=match["split"])
    except DatasetNotFoundError:
        raise InputError(
            f"{source}: no such dataset on the Hugging Face Hub (or it is gated or private and HF_TOKEN is unset)"
        ) from None
    except ValueError as exc:  # an unknown split, a bad split expression, a dataset that needs a config name
        raise InputError(f"{source}: {one_line(exc)[:300]}") from None
    except Exception as exc:  # noqa: BLE001 - network, server, cache: the environment, exit 1, in one line
        reason = one_line(exc)[:300] or type(exc).__name__
        raise RealignError(
            f"{source}: cannot load the dataset from the Hugging Face Hub ({reason}); save it to a "
            ".jsonl/.parquet file where the Hub is reachable and pass that file"
        ) from None
    column = _pick_column(list(dataset.column_names), column, source)
    for other in extra:
        _pick_column(list(dataset.column_names), other, source)
    selected = dataset.select_columns(list(dict.fromkeys([column, *extra])))
    rows = ((f"{source} row {i}", record) for i, record in enumerate(selected))
    return column, rows, f"hub:{source}@{dataset._fingerprint}"


def reference_text(value: Any, where: str, column: str) -> str | None:
    """A reference response: text, or the last assistant turn of a messages list."""
    if isinstance(value, list):
        turns = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        value = turns[-1] if turns else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{column}' must be text or chat messages, got {type(value).__name__}")
    return _text(value, where, column) or None


def read_source(
    source: str, column: str | None = None, reference_column: str | None = None
) -> tuple[str, list[tuple[str, Messages, str | None]], str]:
    """Read and validate every row: (column used, [(location, messages, reference)], source fingerprint)."""
    extra = [reference_column] if reference_column else []
    if source == BUILTIN:
        data = resources.files("realign_data").joinpath("data/builtin_prompts.jsonl").read_bytes()
        column, rows = _read_json_records(data, BUILTIN, column, jsonl=True)
        fingerprint = f"builtin:sha256:{hashlib.sha256(data).hexdigest()}"
    elif Path(source).expanduser().is_dir():
        raise InputError(f"{source}: is a directory; pass a {', '.join(FILE_SUFFIXES)} file")
    elif Path(source).expanduser().is_file():
        path = Path(source).expanduser()
        suffix = path.suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise InputError(f"{source}: unsupported file type '{suffix}' (use {', '.join(FILE_SUFFIXES)})")
        data = path.read_bytes()
        if not data.strip():
            raise InputError(f"{source}: empty file, no prompts")
        readers: dict[str, Callable[[bytes, str, str | None], tuple[str, Iterator[tuple[str, Any]]]]] = {
            ".jsonl": partial(_read_json_records, jsonl=True),
            ".json": partial(_read_json_records, jsonl=False),
            ".csv": _read_csv,
        }
        column, rows = (
            _read_parquet(path, source, column, extra)
            if suffix == ".parquet"
            else readers[suffix](data, source, column)
        )
        fingerprint = f"file:sha256:{hashlib.sha256(data).hexdigest()}"
    elif HUB_SOURCE.match(source):
        column, rows, fingerprint = _read_hub(source, column, extra)
    else:
        raise InputError(
            f"{source}: no such file, and not a Hub dataset ID:SPLIT "
            "(e.g. HuggingFaceH4/ultrafeedback_binarized:train_prefs)"
        )
    records = []
    for where, record in rows:
        messages = to_messages(_field(record, column, where), where, column)
        reference = (
            reference_text(_field(record, reference_column, where), where, reference_column)
            if reference_column
            else None
        )
        records.append((where, messages, reference))
    return column, records, fingerprint


def drop_near_duplicates(prompts: list[Prompt], settings: NearDuplicates) -> list[Prompt]:
    """The prompts that do not nearly repeat an earlier kept one (first occurrence wins), by MinHash LSH over the
    word n-grams of their whole conversation, lower-cased."""
    from datasketch import MinHash, MinHashLSH

    index = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
    kept = []
    for prompt in prompts:
        words = re.findall(r"\w+", " ".join(m["content"] for m in prompt.messages).lower())
        n = settings.ngram
        grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        signature = MinHash(num_perm=settings.num_perm, seed=1)
        signature.update_batch([gram.encode() for gram in grams])
        if index.query(signature):
            continue
        index.insert(prompt.prompt_id, signature)
        kept.append(prompt)
    return kept


def load_prompts(config: PromptsConfig, tokenizer=None) -> PromptSet:
    """Read, normalize, de-duplicate, filter and sample prompts as ``config`` says; counts go in ``counts``."""
    column, rows, fingerprint = read_source(config.source, config.column, config.reference_column)
    seen: set[str] = set()
    prompts: list[Prompt] = []
    for where, messages, reference in rows:
        prompt = Prompt(prompt_id_for(messages), messages, where, reference)
        if prompt.prompt_id not in seen:
            seen.add(prompt.prompt_id)
            prompts.append(prompt)
    counts = {"read": len(rows), "duplicates": len(rows) - len(prompts)}
    log.info("prompts: %d row(s) from %s (column %r)", len(rows), config.source, column)

    if config.near_duplicates is not None:
        unique = drop_near_duplicates(prompts, config.near_duplicates)
        counts["near_duplicates"] = len(prompts) - len(unique)
        prompts = unique
    report = None
    if config.decontaminate is not None:
        from realign_data.decontaminate import decontaminate_prompts

        clean, report = decontaminate_prompts(prompts, config.decontaminate)
        counts["contaminated"] = len(prompts) - len(clean)
        prompts = clean
    kept = [p for p in prompts if p.num_chars >= config.min_chars]
    counts["too_short"] = len(prompts) - len(kept)
    before = len(kept)
    if config.max_chars is not None:
        kept = [p for p in kept if p.num_chars <= config.max_chars]
    counts["too_long_chars"] = before - len(kept)

    lengths = None
    if tokenizer is not None:
        lengths = [
            len(
                tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            )
            for p in kept
        ]
    before = len(kept)
    if config.max_tokens is not None:
        if lengths is None:
            raise InputError("prompts.max_tokens needs a tokenizer (prompts.tokenizer or the policy model)")
        pairs = [(p, n) for p, n in zip(kept, lengths, strict=True) if n <= config.max_tokens]
        kept, lengths = [p for p, _ in pairs], [n for _, n in pairs]
    counts["too_long_tokens"] = before - len(kept)

    before = len(kept)
    if config.limit is not None and config.limit < len(kept):
        chosen = sorted(random.Random(config.seed).sample(range(len(kept)), config.limit))
        kept = [kept[i] for i in chosen]
        lengths = [lengths[i] for i in chosen] if lengths is not None else None
    counts["not_sampled"] = before - len(kept)
    counts["kept"] = len(kept)
    return PromptSet(kept, config.source, fingerprint, column, counts, lengths, report)


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1),
        "max": max(values),
    }
