import json
import unicodedata
from importlib import resources

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realign_data.config import PromptsConfig
from realign_data.errors import InputError, RealignError
from realign_data.prompts import load_prompts, prompt_id_for, read_source
from tests.helpers import run_cli

TEXTS = ["Explain recursion.", "Write a limerick about tea.", "What is 7 * 8?"]


def load(source, **options):
    return load_prompts(PromptsConfig(source=str(source), **options))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_builtin_set_is_large_diverse_and_unique():
    prompts = load("builtin")
    assert prompts.counts["read"] >= 64
    assert prompts.counts["duplicates"] == 0 and prompts.counts["near_duplicates"] == 0
    lines = (resources.files("realign_data") / "data/builtin_prompts.jsonl").read_text().splitlines()
    categories = {json.loads(line)["category"] for line in lines}
    assert {"writing", "coding", "math", "reasoning", "advice", "extraction", "safety"} <= categories


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_each_file_format_reads_the_same_prompts(tmp_path, fmt):
    path = tmp_path / f"prompts.{fmt}"
    rows = [{"instruction": text, "other": i} for i, text in enumerate(TEXTS)]
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        path.write_text("instruction,other\n" + "".join(f'"{r["instruction"]}",{r["other"]}\n' for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    prompts = load(path)
    assert prompts.column == "instruction"  # picked automatically
    assert [p.instruction for p in prompts.prompts] == TEXTS
    assert [p.prompt_id for p in prompts.prompts] == [prompt_id_for([{"role": "user", "content": t}]) for t in TEXTS]
    assert prompts.source_fingerprint.startswith("file:sha256:")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_chat_messages_column_keeps_the_conversation_up_to_the_last_user_turn(tmp_path, fmt):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    rows = [{"messages": conversation}, {"messages": conversation[1:2]}]
    path = tmp_path / f"chat.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    first, second = load(path, column="messages").prompts
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant", "user"]
    assert first.instruction == "Name a colour."
    assert second.prompt_id == prompt_id_for([{"role": "user", "content": "Hi there"}])
    assert first.prompt_id != second.prompt_id


def test_normalization_and_duplicates(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Café au lait?")
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "  Café au lait?\n"}, {"prompt": decomposed}, {"prompt": "Other"}]
    )
    prompts = load(path)
    assert prompts.counts["read"] == 3 and prompts.counts["duplicates"] == 1
    assert prompts.prompts[0].instruction == unicodedata.normalize("NFC", "Café au lait?")


