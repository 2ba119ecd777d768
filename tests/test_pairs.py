"""The pair rules on hand-built score tables."""

import json

import pytest

from realign_data.config import PairsConfig, RevisionChecks
from realign_data.pairs import PairOrigin, PromptResults, Response, build_pairs, mix_pairs, revision_prompt
from realign_data.store import Store
from realign_data.templates import load_template
from tests.helpers import pair_row, pair_table

TEMPLATE = load_template("revision", ("instruction", "draft"))
PROVENANCE = PairOrigin("policy@sha256:p", "reviser@sha256:r", "judge:x", {"temperature": 0.8}, {"temperature": 0.7})
ALL = ["on_policy", "revision", "revision_direct", "reviser_train"]


def item(prompt_id, scores, texts=None, revisions=None, reference=None):
    texts = texts or [f"answer {i} to {prompt_id}" for i in range(len(scores))]
    return PromptResults(
        prompt_id,
        [{"role": "user", "content": f"question {prompt_id}"}],
        [Response(t, s, f"sample:{i}") for i, (t, s) in enumerate(zip(texts, scores, strict=True))],
        {i: Response(t, s, f"revision:{i}") for i, (t, s) in (revisions or {}).items()},
        Response(reference[0], reference[1], "reference") if reference else None,
    )


def make(results, types, min_margin, **rules):
    """build_pairs under the given rules (the defaults for the rest)."""
    return build_pairs(results, PairsConfig(types=types, min_margin=min_margin, **rules), TEMPLATE, PROVENANCE)


def by_type(rows, pair_type):
    return [r for r in rows if r["pair_type"] == pair_type]


def test_on_policy_takes_best_and_worst():
    rows, dropped = make([item("a", [5.0, 9.0, 2.0, 7.0])], ["on_policy"], 0.0)
    (row,) = rows
    assert (row["chosen_source"], row["rejected_source"]) == ("sample:1", "sample:2")
    assert row["chosen"] == [{"role": "assistant", "content": "answer 1 to a"}]
    assert row["margin"] == 7.0 and row["reviser_model"] is None
    assert row["prompt"] == [{"role": "user", "content": "question a"}]
    assert json.loads(row["sample_params"]) == {"temperature": 0.8}
    assert not dropped


def test_identical_tied_unscored_and_small_margins_are_dropped_and_counted():
    results = [
        item("same", [3.0, 8.0], texts=["x", "x"]),
        item("tied", [4.0, 4.0, 4.0]),
        item("one", [6.0, None]),
        item("close", [5.0, 5.5]),
        item("far", [1.0, 9.0]),
    ]
    rows, dropped = make(results, ["on_policy"], 1.0)
    assert [r["prompt_id"] for r in rows] == ["far"]
    assert dropped == {
        "on_policy:identical": 1,
        "on_policy:tied": 1,
        "on_policy:unscored": 1,
        "on_policy:below_margin": 1,
    }


def test_ties_break_on_the_first_sample():
    rows, _ = make([item("a", [9.0, 1.0, 9.0, 1.0])], ["on_policy"], 0.0)
    assert (rows[0]["chosen_source"], rows[0]["rejected_source"]) == ("sample:0", "sample:1")


def test_revision_pairs_use_the_structured_revision_prompt():
    results = [item("a", [4.0, 6.0], revisions={0: ("better answer", 8.0)})]
    rows, dropped = make(results, ALL, 0.5)
    (revision,) = by_type(rows, "revision")
    assert revision["prompt"] == revision_prompt(TEMPLATE, [{"role": "user", "content": "question a"}], "answer 0 to a")
    assert "question a" in revision["prompt"][-1]["content"] and "answer 0 to a" in revision["prompt"][-1]["content"]
    assert revision["chosen"][0]["content"] == "better answer" and revision["rejected"][0]["content"] == "answer 0 to a"
    assert revision["margin"] == 4.0 and revision["reviser_model"] == "reviser@sha256:r"
    assert json.loads(revision["sample_params"])["revision"] == {"temperature": 0.7}
    (direct,) = by_type(rows, "revision_direct")
    assert direct["prompt"] == [{"role": "user", "content": "question a"}]
    assert direct["pair_id"] != revision["pair_id"]
    (reviser,) = by_type(rows, "reviser_train")
    assert reviser["prompt"] == revision["prompt"] and reviser["chosen_source"] == "revision:0"
    assert not dropped


