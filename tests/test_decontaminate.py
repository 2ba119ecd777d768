"""Decontamination: loading benchmark prompts, finding them planted in training prompts, no false positives, the
exact / n-gram / short-prompt rules, bad reference files, and the report."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realign_data import decontaminate
from realign_data.decontaminate import (
    DEFAULT_NGRAM,
    KNOWN,
    Decontaminator,
    Match,
    Reference,
    contamination_report,
    load_reference,
    normalize,
)
from realign_data.errors import InputError

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
ALPACA = SHARED / "alpaca_eval" / "reference_outputs_gpt4_1106_preview.json"
V01 = SHARED / "arena_hard" / "arena-hard-v0.1" / "question.jsonl"
V2 = SHARED / "arena_hard" / "arena-hard-v2.0" / "question.jsonl"
BUILTIN = REPO / "realign_data" / "data" / "builtin_prompts.jsonl"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (reference data) is not present")


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def builtin_prompts() -> list[str]:
    return [row["prompt"] for row in jsonl_rows(BUILTIN)]


def joined(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def references() -> list[Reference]:
    if not SHARED.is_dir():
        pytest.skip("../shared/data (reference data) is not present")
    return [
        load_reference(f"alpaca_eval={ALPACA}"),
        load_reference(f"arena-hard-v0.1={V01}"),
        load_reference(f"arena-hard-v2.0={V2}"),
    ]


@pytest.fixture(scope="module")
def scanner(references) -> Decontaminator:
    return Decontaminator(references)


# ------------------------------------------------------------------------------------------------- loading


@needs_shared
def test_loads_the_three_benchmarks_from_files(references):
    alpaca, v01, v2 = references
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    first01, first2 = jsonl_rows(V01)[0], jsonl_rows(V2)[0]
    assert [r.name for r in references] == ["alpaca_eval", "arena-hard-v0.1", "arena-hard-v2.0"]
    assert (len(alpaca.items), len(v01.items), len(v2.items)) == (805, 500, 750)
    assert alpaca.items[0] == ("0", rows[0]["instruction"])  # AlpacaEval has no id field: the row index
    assert alpaca.items[-1] == ("804", rows[-1]["instruction"])
    assert v01.items[0] == (first01["question_id"], first01["turns"][0]["content"])
    assert v2.items[0] == (first2["uid"], first2["prompt"])
    for reference, path in zip(references, (ALPACA, V01, V2), strict=True):
        assert reference.source == {
            "path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "n": len(reference.items),
        }


@needs_shared
def test_a_path_alone_is_labelled_by_its_stem():
    reference = load_reference(str(V01))
    assert reference.name == "question"
    assert len(reference.items) == 500


@needs_shared
def test_known_arena_hard_default_comes_from_the_official_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REALIGN_HOME", str(tmp_path))
    repo, commit = KNOWN["arena-hard-v0.1"]["repo"], KNOWN["arena-hard-v0.1"]["commit"]
    target = tmp_path / "official" / repo.replace("/", "__") / commit / "data/arena-hard-v0.1/question.jsonl"
    target.parent.mkdir(parents=True)
    shutil.copy(V01, target)
    reference = load_reference("arena-hard-v0.1")
    assert reference.name == "arena-hard-v0.1" and len(reference.items) == 500
    assert reference.source["path"] == str(target)
    assert reference.source["official"] == f"{repo}@{commit}:data/arena-hard-v0.1/question.jsonl"


def test_alpaca_eval_default_without_the_hub_is_one_line_naming_the_option(tmp_path):
    from tests.helpers import assert_one_line_error, run_cli

    env = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nobody there
    env |= {name: "" for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}
    result = run_cli("decontaminate", "builtin", "-a", "alpaca_eval", "--out", str(tmp_path / "x.jsonl"), env=env)
    assert_one_line_error(result, 1, "alpaca_eval=FILE", "127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []


def test_other_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("First prompt here\n\n  \nSecond prompt\n", encoding="utf-8")
    assert load_reference(f"mine={tmp_path / 'p.txt'}").items == [("0", "First prompt here"), ("1", "Second prompt")]
    (tmp_path / "p.csv").write_text('id,question\nq1,"What is 2+2?"\nq2,"Name, a color"\n', encoding="utf-8")
    assert load_reference(str(tmp_path / "p.csv")).items == [("q1", "What is 2+2?"), ("q2", "Name, a color")]
    pq.write_table(pa.table({"uid": ["u1"], "prompt": ["A parquet prompt"]}), tmp_path / "p.parquet")
    reference = load_reference(f"pq={tmp_path / 'p.parquet'}")
    assert (reference.name, reference.items) == ("pq", [("u1", "A parquet prompt")])
    rows = [
        {"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]},
        {
            "prompt": [
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "two"},
            ]
        },
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert load_reference(str(tmp_path / "chat.jsonl")).items == [("7", "Hi there"), ("1", "one\ntwo")]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.jsonl", '{"prompt": "fine here"}\n{"answer": "no prompt"}\n', ["bad.jsonl:2", "instruction", "answer"]),
        ("bad.json", '[{"instruction": "a b"}, {"instruction": 5}]', ["bad.json: row 1", "'instruction'", "number"]),
        ("bad.jsonl", '{"turns": [{"content": ["x"]}]}\n', ["bad.jsonl:1", "turns[0].content", "array"]),
        ("bad.jsonl", '{"turns": "text"}\n', ["bad.jsonl:1", "'turns'"]),
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": \n', ["bad.jsonl:3", "invalid JSON"]),
        ("bad.jsonl", '{"prompt": "   "}\n', ["bad.jsonl:1", "'prompt'", "empty"]),
        ("bad.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', ["bad.jsonl:1", "no user turn"]),
        ("bad.jsonl", '{"question_id": {"a": 1}, "prompt": "x"}\n', ["bad.jsonl:1", "'question_id'"]),
        ("bad.jsonl", "", ["bad.jsonl", "no prompts"]),
        ("bad.txt", "\n  \n", ["bad.txt", "no prompts"]),
        ("bad.csv", "a,b\n1,2\n", ["bad.csv:2", "no prompt text"]),
        ("bad.yaml", "prompt: x\n", ["bad.yaml", "unsupported file type"]),
    ],
)
def test_bad_reference_files_name_file_line_and_field(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_reference(f"mine={path}")
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(InputError, match="no such file") as caught:
        load_reference(f"alpaca_eval={tmp_path / 'absent.json'}")
    assert str(tmp_path / "absent.json") in str(caught.value)
    with pytest.raises(InputError) as caught:
        load_reference("mmlu")
    for known in KNOWN:
        assert known in str(caught.value)


def test_ngram_must_be_positive():
    with pytest.raises(InputError, match="ngram"):
        Decontaminator([], ngram=0)


# ------------------------------------------------------------------------------------------------ matching


def planted_items(references: list[Reference]) -> list[tuple[str, str, str]]:
    """(benchmark, item id, text): per benchmark its three shortest and two longest prompts and three at random; a
    one-"word" CJK prompt of Arena-Hard v2.0 and one whose NFC form has other words."""
    rng = random.Random(13)
    chosen = []
    for reference in references:
        ranked = sorted(reference.items, key=lambda item: len(item[1].split()))
        picks = ranked[:3] + ranked[-2:] + rng.sample(ranked[3:-2], 3)
        chosen += [(reference.name, item_id, text) for item_id, text in picks]
    v2 = {reference.name: reference for reference in references}["arena-hard-v2.0"]
    cjk = next(item for item in v2.items if len(item[1].split()) == 1 and "\u4e00" <= item[1][0] <= "\u9fff")
    chosen.append(("arena-hard-v2.0", *cjk))
    decomposed = next(
        item for item in v2.items if normalize(unicodedata.normalize("NFC", item[1])) != normalize(item[1])
    )
    chosen.append(
        ("arena-hard-v2.0", decomposed[0], unicodedata.normalize("NFC", decomposed[1]))
    )  # as realign reads it
    return chosen


def variants(text: str) -> dict[str, str]:
    words = text.split()
    separators = ["\t", "\n", "  ", " \r\n "]
    respaced = words[0] + "".join(separators[i % 4] + word for i, word in enumerate(words[1:]))
    return {
        "verbatim": text,
        "recased": "".join(c.upper() if c.isascii() else c for c in text),
        "respaced": f"  {respaced}\n",
        "embedded": f"Please help me with this: {text} Thanks!",
    }


@needs_shared
def test_planted_benchmark_prompts_are_found(references, scanner):
    clean = builtin_prompts()
    haystack = list(clean)
    planted = {}
    for name, item_id, text in planted_items(references):
        for variant, changed in variants(text).items():
            planted[len(haystack)] = (name, item_id, variant)
            haystack.append(changed)
            haystack.append(clean[len(planted) % len(clean)])  # clean prompts between the planted ones
    found = scanner.scan(haystack)
    assert len(planted) == 4 * (3 * 8 + 2)
    for index, (name, item_id, variant) in planted.items():
        matches = [m for m in found.get(index, []) if (m.benchmark, m.item_id) == (name, item_id)]
        assert len(matches) == 1, (name, item_id, variant, haystack[index][:80])
        assert f" {matches[0].ngram} " in f" {joined(haystack[index])} "
        if variant != "embedded":
            assert matches[0].kind == "exact" and matches[0].ngram == joined(haystack[index])
        else:
            assert matches[0].kind == "ngram"
    assert set(found) == set(planted)  # the built-in prompts between them are clean


@needs_shared
def test_no_false_positive_on_the_builtin_prompts(scanner):
    assert scanner.scan(builtin_prompts()) == {}


@needs_shared
def test_near_miss_and_punctuation_are_not_matched(references, scanner):
    long_text = next(text for _, text in references[1].items if len(text.split()) > 40)
    window = long_text.split()[10:18]
    assert scanner.scan([" ".join(window)])  # the 8-gram itself matches
    changed = window[:3] + ["zqxjv"] + window[4:]
    seven = window[:7]
    cases = [" ".join(changed), " ".join(seven), "What is Atlantis", "what is atlantis ?", "Whatis Atlantis?"]
    assert scanner.scan(cases) == {}


def test_exact_short_and_ngram_kinds():
    a = Reference("a", [("a1", "What is Atlantis?"), ("a2", "one two three four five six seven eight nine")], {})
    scanner = Decontaminator([a])
    found = scanner.scan(
        [
            "what IS   atlantis?",
            "So, what is Atlantis? I wonder.",
            "what is atlantis",
            "ONE two three four five six seven eight",
            "zero one two three four five six seven eight nine ten",
            "one two three four five six seven eight nine",
        ]
    )
    assert found == {
        0: [Match("a", "a1", "exact", "what is atlantis?")],
        1: [Match("a", "a1", "ngram", "what is atlantis?")],
        3: [Match("a", "a2", "ngram", "one two three four five six seven eight")],
        4: [Match("a", "a2", "ngram", "one two three four five six seven eight")],
        5: [Match("a", "a2", "exact", "one two three four five six seven eight nine")],
    }


def test_windows_never_span_two_texts():
    a = Reference("a", [("a1", "w1 w2 w3 w4 w5 w6 w7 w8"), ("a2", "x1 x2")], {})
    assert Decontaminator([a]).scan(["w1 w2 w3 w4", "w5 w6 w7 w8", "x1", "x2 w1"]) == {}


def test_ngram_size_is_configurable():
    a = Reference("a", [("a1", "the quick brown fox jumps over the lazy dog"), ("a2", "hi")], {})
    found = Decontaminator([a], ngram=3).scan(["a brown fox jumps high", "brown fox", "oh hi there"])
    assert found == {0: [Match("a", "a1", "ngram", "brown fox jumps")], 2: [Match("a", "a2", "ngram", "hi")]}


def test_one_match_per_item_the_first_window():
    a = Reference("a", [("a1", "a b c d e f g h i j"), ("a2", "c d e f g h i j")], {})
    found = Decontaminator([a]).scan(["x a b c d e f g h i j a b c d e f g h"])
    assert found == {0: [Match("a", "a1", "ngram", "a b c d e f g h"), Match("a", "a2", "ngram", "c d e f g h i j")]}


UNUSUAL = [
    "Describe İstanbul and its bridges over the Bosphorus strait at night",  # U+0130 lower-cases differently
    "ΠΕΡΙΓΡΑΨΕ ΤΟΝ ΔΡΟΜΟΣ ΠΡΟΣ ΤΗΝ ΑΘΗΝΑ ΚΑΙ ΤΟΥΣ ΛΟΦΟΥΣ ΤΗΣ ΓΥΡΩ",  # final sigma in context
    "Straße über Flüsse und Täler bis zum großen Meer hinunter gehen",
    "What is Ǆungla?",  # a title-case digraph, short
]


def test_arrow_and_python_normalization_agree_on_unusual_text(monkeypatch):
    reference = Reference("u", [(str(i), text) for i, text in enumerate(UNUSUAL)], {})
    scanner = Decontaminator([reference])
    texts = []
    for text in UNUSUAL:
        words = text.split()
        texts += [
            text.upper(),
            "\u3000".join(words),
            "\xa0".join(words),
            "\x1c".join(words) + "\x85",
            "\u2028".join(words),
            f"\ud800 lone surrogate then {text}",
            f"Ab ΣΑΣ {text.lower()} ΟΔΟΣ",
        ]
    expected = {i: m for i, t in enumerate(texts) if (m := scanner.matches(t))}
    assert len(expected) >= 3 * len(UNUSUAL)
    assert scanner.scan(texts) == expected
    monkeypatch.setattr(decontaminate, "CHUNK", 5)  # many chunks, two in flight
    assert scanner.scan(texts) == expected


@needs_shared
def test_fast_path_finds_what_the_python_definition_finds(references, scanner, monkeypatch):
    """Random splices of benchmark words (windows of 3-12 words, some words changed, mixed case and separators):
    the vectorized scan must report exactly what the plain Python definition reports, text by text."""
    rng = random.Random(7)
    items = [text for reference in references for _, text in reference.items]
    texts = builtin_prompts()
    for _ in range(3000):
        words = rng.choice(items).split()
        start = rng.randrange(len(words))
        piece = words[start : start + rng.randint(1, 12)]
        if rng.random() < 0.4 and len(piece) > 2:
            piece[rng.randrange(len(piece))] = rng.choice(["foo", "bar", "Baz!"])
        if rng.random() < 0.3:
            piece = [word.upper() for word in piece]
        separator = rng.choice([" ", "  ", "\n", "\t", "\xa0"])
        texts.append(rng.choice(["", "Hey ", "so: "]) + separator.join(piece) + rng.choice(["", " ok", "?"]))
    expected = {i: m for i, t in enumerate(texts) if (m := scanner.matches(t))}
    assert 200 < len(expected) < len(texts)
    monkeypatch.setattr(decontaminate, "CHUNK", 701)
    assert scanner.scan(texts) == expected


def test_empty_inputs():
    assert Decontaminator([]).scan(["anything at all"]) == {}
    a = Reference("a", [("a1", "one two")], {})
    assert Decontaminator([a]).scan([]) == {}
    assert Decontaminator([a]).scan(["", "   "]) == {}


# ------------------------------------------------------------------------------------------------- report


def test_contamination_report_for_a_crafted_case():
    a = Reference(
        "bench-a",
        [("a1", "the quick brown fox jumps over the lazy dog"), ("a2", "What is Atlantis?")],
        {"path": "a.json", "sha256": "aa", "n": 2},
    )
    b = Reference("bench-b", [("b1", "Name three primary colors please")], {"path": "b.txt", "sha256": "bb", "n": 1})
    texts = [
        "Tell me: the quick brown fox jumps over the lazy dog today",
        "what is atlantis?",
        "a clean prompt",
        "NAME three primary colors please, and what is atlantis? too",  # "please," is not "please"
        "Could you name three primary colors please",
    ]
    found = Decontaminator([a, b]).scan(texts)
    report = contamination_report([a, b], found, ["p0", "p1", "p2", "p3", "p4"], DEFAULT_NGRAM)
    method = report.pop("method")
    assert isinstance(method, str) and "\n" not in method and "8" in method
    assert report == {
        "ngram": 8,
        "benchmarks": {
            "bench-a": {
                "source": {"path": "a.json", "sha256": "aa", "n": 2},
                "reference_prompts": 2,
                "matched_prompts": 2,
                "matches": [
                    {
                        "prompt_id": "p0",
                        "item_id": "a1",
                        "kind": "ngram",
                        "ngram": "the quick brown fox jumps over the lazy",
                    },
                    {"prompt_id": "p1", "item_id": "a2", "kind": "exact", "ngram": "what is atlantis?"},
                    {"prompt_id": "p3", "item_id": "a2", "kind": "ngram", "ngram": "what is atlantis?"},
                ],
            },
            "bench-b": {
                "source": {"path": "b.txt", "sha256": "bb", "n": 1},
                "reference_prompts": 1,
                "matched_prompts": 1,
                "matches": [
                    {"prompt_id": "p4", "item_id": "b1", "kind": "ngram", "ngram": "name three primary colors please"}
                ],
            },
        },
        "removed": 4,
    }
    assert json.loads(json.dumps(report)) == report


def test_a_text_that_is_not_a_string_is_named():
    a = Reference("a", [("a1", "one two")], {})
    with pytest.raises(TypeError, match=r"texts\[2\] is NoneType"):
        Decontaminator([a]).scan(["one two", "three", None])  # type: ignore[list-item]


# ------------------------------------------------------------------------------- the command and the build step


def first_prompts(path: Path, field: str, count: int) -> list[str]:
    rows = json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else jsonl_rows(path)
    return [row[field] if field != "turns" else row["turns"][0]["content"] for row in rows[:count]]


@needs_shared
def test_decontaminate_a_stored_version_writes_a_clean_version_with_the_report(tmp_path):
    from realign_data.store import Store
    from tests.helpers import assert_one_line_error, pair_row, pair_table, run_cli, tree_digest

    planted = first_prompts(ALPACA, "instruction", 2) + first_prompts(V01, "turns", 1)
    prompts = [*builtin_prompts()[:5], f"Help me out. {planted[0]}", planted[1].upper(), planted[2]]
    rows = [
        pair_row(i, prompt=[{"role": "user", "content": text}], prompt_id=f"p{i}", pair_type="on_policy")
        for i, text in enumerate(prompts)
    ]
    # a revision row of a planted prompt: its prompt is the revision task, the plain on_policy prompt decides
    rows.append(pair_row(20, prompt_id="p5", pair_type="revision", prompt=[{"role": "user", "content": "draft"}]))
    store = Store(tmp_path)
    store.write_version("d", [pair_table(rows)])
    against = ["-a", f"alpaca_eval={ALPACA}", "-a", f"arena-hard-v0.1={V01}"]
    result = run_cli("decontaminate", "d@v1", *against, "--store", str(tmp_path), "--format", "json", check=True)
    report = json.loads(result.stdout)
    assert report["removed"] == 3 and report["written"].startswith("d@v2 (5 rows)")
    assert report["benchmarks"]["alpaca_eval"]["matched_prompts"] == 2
    assert sorted(m["prompt_id"] for m in report["benchmarks"]["alpaca_eval"]["matches"]) == ["p5", "p6"]
    assert report["benchmarks"]["arena-hard-v0.1"]["matches"][0]["prompt_id"] == "p7"
    clean = store.resolve("d@v2")
    kept = [row["prompt_id"] for f in clean.files for row in pq.read_table(f).to_pylist()]
    assert kept == ["p0", "p1", "p2", "p3", "p4"]
    assert clean.record["inputs"]["decontaminated_from"] == "d@v1"
    assert clean.record["inputs"]["prompts"]["decontamination"]["removed"] == 3
    shown = run_cli("show", "d@v2", "--store", str(tmp_path), check=True).stdout
    assert "3 prompt(s) removed" in shown and "alpaca_eval" in shown
    card = tmp_path / "card"
    run_cli("publish", "d@v2", "--repo-id", "me/d", "--dry-run", str(card), "--store", str(tmp_path), check=True)
    assert "3 prompt(s) sharing a word 8-gram" in (card / "README.md").read_text()
    assert "alpaca_eval 2 of 805, arena-hard-v0.1 1 of 500" in (card / "README.md").read_text()

    before = tree_digest(tmp_path / "datasets")
    for args, needle in (
        (["-a", "no-such-benchmark"], "not a known benchmark"),
        (["-a", f"alpaca_eval={ALPACA}", "-a", f"alpaca_eval={V01}"], "given twice"),
        (["-a", f"x={tmp_path / 'missing.jsonl'}"], "missing.jsonl: no such file"),
    ):
        assert_one_line_error(run_cli("decontaminate", "d@v1", *args, "--store", str(tmp_path)), 2, needle)
    assert tree_digest(tmp_path / "datasets") == before
    # a second check keeps the first one's report
    run_cli("decontaminate", "d@v2", "-a", f"arena-hard-v2.0={V2}", "--store", str(tmp_path), check=True)
    report = store.resolve("d@v3").record["inputs"]["prompts"]["decontamination"]
    assert report["removed"] == 0 and [r["removed"] for r in report["earlier"]] == [3]
    assert sorted(report["earlier"][0]["benchmarks"]) == ["alpaca_eval", "arena-hard-v0.1"]


@needs_shared
def test_decontaminate_a_prompt_file_writes_the_clean_prompts_and_the_report(tmp_path):
    from tests.helpers import assert_one_line_error, run_cli

    planted = first_prompts(V2, "prompt", 1)[0]
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*builtin_prompts()[:3], planted]))
    out = tmp_path / "clean.jsonl"
    result = run_cli("decontaminate", str(source), "-a", f"arena-hard-v2.0={V2}", "--out", str(out), check=True)
    assert "1 prompt(s) removed" in result.stdout
    assert [row["messages"][0]["content"] for row in jsonl_rows(out)] == builtin_prompts()[:3]
    report = json.loads((tmp_path / "clean.jsonl.decontamination.json").read_text())
    assert report["kept"] == 3 and report["removed"] == 1
    first_uid = jsonl_rows(V2)[0]["uid"]  # (v2.0 repeats some prompt text, so more than one item may match)
    assert first_uid in [m["item_id"] for m in report["benchmarks"]["arena-hard-v2.0"]["matches"]]
    again = run_cli("decontaminate", str(source), "-a", f"arena-hard-v2.0={V2}", "--out", str(out))
    assert_one_line_error(again, 2, "clean.jsonl already exists")


@needs_shared
def test_the_build_step_drops_contaminated_prompts_and_records_the_report(tmp_path):
    from realign_data.config import Decontaminate, PromptsConfig
    from realign_data.prompts import load_prompts

    planted = first_prompts(ALPACA, "instruction", 3)
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*planted, *builtin_prompts()]))
    config = PromptsConfig(source=str(source), decontaminate=Decontaminate(against=[f"alpaca_eval={ALPACA}"]))
    prompts = load_prompts(config)
    assert prompts.counts["contaminated"] == 3 and prompts.counts["kept"] == len(builtin_prompts())
    record = prompts.record()["decontamination"]
    assert record["ngram"] == DEFAULT_NGRAM and record["removed"] == 3
    assert [m["item_id"] for m in record["benchmarks"]["alpaca_eval"]["matches"]] == ["0", "1", "2"]
    assert PromptsConfig(source=str(source)).decontaminate is None  # off unless asked for