def test_filters_and_seeded_sampling(tmp_path, tokenizer):
    rows = [{"prompt": "x" * n} for n in (3, 10, 50, 200, 400)] + [{"prompt": f"prompt {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    filtered = load(path, min_chars=5, max_chars=300)
    assert filtered.counts["too_short"] == 1 and filtered.counts["too_long_chars"] == 1
    by_tokens = load_prompts(PromptsConfig(source=str(path), max_tokens=45), tokenizer)
    assert by_tokens.counts["too_long_tokens"] >= 1
    assert max(by_tokens.token_lengths) <= 45
    first = load(path, limit=10, seed=3)
    again = load(path, limit=10, seed=3)
    other = load(path, limit=10, seed=4)
    assert [p.prompt_id for p in first.prompts] == [p.prompt_id for p in again.prompts]
    assert [p.prompt_id for p in first.prompts] != [p.prompt_id for p in other.prompts]
    assert first.counts["kept"] == 10 and first.counts["not_sampled"] == 35
    order = [r["prompt"] for r in rows]
    assert [order.index(p.instruction) for p in first.prompts] == sorted(
        order.index(p.instruction) for p in first.prompts
    )


def test_max_tokens_without_tokenizer_is_an_error(tmp_path):
    with pytest.raises(InputError, match="max_tokens needs a tokenizer"):
        load("builtin", max_tokens=10)


BAD_CASES = {
    "invalid_json_line": ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "oops"\n', "p.jsonl:2: invalid JSON"),
    "missing_field": ("p.jsonl", b'{"prompt": "ok"}\n{"text": "no prompt"}\n', "p.jsonl:2: missing field 'prompt'"),
    "empty_value": ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "   "}\n', "p.jsonl:2: field 'prompt' is empty"),
    "null_value": ("p.jsonl", b'{"prompt": null}\n', "p.jsonl:1: field 'prompt' is empty"),
    "non_string": ("p.jsonl", b'{"prompt": 12}\n', "p.jsonl:1: field 'prompt' must be a non-empty string"),
    "not_object": ("p.jsonl", b'["a"]\n', "p.jsonl:1: expected a JSON object"),
    "bad_bytes": ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "p.jsonl:2: not valid UTF-8"),
    "bad_bytes_csv": ("p.csv", b'prompt\nfine\n"caf\xe9"\n', "p.csv:3: not valid UTF-8"),
    "empty_file": ("p.jsonl", b"", "p.jsonl: empty file"),
    "blank_file": ("p.csv", b"\n\n", "p.csv: empty file"),
    "header_only_csv": ("p.csv", b"prompt\n", "p.csv: header only"),
    "csv_missing_column": ("p.csv", b"text\nhello\n", "p.csv: no prompt column among text"),
    "empty_csv_cell": ("p.csv", b"prompt,x\nfine,1\n,2\n", "p.csv:3: field 'prompt' is empty"),
    "json_not_array": ("p.json", b'{"a": 1, "b": 2}', "p.json: expected a JSON array"),
    "json_invalid": ("p.json", b'[\n{"prompt": "a"},\n{"prompt": }\n]', "p.json:3: invalid JSON"),
    "json_row_missing": ("p.json", b'[{"prompt": "a"}, {"q": "b"}]', "p.json: row 1: missing field 'prompt'"),
    "bad_messages": ("p.jsonl", b'{"messages": [{"role": "user"}]}\n', "field 'messages[0]' must be a {role, content}"),
    "no_user_turn": ("p.jsonl", b'{"messages": [{"role": "assistant", "content": "hi"}]}\n', "has no user message"),
    "not_parquet": ("p.parquet", b"PAR1 but not really", "p.parquet: not a readable Parquet file"),
    "unsupported": ("p.txt", b"hello", "unsupported file type '.txt'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_line_and_field(tmp_path, case):
    name, data, message = BAD_CASES[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError) as error:
        read_source(str(tmp_path / name))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "table, column, message",
    [
        (pa.table({"prompt": [1, 2]}), None, "column 'prompt' has type int64"),
        (pa.table({"prompt": [["a"], ["b"]]}), None, "column 'prompt' has type list<element: string>"),
        (pa.table({"text": ["a"]}), "prompt", "no column 'prompt' (columns: text)"),
        (pa.table({"prompt": pa.array([], pa.string())}), None, "no rows"),
        (pa.table({"prompt": ["fine", None]}), None, "p.parquet: row 1: field 'prompt' is empty"),
    ],
)
def test_wrong_parquet_schema(tmp_path, table, column, message):
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(InputError) as error:
        read_source(str(tmp_path / "p.parquet"), column)
    assert message in str(error.value)


def test_hub_source_offline_gives_an_actionable_error():
    with pytest.raises(RealignError, match="cannot load the dataset from the Hugging Face Hub"):
        read_source("HuggingFaceH4/ultrafeedback_binarized:train_prefs", "prompt")


def test_unknown_source_is_an_input_error():
    with pytest.raises(InputError, match="no such file, and not a Hub dataset"):
        read_source("missing.jsonl")


def test_cli_preview_and_exit_code_2(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": t} for t in TEXTS + TEXTS[:1]])
    result = run_cli("prompts", str(good), "--format", "json", check=True)
    shown = json.loads(result.stdout)
    assert shown["counts"]["duplicates"] == 1 and shown["counts"]["kept"] == 3
    assert shown["lengths"]["chars"]["max"] == max(len(t) for t in TEXTS)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "fine"}\n{"prompt": 5}\n')
    result = run_cli("prompts", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {bad}:2: field 'prompt' must be a non-empty string or a list of chat messages, got int"
    ]


LONG = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle on the rocks below the "
    "tower, and decides to answer it by sending a bottle of her own across the sea."
)
NEAR = {
    "one word changed": LONG.replace("short story", "brief story"),
    "re-cased and re-spaced": "  " + LONG.upper().replace(" ", "   ") + "  ",
    "punctuation": LONG.replace(",", ";").replace(".", "!"),
}
DISTINCT = [
    "Write a short story about a baker who wins a prize.",
    "Write a poem about a lighthouse in winter.",
    "Summarize the plot of a story about a lighthouse keeper in two sentences.",
]


def test_near_duplicate_prompts_are_dropped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": t} for t in [LONG, *NEAR.values(), *DISTINCT]])
    prompts = load(path)
    assert prompts.counts["read"] == 7 and prompts.counts["duplicates"] == 0
    assert prompts.counts["near_duplicates"] == 3  # every variant of LONG, and no distinct prompt
    assert [p.instruction for p in prompts.prompts] == [LONG, *DISTINCT]  # the first occurrence wins
    kept_all = load(path, near_duplicates=None)
    assert len(kept_all.prompts) == 7 and "near_duplicates" not in kept_all.counts
    strict = load(path, near_duplicates={"threshold": 0.95})  # about identical word n-gram sets only
    assert strict.counts["near_duplicates"] == 2  # re-cased and punctuation; one changed word differs
