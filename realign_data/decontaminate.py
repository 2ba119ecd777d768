"""Benchmark decontamination: find the training prompts that contain a benchmark prompt.

The method is the one of open-r1's ``scripts/decontaminate.py`` (which follows s1):

- a text is normalized by lower-casing it and splitting it on whitespace (Python's ``text.lower().split()``);
  punctuation stays part of the words, so ``"atlantis?"`` and ``"atlantis"`` are different words;
- a training prompt is contaminated by a benchmark prompt when the two share a word n-gram (``ngram`` words,
  default 8), or when their normalized word sequences are equal (reported as kind ``exact``).

Two realign additions, stated plainly because upstream does neither:

- a benchmark prompt with fewer than ``ngram`` words has no n-gram, so upstream can never match it (AlpacaEval has
  "What is Atlantis?", Arena-Hard v2.0 has one-"word" CJK prompts). Here such a prompt matches a training prompt
  that contains its whole word sequence contiguously, anywhere;
- a benchmark prompt whose Unicode NFC form normalizes to other words (a decomposed accent, say) is indexed in
  both forms, because realign's prompt loader NFC-normalizes training prompts; a copy either way is found.

Each training text gets at most one Match per (benchmark, item): ``exact`` when the whole texts are equal, else
the first matching window in the text.

How the scan is fast: the training texts go through in chunks of 50,000, two at a time on two threads (Arrow and
numpy release the GIL). Arrow lower-cases and splits a chunk and maps every word to its id in the benchmarks'
vocabulary (a word outside it is part of no matching window); numpy computes a 64-bit polynomial hash of every
window of ``ngram`` words (and, only where a short benchmark prompt's first word occurs, of the windows of that
prompt's length), looks them up among the benchmarks' hashes and keeps the windows that lie inside one text. Only
the texts with a hit are then scanned again in plain Python on ``text.lower().split()``, which decides every match:
a hash collision costs one re-scan and never yields a false match. Arrow and Python differ in lower-casing a few
characters (U+0130, the final-sigma rule of U+03A3, characters newer than Python's Unicode tables): a text holding
one of them is lower-cased by Python before Arrow splits it (a text Arrow would split on other whitespace than
Python, or one with a lone surrogate, is left to the Python scan alone), so the fast path misses nothing that the
plain Python definition matches. Those characters are probed from the installed pyarrow once per process.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import threading
import unicodedata
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realign_data.config import DEFAULT_NGRAM
from realign_data.errors import InputError, RealignError, one_line
from realign_data.files import decode_utf8, json_kind, json_records, sha256_file
from realign_data.official import ARENA_HARD_V01, ARENA_HARD_V2, fetch, hub_unreachable, offline_mode
from realign_data.quality import length_bias
from realign_data.store import PAIRS, Store, Version

if TYPE_CHECKING:
    from realign_data.config import Decontaminate
    from realign_data.prompts import Prompt

log = logging.getLogger(__name__)

KNOWN: dict[str, dict[str, str]] = {
    "alpaca_eval": {
        "hub": "tatsu-lab/alpaca_eval",
        "config": "alpaca_eval",
        "split": "eval",
        "field": "instruction",
        "option": "alpaca_eval=FILE",
    },
    "arena-hard-v0.1": {
        "repo": ARENA_HARD_V01[0],
        "commit": ARENA_HARD_V01[1],
        "path": "data/arena-hard-v0.1/question.jsonl",
        "option": "arena-hard-v0.1=FILE",
    },
    "arena-hard-v2.0": {
        "repo": ARENA_HARD_V2[0],
        "commit": ARENA_HARD_V2[1],
        "path": "data/arena-hard-v2.0/question.jsonl",
        "option": "arena-hard-v2.0=FILE",
    },
}
SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt")
TEXT_FIELDS = ("instruction", "prompt", "turns", "question", "messages")
ID_FIELDS = ("question_id", "uid", "id")
METHOD = (
    "word {n}-grams of lower-cased, whitespace-split text shared with a benchmark prompt (open-r1/s1), or the "
    "same normalized text; a benchmark prompt under {n} words matches as a contiguous word sequence"
)
CHUNK = 50_000  # training texts per vectorized step: about 150 MB of arrays each
WORKERS = 2  # chunks in flight at once
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial hash's base, modulo 2**64


@dataclass(frozen=True)
class Reference:
    """One benchmark's prompts: ``items`` are (item id, prompt text); ``source`` says where they came from."""

    name: str
    items: list[tuple[str, str]]
    source: dict