def test_revision_that_is_worse_unchanged_or_unscored_is_dropped():
    results = [
        item("worse", [6.0, 5.0], revisions={0: ("meh", 3.0)}),
        item("same", [6.0, 5.0], revisions={0: ("answer 0 to same", 6.0)}),
        item("unscored", [6.0, 5.0], revisions={0: ("new", None)}),
    ]
    rows, dropped = make(results, ["revision", "revision_direct"], 0.0)
    assert rows == []
    assert dropped == {
        "revision:not_better": 1,
        "revision_direct:not_better": 1,
        "revision:unchanged": 1,
        "revision_direct:unchanged": 1,
        "revision:unscored": 1,
        "revision_direct:unscored": 1,
    }


def test_reviser_train_prefers_the_best_available_response_including_the_reference():
    results = [item("a", [4.0, 6.0], revisions={0: ("revised", 7.0)}, reference=("gold answer", 9.5))]
    rows, _ = make(results, ["reviser_train"], 0.0)
    assert rows[0]["chosen_source"] == "reference" and rows[0]["rejected_source"] == "sample:0"
    assert rows[0]["margin"] == 5.5


def test_reviser_train_keeps_a_best_draft_against_the_worst_response():
    results = [item("a", [9.0, 2.0], revisions={0: ("revised", 5.0)})]
    rows, _ = make(results, ["reviser_train"], 0.0)
    assert (rows[0]["chosen_source"], rows[0]["rejected_source"]) == ("sample:0", "sample:1")
    assert rows[0]["chosen"][0]["content"] == "answer 0 to a"


def test_pairs_satisfy_the_store_contract(tmp_path):
    results = [
        item(f"p{i}", [float(i), float(i) + 2, 1.0], revisions={0: (f"revised {i}", float(i) + 3)}) for i in range(4)
    ]
    rows, _ = make(results, ALL, 0.0)
    version = Store(tmp_path).write_version("pairs", [pair_table(rows)])
    assert version.record["rows_by_pair_type"] == {
        "on_policy": 4,
        "revision": 4,
        "revision_direct": 4,
        "reviser_train": 4,
    }


def rows_of(counts):
    return [{"pair_type": t, "pair_id": f"{t}-{i}", "prompt_id": str(i)} for t, n in counts.items() for i in range(n)]


@pytest.mark.parametrize(
    "weights, expected",
    [
        ({}, {"on_policy": 40, "revision": 30, "reviser_train": 10}),
        ({"on_policy": 1.0, "revision": 0.5}, {"on_policy": 40, "revision": 20, "reviser_train": 10}),
        ({"on_policy": 1.0, "revision": 2.0}, {"on_policy": 15, "revision": 30, "reviser_train": 10}),
        ({"on_policy": 1.0, "revision": 0.0}, {"on_policy": 40, "revision": 0, "reviser_train": 10}),
        ({"on_policy": 1.0, "revision_direct": 1.0}, {"on_policy": 40, "revision": 30, "reviser_train": 10}),
    ],
)
def test_mix_sets_the_composition(weights, expected):
    kept, counts = mix_pairs(rows_of({"on_policy": 40, "revision": 30, "reviser_train": 10}), weights, seed=0)
    assert {t: c["after"] for t, c in counts.items()} == expected
    assert {t: c["before"] for t, c in counts.items()} == {"on_policy": 40, "revision": 30, "reviser_train": 10}
    assert len(kept) == sum(expected.values())


