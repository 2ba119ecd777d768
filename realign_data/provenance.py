"""What produced an artifact: code version, git sha, package versions and the command line, secrets removed."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from realign_data import __version__

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "datasets",
    "huggingface-hub",
    "pyarrow",
    "duckdb",
    "peft",
    "accelerate",
    "vllm",
    "alpaca-eval",
    "openai",
)
# Hugging Face tokens (hf_ + 34 characters), OpenAI-style keys (sk-..., sk-proj-...), and key=value pairs in URLs or
# command lines; the look-behind keeps words such as "task-classification" out.
SECRET_PATTERN = re.compile(
    r"((?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}|(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}"
    r"|((?:token|api[_-]?key)=)[^\s&]+)",
    re.IGNORECASE,
)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def strip_url_credentials(text: str) -> str:
    """``http://user:key@host/v1`` -> ``http://host/v1``: credentials in URLs are never recorded."""
    return URL_CREDENTIALS.sub(lambda m: m["scheme"], text)


def looks_like_secret(text: str) -> bool:
    """A value shaped like an API key or token (``sk-...``, ``hf_...``, ``token=...``)."""
    return bool(SECRET_PATTERN.search(text))


def redact(text: str) -> str:
    """Strip URL credentials and replace anything that looks like a token or API key with ``***``."""
    return SECRET_PATTERN.sub(lambda m: (m.group(2) or "") + "***", strip_url_credentials(text))


def git_state() -> dict[str, Any]:
    """The git sha and dirty flag of the source tree this package runs from, when it is a checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha, "git_dirty": bool(dirty)}


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def code_provenance() -> dict[str, Any]:
    return {
        "realign_version": __version__,
        **git_state(),
        "packages": package_versions(),
        "command": redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
    }