@dataclass(frozen=True)
class Match:
    """One benchmark prompt found in a training text; ``ngram`` is the matching normalized words (for ``exact``,
    the whole normalized text)."""

    benchmark: str
    item_id: str
    kind: str  # "exact" or "ngram"
    ngram: str


def normalize(text: str) -> list[str]:
    """The words that matching compares: lower-cased, split on whitespace, punctuation kept."""
    return text.lower().split()


# ---------------------------------------------------------------------------------------------------- references


def load_reference(spec: str) -> Reference:
    """A benchmark's prompts from ``NAME`` (a known benchmark from its default source), ``NAME=PATH`` (a known name
    or any label, from a local file) or ``PATH`` (a local file, labelled by its stem)."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        if not rest:
            raise InputError(f"{spec}: no file after '='; pass NAME=FILE")
        return _from_file(name, Path(rest).expanduser())
    if spec in KNOWN:
        return _default(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_file(path.stem, path)
    known = ", ".join(KNOWN)
    raise InputError(
        f"{spec}: not a known benchmark ({known}) and no such file; pass a known name, NAME=FILE or a file path"
    )


def _default(name: str) -> Reference:
    known = KNOWN[name]
    if "hub" in known:
        return _from_hub(name, known)
    path = fetch(known["repo"], known["commit"], known["path"], known["option"])
    reference = _from_file(name, path)
    official = f"{known['repo']}@{known['commit']}:{known['path']}"
    return Reference(name, reference.items, {**reference.source, "official": official})


def _from_hub(name: str, known: dict[str, str]) -> Reference:
    advice = f"pass {known['option']} (e.g. AlpacaEval's reference_outputs_gpt4_1106_preview.json)"
    reason = hub_unreachable()
    reason = None if offline_mode() else reason  # offline mode may still find it in the datasets cache
    if reason is not None:
        raise RealignError(f"cannot load {name} from the Hugging Face Hub ({reason}); {advice}")
    try:
        import datasets

        dataset = datasets.load_dataset(known["hub"], known["config"], split=known["split"])
    except Exception as exc:  # noqa: BLE001 - offline, not cached, a server error: one line
        why = one_line(exc)[:200] or type(exc).__name__
        raise RealignError(f"cannot load {name} from the Hugging Face Hub ({why}); {advice}") from None
    where = f"{known['hub']} ({known['config']}, {known['split']})"
    items = _items(((f"{where} row {i}", row) for i, row in enumerate(dataset)), where)
    log.info("benchmark %s: %d prompts from the Hub dataset %s", name, len(items), where)
    source = {
        "hub": known["hub"],
        "config": known["config"],
        "split": known["split"],
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "n": len(items),
    }
    return Reference(name, items, source)


def _from_file(name: str, path: Path) -> Reference:
    label = str(path)
    if not path.exists():
        raise InputError(f"{label}: no such file (the prompts of benchmark {name})")
    if not path.is_file():
        raise InputError(f"{label}: not a file (the prompts of benchmark {name})")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{label}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RealignError(f"{label}: cannot read ({exc.strerror or exc})") from None
    items = _items(_records(data, label, suffix), label)
    log.info("benchmark %s: %d prompts from %s", name, len(items), label)
    return Reference(name, items, {"path": label, "sha256": sha256_file(path), "n": len(items)})


def _records(data: bytes, label: str, suffix: str) -> Iterator[tuple[str, Any]]:
    if suffix in (".json", ".jsonl"):
        yield from json_records(data, label)
    elif suffix == ".txt":
        lines = decode_utf8(data, label).split("\n")
        index = 0
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield f"{label}:{number}", {"prompt": line.rstrip("\r"), "id": str(index)}
                index += 1
    elif suffix == ".csv":
        csv.field_size_limit(2**31 - 1)
        reader = csv.DictReader(io.StringIO(decode_utf8(data, label), newline=""))
        try:
            for record in reader:
                row = {key: value for key, value in record.items() if key is not None and value not in (None, "")}
                yield f"{label}:{reader.line_num}", row
        except csv.Error as exc:
            raise InputError(f"{label}:{reader.line_num}: invalid CSV ({exc})") from None
    else:
        try:
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{label}: not a readable Parquet file ({one_line(exc)[:200]})") from None
        for index, row in enumerate(rows):
            yield f"{label}: row {index}", row


def _items(records: Iterator[tuple[str, Any]], label: str) -> list[tuple[str, str]]:
    items = []
    for index, (where, record) in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected an object, got {json_kind(record)}")
        items.append((_item_id(record, where, index), _record_text(record, where)))
    if not items:
        raise InputError(f"{label}: no prompts (the file is empty)")
    return items


def _item_id(record: dict, where: str, index: int) -> str:
    for field in ID_FIELDS:
        value = record.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InputError(f"{where}: field {field!r} must be a string or an integer, got {json_kind(value)}")
        return str(value)
    return str(index)


def _record_text(record: dict, where: str) -> str:
    for field in TEXT_FIELDS:
        value = record.get(field)
        if value is None:
            continue
        if field == "turns":
            if not isinstance(value, list) or not value or not isinstance(value[0], dict):
                raise InputError(f"{where}: field 'turns' must be a list of objects, got {json_kind(value)}")
            text = value[0].get("content")
            field = "turns[0].content"
        elif field in ("prompt", "messages") and isinstance(value, list):
            text = _user_turns(value, where, field)
        else:
            text = value
        if not isinstance(text, str):
            raise InputError(f"{where}: field {field!r} must be a string, got {json_kind(text)}")
        if not text.split():
            raise InputError(f"{where}: field {field!r} is empty")
        return text
    present = ", ".join(sorted(map(str, record))) or "none"
    raise InputError(f"{where}: no prompt text: expected a field {', '.join(TEXT_FIELDS)} (fields: {present})")


def _user_turns(messages: list, where: str, field: str) -> str:
    turns = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"{where}: {field}[{number}] must be a chat message object, got {json_kind(message)}")
        if message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, str):
                raise InputError(f"{where}: {field}[{number}].content must be a string, got {json_kind(content)}")
            turns.append(content)
    if not turns:
        raise InputError(f"{where}: field {field!r} has no user turn")
    return "\n".join(turns)


# ---------------------------------------------------------------------------------- Arrow vs Python normalization


_PROBE_LOCK = threading.Lock()


def _lowering_pattern() -> tuple[str, frozenset[str]]:
    """``_probe_normalization()``, computed once even when two chunks ask at the same time."""
    with _PROBE_LOCK:
        return _probe_normalization()


@functools.cache
def _probe_normalization() -> tuple[str, frozenset[str]]:
    """A regex character class of the characters that Arrow lower-cases differently from Python (probed once from
    the installed pyarrow), and the characters that only one of them calls whitespace."""
    chars = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]  # NUL is the separator
    arrow_lower = pc.utf8_lower(pa.array(["\x00".join(chars)]))[0].as_py().split("\x00")
    differ = {c for c, low in zip(chars, arrow_lower, strict=True) if c.lower() != low}
    differ.add("\u03a3")  # Python lower-cases a final capital sigma by its context, Arrow never does
    pieces = pc.utf8_split_whitespace(pa.array(["a".join(chars)]))[0].as_py()
    arrow_space = set(chars) - set("".join(pieces))
    python_space = {c for c in chars if c.isspace()}
    pattern = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(differ)) + "]"
    return pattern, frozenset(arrow_space ^ python_space)


# --------------------------------------------------------------------------------------------------- the scanner


class Decontaminator:
    """Finds training texts that contain a prompt of any of ``references`` (see the module docstring)."""

    def __init__(self, references: list[Reference], ngram: int = DEFAULT_NGRAM):
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise InputError(f"ngram must be a positive integer, got {ngram!r}")
        self.references = list(references)
        self.ngram = ngram
        Key = tuple[str, str]  # (benchmark, item id)
        self._exact: dict[tuple[str, ...], list[Key]] = {}
        self._windows: dict[int, dict[tuple[str, ...], list[Key]]] = {}  # length -> word sequence -> items
        vocabulary: dict[str, int] = {}
        for reference in self.references:
            for item_id, text in reference.items:
                key = (reference.name, item_id)
                forms = {tuple(normalize(text)), tuple(normalize(unicodedata.normalize("NFC", text)))}
                for words in forms:
                    if not words:
                        continue
                    for word in words:
                        vocabulary.setdefault(word, len(vocabulary))
                    _add(self._exact, words, key)
                    length = min(len(words), ngram)
                    table = self._windows.setdefault(length, {})
                    for start in range(len(words) - length + 1):
                        _add(table, words[start : start + length], key)
        self.lengths = sorted(self._windows)
        self._vocabulary = list(vocabulary)
        rng = np.random.default_rng(0x5EED)  # fixed: the same words hash alike in every run
        self._word_hash = rng.integers(0, 2**63, size=len(vocabulary) + 1, dtype=np.uint64) * np.uint64(2) + 1
        self._short = [length for length in self.lengths if length < ngram]
        self._short_start = np.zeros(len(vocabulary) + 1, dtype=bool)  # the first words of the short prompts
        self._starts: dict[int, np.ndarray] = {}  # and of those of each length
        self._hashes: dict[int, np.ndarray] = {}  # length -> the sorted hashes of the benchmark windows
        for length, table in self._windows.items():
            ids = np.array([vocabulary[w] for words in table for w in words], dtype=np.int64)
            starts = np.arange(0, len(ids), length)
            self._hashes[length] = np.unique(_hash_at(self._word_hash[ids], starts, length))
            if length < ngram:
                self._starts[length] = np.zeros(len(vocabulary) + 1, dtype=bool)
                self._starts[length][ids[starts]] = True
                self._short_start[ids[starts]] = True
        self._long: tuple[np.ndarray, np.ndarray, np.uint64] | None = None  # the n-gram hashes and a bit prefilter
        if ngram in self._hashes:
            hashes = self._hashes[ngram]
            bits = int(min(23, max(10, np.ceil(np.log2(len(hashes) * 16)))))
            shift = np.uint64(64 - bits)
            present = np.zeros(1 << bits, dtype=bool)
            present[hashes >> shift] = True
            self._long = (hashes, present, shift)

    def scan(self, texts: Sequence[str]) -> dict[int, list[Match]]:
        """Index of each contaminated text -> its matches (at most one Match per (benchmark, item) — the first n-gram
        found); clean texts absent."""
        found: dict[int, list[Match]] = {}
        if not self.lengths or not len(texts):
            return found
        starts = range(0, len(texts), CHUNK)
        workers = max(1, min(WORKERS, os.cpu_count() or 1, len(starts)))
        pending: deque = deque()

        def verify() -> None:  # the candidates of the oldest chunk in flight, decided in Python
            first, chunk, future = pending.popleft()
            for index in future.result():
                matches = self.matches(chunk[index])
                if matches:
                    found[first + index] = matches

        with ThreadPoolExecutor(workers) as pool:  # Arrow and numpy release the GIL: chunks overlap
            for start in starts:
                chunk = list(texts[start : start + CHUNK])
                pending.append((start, chunk, pool.submit(self._candidates, chunk, start)))
                if len(pending) > workers:
                    verify()
            while pending:
                verify()
        log.info("decontamination: %d of %d texts match a benchmark prompt", len(found), len(texts))
        return found

    def matches(self, text: str) -> list[Match]:
        """The matches of one text, decided in plain Python (the definition the fast path filters for)."""
        words = normalize(text)
        seen: dict[tuple[str, str], Match] = {}
        whole = " ".join(words)
        for key in self._exact.get(tuple(words), ()):
            seen[key] = Match(key[0], key[1], "exact", whole)
        for start in range(len(words)):
            for length in self.lengths:
                if start + length > len(words):
                    break
                window = tuple(words[start : start + length])
                for key in self._windows[length].get(window, ()):
                    if key not in seen:
                        seen[key] = Match(key[0], key[1], "ngram", " ".join(window))
        return list(seen.values())

    def _candidates(self, chunk: list[str], offset: int = 0) -> list[int]:
        """Indices of the texts of ``chunk`` (``offset`` in all texts) that may match: every text that does, and
        rarely one more."""
        wrong = next((i for i, text in enumerate(chunk) if not isinstance(text, str)), None)
        if wrong is not None:
            raise TypeError(f"texts[{offset + wrong}] is {type(chunk[wrong]).__name__}, not str")
        python_only: set[int] = set()  # texts that only the plain Python scan reads
        try:
            array = pa.array(chunk, type=pa.string())
        except (pa.ArrowException, UnicodeEncodeError):  # a lone surrogate has no UTF-8: Python scans that text
            python_only = {i for i, text in enumerate(chunk) if not _encodable(text)}
            array = pa.array(["" if i in python_only else text for i, text in enumerate(chunk)], type=pa.string())
        lowered = pc.utf8_lower(array)
        unusual = np.flatnonzero(pc.invert(pc.string_is_ascii(array)).to_numpy(zero_copy_only=False))
        if len(unusual):
            pattern, space = _lowering_pattern()
            if space:  # this pyarrow splits on other whitespace than Python: scan those texts in Python
                python_only.update(int(i) for i in unusual if set(chunk[i]) & space)
            risky = unusual[pc.match_substring_regex(array.take(unusual), pattern).to_numpy(zero_copy_only=False)]
            rows = sorted(python_only.union(risky.tolist()))
            if rows:  # lower-cased by Python, split by Arrow
                mask = np.zeros(len(chunk), dtype=bool)
                mask[rows] = True
                replacement = ["" if i in python_only else chunk[i].lower() for i in rows]
                lowered = pc.replace_with_mask(lowered, pa.array(mask), pa.array(replacement, type=pa.string()))
        words = pc.utf8_split_whitespace(lowered)
        counts = pc.list_value_length(words).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(words)
        ids = pc.index_in(flat, value_set=pa.array(self._vocabulary, type=pa.string()))
        ids = pc.fill_null(ids, len(self._vocabulary)).to_numpy(zero_copy_only=False)
        del words, flat, lowered
        ends = np.cumsum(counts, dtype=np.int64)
        hits = [np.asarray(sorted(python_only), dtype=np.int64)]
        single = self._word_hash[ids]
        positions = []
        if self._long is not None and len(ids) >= self.ngram:
            hashes, present, shift = self._long
            window = _rolling(single, self.ngram)
            maybe = np.flatnonzero(present[window >> shift])
            found = maybe[_member(hashes, window[maybe])]
            positions.append((found, self.ngram))
            del window
        if self._short:
            first = np.flatnonzero(self._short_start[ids])  # a short prompt can only start at its first word
            first_ids = ids[first]
            for length in self._short:
                at = first[self._starts[length][first_ids]]
                at = at[at + length <= len(ids)]
                positions.append((at[_member(self._hashes[length], _hash_at(single, at, length))], length))
        for at, length in positions:
            text = np.searchsorted(ends, at, side="right")
            hits.append(text[at + length <= ends[text]])  # the window ends inside the text it starts in
        return np.unique(np.concatenate(hits)).tolist()


def _hash_at(single: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """The polynomial hash (modulo 2**64) of the ``length`` words from each of ``starts``; ``single`` holds each
    word's own hash."""
    hashed = single[starts]
    for offset in range(1, length):
        hashed *= _MULTIPLIER
        hashed += single[starts + offset]
    return hashed


