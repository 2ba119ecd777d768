"""Official benchmark files (prompts, configs, answers) fetched once at a pinned commit into the realign cache, and
whether the Hugging Face Hub (where other official sets live) can be reached at all."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path

from realign_data.errors import RealignError
from realign_data.files import realign_home

ARENA_HARD_V01 = ("lm-sys/arena-hard-auto", "efc012e")  # the commit the v0.1 numbers come from
ARENA_HARD_V2 = ("lmarena/arena-hard-auto", "196f6b8")  # the commit of the v2.0 questions
PROBE_SECONDS = 3.0


def fetch(repo: str, commit: str, path: str, option: str) -> Path:
    """``path`` of ``repo`` at ``commit``, downloaded once into $REALIGN_HOME/official/; ``option`` names the flag
    that passes a local copy instead, for the error when the download fails."""
    target = realign_home() / "official" / repo.replace("/", "__") / commit / path
    if target.exists():
        return target
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as exc:
        raise RealignError(f"cannot download {url} ({exc}); pass the file with {option}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now (offline mode, a host that does not resolve or answer), or
    None; found out within a few seconds and without retries. Behind a proxy nothing is probed."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    if any(
        os.environ.get(name)
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    url = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT  # the variable as it is now, not at import
    endpoint = urlparse(url)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if not host:
        return f"HF_ENDPOINT {url!r} names no host"
    return unreachable(host, port)


def unreachable(host: str, port: int, seconds: float = PROBE_SECONDS) -> str | None:
    """Why ``host:port`` takes no TCP connection (a name that does not resolve, a refusal, silence), or None;
    found out within about ``seconds`` (name resolution has no timeout of its own: it runs in a thread)."""
    found: list[str] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            found.append(f"the host {host} cannot be resolved")
            return
        try:
            socket.create_connection((host, port), timeout=seconds).close()
        except OSError as exc:
            found.append(f"{host}:{port} does not answer ({type(exc).__name__})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds + 2)
    if thread.is_alive():
        return f"{host} does not answer within {seconds + 2:.0f} s"
    return found[0] if found else None
