"""Arena-Hard judging as each version's official gen_judgment.py does it, against a real local OpenAI-compatible
server: the config's temperature and max_tokens, v0.1's continuation in the same conversation (message read from
gen_judgment.py), contradictory labels given up, v2.0's last upper-cased match and label spellings, the official
record layouts, and the judge cache (old files migrated, unparseable games judged anew)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml

from evaluation.arena import continuation_message, v01_score, v2_score
from evaluation.arena_scoring import v2_battles
from realign_data.errors import InputError
from realign_data.files import content_key
from tests.helpers import assert_one_line_error, run_cli
from tests.openai_server import Reply, ScriptedOpenAIServer

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ARENA = SHARED / "arena_hard"
OFFICIAL_CODE = ARENA / "code" / "lm-sys-efc012e" / "gen_judgment.py"  # lm-sys/arena-hard-auto@efc012e

# A file shaped like lm-sys gen_judgment.py's attempts loop, with a message of this test's own: the message the
# judge receives must be the one the file holds, read at run time.
STAND_IN_MESSAGE = "stand-in: please finish with a verdict label"
STAND_IN_CODE = f'''
def judgment(**args):
    conv = []
    for _ in range(configs['number_of_judgment_attempts']):
        conv.append({{"role": "assistant", "content": new_judgment}})
        if not try_again:
            break
        conv.append({{"role": "user", "content": "{STAND_IN_MESSAGE}"}})
'''
V01_TEMPLATE = "<|User Prompt|>\n{question_1}\n\n<A>\n{answer_1}\n</A>\n\n<B>\n{answer_2}\n</B>"


def env(tmp_path: Path) -> dict[str, str]:
    return {"REALIGN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "test-key"}


def run(tmp_path: Path, *args) -> dict:
    result = run_cli(*map(str, args), prog="realign-eval", env=env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((Path(args[args.index("-o") + 1]) / "report.json").read_text())


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def v01_inputs(
    tmp_path: Path, count: int, temperature: float, max_tokens: int, attempts: int = 2, baseline_model: str = "base"
):
    config = tmp_path / "judge_config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "judge_model": "judge",
                "baseline_model": "base",
                "pairwise": True,
                "baseline": True,
                "reference": False,
                "temperature": temperature,
                "max_tokens": max_tokens,
                "number_of_judgment_attempts": attempts,
                "regex_pattern": r"\[\[([AB<>=]+)\]\]",
                "system_prompt": "Judge fairly.",
                "prompt_template": [V01_TEMPLATE],
            }
        )
    )
    questions = write_jsonl(
        tmp_path / "question.jsonl",
        [
            {"question_id": f"q{i}", "category": "arena-hard-v0.1", "turns": [{"content": f"Question {i}?"}]}
            for i in range(count)
        ],
    )
    baseline = write_jsonl(
        tmp_path / "base.jsonl",
        [
            {"question_id": f"q{i}", "model_id": baseline_model, "choices": [{"turns": [{"content": f"base {i}"}]}]}
            for i in range(count)
        ],
    )
    model = write_jsonl(
        tmp_path / "ours.jsonl",
        [
            {"question_id": f"q{i}", "model_id": "ours", "choices": [{"turns": [{"content": f"ours {i}"}]}]}
            for i in range(count)
        ],
    )
    code = tmp_path / "gen_judgment.py"
    code.write_text(STAND_IN_CODE)
    return config, questions, baseline, model, code


def question_of(request: dict) -> int:
    return int(re.search(r"Question (\d+)\?", request["messages"][1]["content"]).group(1))


def test_v01_request_settings_continuation_contradictions_and_layout(tmp_path):
    """q0: no verdict, then one after the continuation; q1: two different labels (given up, no second call); q2:
    never a verdict (both attempts used); q3: a verdict at once. Requests carry the config's temperature and
    max_tokens, the continuation included."""
    config, questions, baseline, model, code = v01_inputs(tmp_path, 4, temperature=0.25, max_tokens=77)
    requests = []

    def script(request, seen):
        requests.append(request)
        question, turns = question_of(request), len(request["messages"])
        if question == 0:
            return Reply(content="Let me think about it." if turns == 2 else "So: [[B>A]]")
        if question == 1:
            return Reply(content="First [[A>B]], on reflection [[B>A]]")
        if question == 2:
            return Reply(content="no label here")
        return Reply(content="My final verdict is [[A=B]]")

    with ScriptedOpenAIServer(script) as server:
        args = [
            "arena",
            "--judge-config",
            config,
            "--questions",
            questions,
            "--baseline-answers",
            baseline,
            "--outputs",
            model,
            "--judge-code",
            code,
            "--judge-base-url",
            server.url,
            "--rounds",
            "5",
        ]
        report = run(tmp_path, *args, "-o", tmp_path / "r")
        first_calls = server.calls
        again = run(tmp_path, *args, "-o", tmp_path / "again")
        rerun_calls = server.calls - first_calls

    assert {(r["temperature"], r["max_tokens"]) for r in requests} == {(0.25, 77)}
    # q0: 2 games x 2 calls; q1: 2 x 1 (contradictory: given up); q2: 2 x 2; q3: 2 x 1
    assert first_calls == 4 + 2 + 4 + 2
    continued = [r for r in requests[:first_calls] if len(r["messages"]) == 4 and question_of(r) == 0]
    assert len(continued) == 2
    for request in continued:
        system, user, assistant, follow_up = request["messages"]
        assert system == {"role": "system", "content": "Judge fairly."}
        assert assistant == {"role": "assistant", "content": "Let me think about it."}
        assert follow_up == {"role": "user", "content": STAND_IN_MESSAGE}
    records = {
        r["question_id"]: r
        for r in (json.loads(line) for line in (tmp_path / "r" / "judgments" / "ours.jsonl").read_text().splitlines())
    }
    assert set(records) == {"q0", "q1", "q2", "q3"}
    for qid, record in records.items():
        assert {"question_id", "model", "judge", "games"} <= set(record) and record["model"] == "ours"
        i = qid[1:]
        # game 1 shows the baseline as A, game 2 the model; the prompt filled as str.format fills the template
        assert [g["user_prompt"] for g in record["games"]] == [
            V01_TEMPLATE.format(question_1=f"Question {i}?", answer_1=f"base {i}", answer_2=f"ours {i}"),
            V01_TEMPLATE.format(question_1=f"Question {i}?", answer_1=f"ours {i}", answer_2=f"base {i}"),
        ]
    # the judgment is the answers joined, each after a newline, parsed as a whole
    assert [(g["judgment"], g["score"]) for g in records["q0"]["games"]] == [
        ("\nLet me think about it.\nSo: [[B>A]]", "B>A")
    ] * 2
    assert [g["score"] for g in records["q1"]["games"]] == [None, None]
    assert records["q2"]["games"][0]["judgment"] == "\nno label here\nno label here"
    assert [g["score"] for g in records["q2"]["games"]] == [None, None]
    assert [g["score"] for g in records["q3"]["games"]] == ["A=B", "A=B"]
    assert report["failures"] == 4 and report["judge_usage"]["unparseable"] == 4
    assert report["settings"]["judge_request"]["continuation"] == STAND_IN_MESSAGE
    assert (report["settings"]["judge_request"]["temperature"], report["settings"]["judge_request"]["max_tokens"]) == (
        0.25,
        77,
    )
    # a rerun replays every game that has a verdict (continued ones too) and judges the failed ones anew
    assert rerun_calls == 2 * 1 + 2 * 2
    assert again["judge_usage"]["judged_anew"] == 4 and again["leaderboard"] == report["leaderboard"]


def test_v01_with_one_attempt_asks_once_and_needs_no_gen_judgment(tmp_path):
    config, questions, baseline, model, _ = v01_inputs(tmp_path, 2, temperature=0.0, max_tokens=16, attempts=1)
    with ScriptedOpenAIServer(lambda request, seen: Reply(content="undecided")) as server:
        result = run_cli(
            "arena",
            "--judge-config",
            str(config),
            "--questions",
            str(questions),
            "--baseline-answers",
            str(baseline),
            "--outputs",
            str(model),
            "--judge-base-url",
            server.url,
            "--rounds",
            "2",
            "-o",
            str(tmp_path / "r"),
            prog="realign-eval",
            env=env(tmp_path),
        )
        assert server.calls == 4  # one call per game: no continuation (and no gen_judgment.py needed)
    assert result.returncode == 1 and "no parseable verdict" in result.stderr
    unused = run_cli(
        "arena",
        "--judge-config",
        str(config),
        "--questions",
        str(questions),
        "--baseline-answers",
        str(baseline),
        "--outputs",
        str(model),
        "--judge-code",
        str(tmp_path / "gen_judgment.py"),
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
        "-o",
        str(tmp_path / "u"),
        prog="realign-eval",
        env=env(tmp_path),
    )
    assert_one_line_error(unused, 2, "--judge-code", "not used")


def test_get_score_of_each_version_by_hand(tmp_path):
    pattern = re.compile(r"\[\[([AB<>=]+)\]\]")
    assert v01_score("no label", pattern) == (None, True)  # ask again
    assert v01_score("[[A>B]] ... again [[A>B]]", pattern) == ("A>B", False)
    assert v01_score("[[A>B]] ... no, [[B>A]]", pattern) == (None, False)  # contradictory: give up
    assert v01_score("[[a>b]]", pattern) == (None, True)  # v0.1 does not upper-case
    patterns = (pattern, re.compile(r"\[([AB<>=]+)\]"))
    assert v2_score("[[a>b]] then [[B>>A]]", patterns) == "B>>A"  # upper-cased, last match
    assert v2_score("[B<A] and [[A=B]]", patterns) == "A=B"  # the first pattern that matches decides
    assert v2_score("nothing", patterns) is None
    (tmp_path / "g.py").write_text("def judgment():\n    conv.append({'role': 'user', 'content': 'x'})\n")
    with pytest.raises(InputError, match="number_of_judgment_attempts loop"):
        continuation_message(tmp_path / "g.py")  # not inside the attempts loop


@pytest.mark.skipif(not OFFICIAL_CODE.is_file(), reason=f"{OFFICIAL_CODE} (lm-sys gen_judgment.py) is not present")
def test_the_official_continuation_message_is_read_from_gen_judgment():
    text = OFFICIAL_CODE.read_text()
    message = continuation_message(OFFICIAL_CODE)
    # the user turn appended inside the attempts loop, after the `if not try_again: break`
    loop = text[text.index("for _ in range(configs['number_of_judgment_attempts'])") :]
    assert f'conv.append({{"role": "user", "content": "{message}"}})' in loop.split("result = {")[0]


@pytest.mark.skipif(not (ARENA / "config" / "judge_config_v0.1.yaml").is_file(), reason="../shared/data absent")
def test_official_v01_config_settings_reach_the_server(tmp_path):
    official = yaml.safe_load((ARENA / "config" / "judge_config_v0.1.yaml").read_text())
    _, questions, baseline, model, code = v01_inputs(
        tmp_path, 1, temperature=0, max_tokens=1, baseline_model=official["baseline_model"]
    )
    seen_requests = []

    def script(request, seen):
        seen_requests.append(request)
        return Reply(content="[[A>B]]")

    with ScriptedOpenAIServer(script) as server:
        run(
            tmp_path,
            "arena",
            "--judge-config",
            ARENA / "config" / "judge_config_v0.1.yaml",
            "--questions",
            questions,
            "--baseline-answers",
            baseline,
            "--outputs",
            model,
            "--judge-code",
            code,
            "--judge-base-url",
            server.url,
            "--rounds",
            "2",
            "-o",
            tmp_path / "r",
        )
    assert seen_requests and all(
        r["temperature"] == official["temperature"] and r["max_tokens"] == official["max_tokens"] for r in seen_requests
    )
    assert seen_requests[0]["messages"][0]["content"] == official["system_prompt"]


def v2_inputs(tmp_path: Path, count: int, temperature: float, max_tokens: int):
    config = tmp_path / "arena-hard-v2.0.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "judge_model": "judge",
                "temperature": temperature,
                "max_tokens": max_tokens,
                "bench_name": "bench",
                "reference": None,
                "regex_patterns": [r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"],
                "prompt_template": "<|User Prompt|>\n{QUESTION}\n\n<A>\n{ANSWER_A}\n</A>\n\n<B>\n{ANSWER_B}\n</B>",
            }
        )
    )
    settings = tmp_path / "judge_settings.yaml"
    settings.write_text(
        yaml.safe_dump({"judge_settings": {"hard_prompt": {"baseline": "base", "system_prompt": "Judge, hard."}}})
    )
    questions = write_jsonl(
        tmp_path / "question.jsonl",
        [{"uid": f"u{i}", "category": "hard_prompt", "prompt": f"Question {i}?"} for i in range(count)],
    )
    answers = {}
    for name in ("base", "ours"):
        answers[name] = write_jsonl(
            tmp_path / f"{name}.jsonl",
            [
                {
                    "uid": f"u{i}",
                    "model": name,
                    "messages": [
                        {"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": {"answer": f"{name} {i}"}},
                    ],
                }
                for i in range(count)
            ],
        )
    return config, settings, questions, answers


# (judge text of game 1, of game 2) -> the labels lmarena's get_score gives: the last match of the first pattern
# that matches, in the upper-cased text; its show_result table (label_to_score) then gives the model's scores
V2_CASES = [
    (("[[A>B]] at first, but finally [[a<b]]", "[[B=A]]"), ("A<B", "B=A")),
    (("[[A<<B]]", "[B<A]"), ("A<<B", "B<A")),  # the second pattern when the first finds nothing
    (("[[B<<A]]", "[[A>B]] [b>>a]"), ("B<<A", "A>B")),  # the first pattern decides when it matches at all
]


def test_v2_request_settings_last_match_label_spellings_and_layout(tmp_path):
    config, settings, questions, answers = v2_inputs(tmp_path, len(V2_CASES) + 1, temperature=0.4, max_tokens=321)
    requests = []

    def script(request, seen):
        requests.append(request)
        question = question_of(request)
        game = 0 if "<A>\nbase" in request["messages"][1]["content"] else 1
        if question == len(V2_CASES):
            return Reply(status=400) if game == 1 else Reply(content="[[A>B]]")  # a failed call: a null game
        return Reply(content=V2_CASES[question][0][game])

    with ScriptedOpenAIServer(script) as server:
        report = run(
            tmp_path,
            "arena",
            "--judge-config",
            config,
            "--judge-settings",
            settings,
            "--questions",
            questions,
            "--baseline-answers",
            answers["base"],
            "--outputs",
            answers["ours"],
            "--judge-base-url",
            server.url,
            "--rounds",
            "3",
            "-o",
            tmp_path / "r",
        )
    assert {(r["temperature"], r["max_tokens"]) for r in requests} == {(0.4, 321)}
    records = [json.loads(line) for line in (tmp_path / "r" / "judgments" / "ours.jsonl").read_text().splitlines()]
    for record in records:
        assert list(record) == ["uid", "category", "judge", "model", "baseline", "games"]
        assert (record["category"], record["model"], record["baseline"]) == ("hard_prompt", "ours", "base")
    by_uid = {r["uid"]: r for r in records}
    for index, (texts, labels) in enumerate(V2_CASES):
        games = by_uid[f"u{index}"]["games"]
        assert tuple(g["score"] for g in games) == labels
        assert [g["judgment"] for g in games] == [{"answer": text} for text in texts]
        assert games[0]["prompt"][0] == {"role": "system", "content": "Judge, hard."}
    failed = by_uid[f"u{len(V2_CASES)}"]["games"]
    assert failed[0]["score"] == "A>B" and failed[1] is None
    # label_to_score of lmarena's show_result.py (weight 3), by hand: scores = game 2's + (1 - game 1's)
    battles, dropped, unknown = v2_battles(records, lambda record: "base")
    scores = {uid: sorted(group["score"]) for uid, group in battles.groupby("question_id")}
    assert scores == {
        "u0": sorted([0.5] + [1 - 0]),  # B=A: 0.5; A<B in game 1: 1 - 0
        "u1": sorted([1] + [1 - 0] * 3),  # B<A: 1; A<<B (strong) in game 1: 3 x (1 - 0)
        "u2": sorted([1] + [1 - 1] * 3),
    }  # A>B: 1; B<<A (strong) in game 1: 3 x (1 - 1)
    assert dropped == 1 and not unknown
    assert report["judge_usage"]["failed"] == 1


def test_an_old_judge_cache_file_is_migrated_and_its_answers_replayed(tmp_path):
    """A cache written before logprobs existed (four columns, keyed by judge, messages, max_new_tokens,
    temperature, attempt): the run adds the columns and replays its answers without a call."""
    config, questions, baseline, model, code = v01_inputs(tmp_path, 1, temperature=0.0, max_tokens=64, attempts=1)
    home = tmp_path / "home"
    home.mkdir()
    db = sqlite3.connect(home / "judge-cache.sqlite")
    db.execute(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, text TEXT, prompt_tokens INTEGER, completion_tokens INTEGER)"
    )
    for first, second in (("base 0", "ours 0"), ("ours 0", "base 0")):
        messages = [
            {"role": "system", "content": "Judge fairly."},
            {"role": "user", "content": V01_TEMPLATE.format(question_1="Question 0?", answer_1=first, answer_2=second)},
        ]
        key = content_key("openai:judge", messages, 64, 0.0, 0)  # the old key, as the old code computed it
        db.execute("INSERT INTO answers VALUES (?, ?, ?, ?)", (key, "old answer [[A>B]]", 5, 3))
    db.commit()
    db.close()
    with ScriptedOpenAIServer(lambda request, seen: Reply(content="[[A=B]]")) as server:
        report = run(
            tmp_path,
            "arena",
            "--judge-config",
            config,
            "--questions",
            questions,
            "--baseline-answers",
            baseline,
            "--outputs",
            model,
            "--judge-base-url",
            server.url,
            "--rounds",
            "2",
            "-o",
            tmp_path / "r",
        )
        assert server.calls == 0
    assert report["judge_usage"]["cached"] == 2
    columns = [row[1] for row in sqlite3.connect(home / "judge-cache.sqlite").execute("PRAGMA table_info(answers)")]
    assert columns == ["key", "text", "prompt_tokens", "completion_tokens", "finish_reason", "logprobs"]