def _rolling(single: np.ndarray, length: int) -> np.ndarray:
    """``_hash_at`` of every start that has ``length`` words after it, with slices instead of gathers."""
    count = len(single) - length + 1
    hashed = single[:count].copy()
    for offset in range(1, length):
        hashed *= _MULTIPLIER
        hashed += single[offset : offset + count]
    return hashed


def _member(hashes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in the sorted ``hashes``."""
    slot = np.minimum(np.searchsorted(hashes, values), len(hashes) - 1)
    return hashes[slot] == values


def _add(table: dict, key: tuple[str, ...], value: tuple[str, str]) -> None:
    bucket = table.setdefault(key, [])
    if value not in bucket:
        bucket.append(value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------- report


def contamination_report(
    references: list[Reference], found: dict[int, list[Match]], ids: Sequence[str], ngram: int
) -> dict:
    """A JSON-able summary: per benchmark its source, its number of prompts, how many of them were found
    (``matched_prompts``) and every match with the training ``prompt_id``; ``removed`` counts the training texts
    with any match."""
    benchmarks: dict[str, dict[str, Any]] = {}
    for reference in references:
        benchmarks[reference.name] = {
            "source": reference.source,
            "reference_prompts": len(reference.items),
            "matched_prompts": 0,
            "matches": [],
        }
    matched: dict[str, set[str]] = {name: set() for name in benchmarks}
    for index in sorted(found):
        for match in found[index]:
            entry = benchmarks.get(match.benchmark)
            if entry is None:
                continue
            entry["matches"].append(
                {"prompt_id": ids[index], "item_id": match.item_id, "kind": match.kind, "ngram": match.ngram}
            )
            matched[match.benchmark].add(match.item_id)
    for name, entry in benchmarks.items():
        entry["matched_prompts"] = len(matched[name])
    return {
        "ngram": ngram,
        "method": METHOD.format(n=ngram),
        "benchmarks": benchmarks,
        "removed": sum(1 for matches in found.values() if matches),
    }


# ---------------------------------------------------------------------------------------------- prompts, versions


def load_references(specs: Sequence[str]) -> list[Reference]:
    """The benchmarks named by ``specs`` (see ``load_reference``); a name given twice is refused."""
    references = [load_reference(spec) for spec in specs]
    names = [reference.name for reference in references]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"--against: benchmark {', '.join(twice)} given twice; label files apart with NAME=FILE")
    return references


def decontaminate_prompts(prompts: list[Prompt], settings: Decontaminate) -> tuple[list[Prompt], dict]:
    """The prompts that contain no prompt of the ``settings.against`` benchmarks, and the report."""
    references = load_references(settings.against)
    found = Decontaminator(references, settings.ngram).scan([p.text for p in prompts])
    report = contamination_report(references, found, [p.prompt_id for p in prompts], settings.ngram)
    return [p for i, p in enumerate(prompts) if i not in found], report


PLAIN_PROMPT_TYPES = ("on_policy", "revision_direct")  # pair types whose prompt is the instruction itself


def decontaminate_version(
    store: Store, ref: str, settings: Decontaminate, dataset: str | None = None
) -> tuple[Version, Version, dict]:
    """A new version of ``ref``'s dataset (or ``dataset``) without the rows of contaminated prompts: (the source,
    the new version, the report). A prompt is scanned as its plain instruction where a row has it (samples; pairs of
    PLAIN_PROMPT_TYPES), else as the revision task's prompt (instruction and draft)."""
    source = store.resolve(ref)
    kind = source.kind
    table = source.read(kind.schema.names)
    plain = (
        pc.is_in(table["pair_type"], pa.array(PLAIN_PROMPT_TYPES)).to_pylist()
        if kind is PAIRS
        else [True] * table.num_rows
    )
    texts: dict[str, str] = {}
    for prompt_id, prompt, is_plain in zip(
        table["prompt_id"].to_pylist(), table["prompt"].to_pylist(), plain, strict=True
    ):
        if prompt_id not in texts or is_plain:
            texts[prompt_id] = "\n".join(m["content"] for m in prompt)
    ids = list(texts)
    references = load_references(settings.against)
    found = Decontaminator(references, settings.ngram).scan([texts[i] for i in ids])
    report = contamination_report(references, found, ids, settings.ngram)
    contaminated = pa.array([ids[i] for i in found], type=pa.string())
    kept = table.filter(pc.invert(pc.is_in(table["prompt_id"], contaminated)))
    if kept.num_rows == 0:
        raise InputError(f"{source.ref}: every prompt contains a benchmark prompt; no version is written")
    record = source.record
    inputs = dict(record["inputs"])
    previous = inputs.get("prompts", {}).get("decontamination")
    if previous:  # an earlier check (at build time, or an earlier run of this): kept, the newest last
        earlier = dict(previous)
        report = {**report, "earlier": [*earlier.pop("earlier", []), earlier]}
    inputs["prompts"] = {**inputs.get("prompts", {}), "decontamination": report}
    inputs["decontaminated_from"] = source.ref
    if "samples" in inputs:  # the samples still hold the removed prompts: rebuilding from them would undo this
        inputs["samples_before_decontamination"] = inputs.pop("samples")
    removed = {"prompts": len(found), "rows": table.num_rows - kept.num_rows}
    stats = {**record.get("stats", {}), "decontamination": removed}
    if kind is PAIRS:
        stats["length_bias"] = length_bias(kept)
    written = store.write_version(
        dataset or source.name,
        [kept],
        config=record["config"],
        inputs=inputs,
        models=record["models"],
        stats=stats,
        source=source.ref,
        kind=kind,
    )
    return source, written, report
