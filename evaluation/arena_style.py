"""Style attributes of Arena-Hard answers for style control, as upstream's ``add_markdown_info.py`` computes them.

Per answer: its length in tokens and its markdown counts (headers h1..h6, ordered and unordered list items, bold
``**``/``__`` spans), counted after upstream's removal of code blocks. Upstream reads these from the answer files
(``conv_metadata`` in v0.1, ``metadata`` in v2.0), written there by ``add_markdown_info.py``; when an answer
record carries them they are used as they are. Otherwise they are computed here with the same regular expressions
and the same tokenizer (tiktoken's encoding for ``gpt-3.5-turbo`` in v0.1, ``gpt-4o`` in v2.0). tiktoken fetches
its vocabulary once from openaipublic.blob.core.windows.net; when it cannot (offline) the token length is estimated
as characters / 4 for every answer, and the report lists that deviation.
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from evaluation.arena import answer_text, read_answer_records
from realign_data.errors import InputError
from realign_data.files import json_kind

HEADERS = [re.compile(rf"^#{{{level}}}\s", re.MULTILINE) for level in range(1, 7)]
LISTS = [re.compile(r"^\s*\d+\.\s", re.MULTILINE), re.compile(r"^\s*[-*+]\s", re.MULTILINE)]
BOLD = [re.compile(r"\*\*[^*\n]+\*\*"), re.compile(r"__[^_\n]+__")]
CODE_BLOCK = re.compile("```([^`]*)```")
TOKENIZER_MODEL = {"v0.1": "gpt-3.5-turbo", "v2.0": "gpt-4o"}  # add_markdown_info.py of each version
METADATA_FIELD = {"v0.1": "conv_metadata", "v2.0": "metadata"}
CHARS_PER_TOKEN = 4
FEATURES = ("token_len", "header_count", "list_count", "bold_count")


@dataclass(frozen=True)
class Style:
    tokens: float | None  # None: to be counted with the tokenizer
    headers: int
    lists: int
    bold: int
    text: str


def strip_code_blocks(text: str) -> str:
    """Upstream's ``remove_pattern``: each fenced block's inner text is removed (the fences stay)."""
    for block in CODE_BLOCK.findall(text):
        text = text.replace(block, "")
    return text


def markdown_counts(text: str) -> tuple[int, int, int]:
    """(headers, list items, bold spans) as upstream's ``count_markdown_elements`` after code removal."""
    text = strip_code_blocks(text)
    return (
        sum(len(p.findall(text)) for p in HEADERS),
        sum(len(p.findall(text)) for p in LISTS),
        sum(len(p.findall(text)) for p in BOLD),
    )


def _count(where: str, metadata: dict, field: str) -> int:
    value = metadata.get(field)
    if isinstance(value, dict):
        values = list(value.values())
    else:
        values = [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise InputError(
            f"{where}: field '{field}' of the answer's style metadata must be a count (or counts by "
            f"kind), got {json_kind(value)}"
        )
    return sum(values)


def answer_style(where: str, record: dict, version: str) -> Style:
    text = answer_text(record, where)
    if not isinstance(text, str):
        raise InputError(f"{where}: the answer text must be a string, got {json_kind(text)}")
    metadata = record.get(METADATA_FIELD[version])
    if isinstance(metadata, dict) and all(field in metadata for field in FEATURES):
        return Style(
            float(_count(where, metadata, "token_len")),
            _count(where, metadata, "header_count"),
            _count(where, metadata, "list_count"),
            _count(where, metadata, "bold_count"),
            text,
        )
    return Style(None, *markdown_counts(text), text)


def text_style(text: str) -> Style:
    return Style(None, *markdown_counts(text), text)


def read_answer_styles(path: Path, version: str) -> tuple[str, dict[str, Style]]:
    """(model name, {question id: style}) of one answer file (v0.1 ``choices`` or v2.0 ``messages`` layout)."""
    name, records = read_answer_records(path)
    return name, {qid: answer_style(where, record, version) for where, qid, record in records}


def _tiktoken_cached(url: str) -> bool:
    """Whether tiktoken's cache holds ``url`` (its own cache layout: sha1 of the URL under the cache folder)."""
    import hashlib
    import tempfile

    default = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    folder = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR", default))
    return bool(folder) and os.path.exists(os.path.join(folder, hashlib.sha1(url.encode()).hexdigest()))


def load_tokenizer(version: str):
    """(encoder, "") or (None, why not): tiktoken's encoding for the version's model, fetched at most once."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    name = tiktoken.encoding_name_for_model(TOKENIZER_MODEL[version])
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"  # where tiktoken fetches it
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") and not _tiktoken_cached(url):
        return None, f"tiktoken's {name} vocabulary is not cached and HF_HUB_OFFLINE is set"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # tiktoken's download has no timeout of its own
    try:
        return tiktoken.get_encoding(name), ""
    except Exception as exc:  # offline: the vocabulary cannot be fetched
        return None, f"tiktoken's {name} vocabulary cannot be loaded ({type(exc).__name__})"
    finally:
        socket.setdefaulttimeout(previous)


def token_lengths(styles: dict[str, dict[str, Style]], version: str) -> tuple[dict[str, dict[str, float]], str]:
    """Tokens per (model, question): the answer files' own counts, else tiktoken's; characters / 4 for every answer
    when some count is missing and tiktoken cannot load (the returned note says so)."""
    missing = [style for answers in styles.values() for style in answers.values() if style.tokens is None]
    encoder, reason = (None, "") if not missing else load_tokenizer(version)
    if missing and encoder is None:
        note = (
            f"style control: answer length estimated as characters / {CHARS_PER_TOKEN} for every answer, not "
            f"counted in {TOKENIZER_MODEL[version]} tokens as upstream does ({reason}; {len(missing)} answer(s) "
            f"lack the token count of upstream's add_markdown_info.py)"
        )
        return {
            model: {qid: float(math.ceil(len(style.text) / CHARS_PER_TOKEN)) for qid, style in answers.items()}
            for model, answers in styles.items()
        }, note

    def count(style: Style) -> float:
        if style.tokens is not None:
            return style.tokens
        assert encoder is not None  # this answer lacks its count, so the tokenizer was loaded (or we returned above)
        return float(len(encoder.encode(style.text, disallowed_special=())))

    return {model: {qid: count(style) for qid, style in answers.items()} for model, answers in styles.items()}, ""