def test_mix_is_seeded():
    rows = rows_of({"on_policy": 40, "revision": 30})
    first, _ = mix_pairs(rows, {"on_policy": 0.25, "revision": 0.25}, seed=1)
    again, _ = mix_pairs(list(reversed(rows)), {"on_policy": 0.25, "revision": 0.25}, seed=1)
    other, _ = mix_pairs(rows, {"on_policy": 0.25, "revision": 0.25}, seed=2)
    assert first == again
    assert {r["pair_id"] for r in first} != {r["pair_id"] for r in other}


DRAFT = "Paris is the capital of France and its largest city, on the Seine."
BROKEN_REVISIONS = {
    "empty": "  \n ",
    "unchanged": "paris is the capital of france, and its largest city on the seine!",
    # the issue's own example: the revision ends with the template's closing words
    "template_echo": "Paris is the capital of France. Reply with the improved",
    "template_echo_marker": "[Draft response]\nParis is the capital.",
    "restates_draft": DRAFT + " It has about two million inhabitants.",
}


@pytest.mark.parametrize("case", sorted(BROKEN_REVISIONS))
def test_broken_revisions_are_dropped_and_counted_by_reason(case):
    reason = case.removesuffix("_marker")
    results = [item("q", [3.0, 2.0], texts=[DRAFT, "Lyon."], revisions={0: (BROKEN_REVISIONS[case], 9.0)})]
    rows, dropped = make(results, ALL, 0.0)
    assert by_type(rows, "revision") == [] and by_type(rows, "revision_direct") == []
    assert dropped[f"revision:{reason}"] == 1 and dropped[f"revision_direct:{reason}"] == 1
    assert dropped[f"reviser_train:revision_{reason}"] == 1
    # the broken revision scored 9 but is never reviser_train's chosen: the draft wins over the worst sample
    assert [(r["chosen_source"], r["rejected_source"]) for r in by_type(rows, "reviser_train")] == [
        ("sample:0", "sample:1")
    ]


@pytest.mark.parametrize("case", sorted(BROKEN_REVISIONS))
def test_each_revision_check_can_be_switched_off(case):
    reason = case.removesuffix("_marker")
    off = RevisionChecks(**{reason: None if reason == "restates_draft" else False})
    results = [item("q", [3.0, 2.0], texts=[DRAFT, "Lyon."], revisions={0: (BROKEN_REVISIONS[case], 9.0)})]
    rows, dropped = make(results, ["revision"], 0.0, revision_checks=off)
    assert dropped[f"revision:{reason}"] == 0
    if reason in ("template_echo", "restates_draft"):  # no other check applies: the pair is kept
        assert len(by_type(rows, "revision")) == 1 and not dropped
    if reason == "unchanged":  # the same words also restate the whole draft
        assert dropped == {"revision:restates_draft": 1}


def test_a_good_revision_that_keeps_the_draft_s_opening_passes():
    revision = "Paris is the capital of France. It lies on the Seine and has about two million inhabitants."
    results = [item("q", [3.0, 2.0], texts=[DRAFT, "Lyon."], revisions={0: (revision, 9.0)})]
    rows, dropped = make(results, ["revision", "reviser_train"], 0.0)
    assert len(by_type(rows, "revision")) == 1 and not dropped
    assert by_type(rows, "reviser_train")[0]["chosen_source"] == "revision:0"


def cut(text, score, source):
    """A response that hit the token limit."""
    return Response(text, score, source, "length", 128)


def test_truncated_responses_are_not_pair_material_by_default():
    whole = PromptResults(
        "q",
        [{"role": "user", "content": "question q"}],
        [Response("short and done", 4.0, "sample:0", "stop", 3), cut("cut off mid", 9.0, "sample:1")],
        {0: cut("a revision cut off", 8.0, "revision:0")},
        Response("the reference", 6.0, "reference"),
    )
    rows, dropped = make([whole], ALL, 0.0)
    # on_policy: one complete sample is left; revision pairs: the revision is cut; reviser_train: the complete draft
    # is compared with the complete responses only (the reference, 6.0), never with the cut sample that scored 9
    assert dropped == {"on_policy:truncated": 1, "revision:truncated": 1, "revision_direct:truncated": 1}
    assert [(r["pair_type"], r["chosen_source"], r["rejected_source"]) for r in rows] == [
        ("reviser_train", "reference", "sample:0")
    ]
    assert rows[0]["chosen_finish_reason"] is None and rows[0]["rejected_finish_reason"] == "stop"
    assert rows[0]["rejected_tokens"] == 3


def test_allow_truncated_keeps_them_and_the_columns_say_so():
    cut_pair = item("q", [1.0, 2.0])
    cut_pair.samples[1] = cut("cut off mid", 9.0, "sample:1")
    rows, dropped = make([cut_pair], ["on_policy"], 0.0, allow_truncated=True)
    assert not dropped
    (row,) = rows
    assert (row["chosen_finish_reason"], row["chosen_tokens"]) == ("length", 128)
    _, dropped = make([cut_pair], ["on_policy"], 0.0)
    assert dropped == {"on_policy:truncated": 1}


def test_a_truncated_draft_gives_no_reviser_train_pair():
    results = [item("q", [3.0, 2.0], revisions={0: ("a full revision of the answer", 9.0)})]
    results[0].samples[0] = cut("answer 0 to q", 3.0, "sample:0")
    rows, dropped = make(results, ["revision", "reviser_train"], 0.0)
    assert rows == [] and dropped == {"revision:truncated": 1, "reviser_train:truncated": 1}


def lengths(prompt_id, chosen_tokens, rejected_tokens):
    return PromptResults(
        prompt_id,
        [{"role": "user", "content": f"question {prompt_id}"}],
        [Response(f"long {prompt_id}", 9.0, "sample:0", "stop", chosen_tokens)]
        + [Response(f"short {prompt_id}", 1.0, "sample:1", "stop", rejected_tokens)],
    )


def test_max_length_ratio_drops_pairs_whose_chosen_is_much_longer():
    results = [lengths("a", 300, 100), lengths("b", 150, 100), lengths("c", 200, 100), lengths("d", 50, None)]
    rows, dropped = make(results, ["on_policy"], 0.0, max_length_ratio=2.0)
    assert sorted(r["prompt_id"] for r in rows) == ["b", "c"]  # 1.5x and exactly 2x pass
    assert dropped == {"on_policy:length_ratio": 1, "on_policy:length_unknown": 1}
    rows, dropped = make(results, ["on_policy"], 0.0)  # off by default: every pair is kept
    assert len(rows) == 4 and not dropped


def test_length_bias_per_pair_type_on_a_hand_computed_table():
    from realign_data.quality import length_bias

    rows = [
        pair_row(0, pair_type="revision", chosen_tokens=30, rejected_tokens=10, margin=4.0, chosen_score=7.0),
        pair_row(1, pair_type="revision", chosen_tokens=20, rejected_tokens=10, margin=2.0, chosen_score=5.0),
        pair_row(2, pair_type="revision", chosen_tokens=10, rejected_tokens=10, margin=1.0, chosen_score=4.0),
        pair_row(3, pair_type="revision", chosen_tokens=None, rejected_tokens=10),
        pair_row(4, pair_type="on_policy", chosen_tokens=5, rejected_tokens=8),
    ]
    stats = length_bias(pair_table(rows))
    revision = stats["revision"]
    assert (revision["pairs"], revision["unknown"]) == (3, 1)
    assert revision["chosen_tokens_mean"] == 20.0 and revision["rejected_tokens_mean"] == 10.0
    assert revision["chosen_longer_share"] == pytest.approx(2 / 3, abs=1e-4)
    # margins 4, 2, 1 against length differences 20, 10, 0: Pearson r = 0.9820 (worked by hand)
    assert revision["margin_length_corr"] == pytest.approx(0.9820, abs=1e-4)
    assert stats["on_policy"] == {
        "pairs": 1,
        "unknown": 0,
        "chosen_tokens_mean": 5.0,
        "rejected_tokens_mean": 8.0,
        "chosen_longer_share": 0.0,
        "margin_length_corr": None,
    }
