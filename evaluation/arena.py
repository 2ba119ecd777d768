"""Arena-Hard judging as each version's official gen_judgment.py does it: two games per question, positions swapped.

Two layouts are read:
- lm-sys v0.1 (``judge_config.yaml``, at commit efc012e): ``system_prompt``, ``prompt_template: [...]`` with
  ``{question_1}``, ``{answer_1}``, ``{answer_2}``, ``regex_pattern``, ``baseline_model``, ``temperature``,
  ``max_tokens``, ``number_of_judgment_attempts``. A judgment is scored as its ``get_score``: the distinct
  non-empty matches of the pattern over the judgment; none -> ask again, one -> the verdict, several -> give up
  (contradictory). Asking again continues the same conversation (the judge's answer, then upstream's continuation
  message, read at run time from its gen_judgment.py) at the config's temperature, and the judgment is the
  answers joined, each after a newline, as upstream stores it.
- lmarena v2 (``arena-hard-v2.0.yaml``, ``arena-hard-v0.1.yaml``): ``prompt_template`` with ``{QUESTION}``,
  ``{ANSWER_A}``, ``{ANSWER_B}``, ``regex_patterns``, ``temperature``, ``max_tokens``, plus judge settings
  (``--judge-settings``) that give each question category its baseline model and system prompt. One answer per
  game; the verdict is the last match, in the upper-cased judgment, of the first pattern that matches at all.

Judgments are written in each version's official layout, so upstream's show_result.py reads them as they are.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from evaluation.arena_scoring import V01, V2
from evaluation.arena_settings import read_judge_settings
from evaluation.judging import CachedJudge
from evaluation.records import read_located_records, read_text
from realign_data.engines import SamplingParams
from realign_data.errors import InputError
from realign_data.files import json_kind


@dataclass(frozen=True)
class ArenaSpec:
    bench: str
    version: str  # "v0.1" (lm-sys judge_config.yaml) or "v2.0" (lmarena's layout)
    judge_model: str
    temperature: float
    max_tokens: int
    attempts: int  # v0.1's number_of_judgment_attempts; lmarena's gen_judgment asks once
    patterns: tuple[str, ...]
    template: str  # the official template, filled with str.format as upstream does
    settings: dict[str, dict[str, str]]  # category -> {baseline, system_prompt}

    def setting(self, category: str | None) -> dict[str, str]:
        if category in self.settings:
            return self.settings[category]
        if len(self.settings) == 1:
            return next(iter(self.settings.values()))
        raise InputError(f"no judge setting for question category {category!r} (settings: {', '.join(self.settings)})")

    def prompt(self, question: str, first: str, second: str) -> str:
        """The user turn of one game: v0.1 fills question_1/answer_1/answer_2, v2.0 QUESTION/ANSWER_A/ANSWER_B."""
        if self.version == V01:
            return self.template.format(question_1=question, answer_1=first, answer_2=second)
        return self.template.format(QUESTION=question, ANSWER_A=first, ANSWER_B=second)

    def params(self) -> SamplingParams:
        """The judge request as upstream sends it: the config's temperature and max_tokens (top_p left at 1)."""
        return SamplingParams(n=1, temperature=self.temperature, top_p=1.0, max_new_tokens=self.max_tokens)


def _yaml(path: Path, what: str) -> dict:
    if path.is_dir():
        raise InputError(f"{path}: is a directory; the {what} is a YAML file")
    if not path.exists():
        raise InputError(f"{path}: no such file (the {what})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{where}: the {what} is not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the {what} must be a YAML mapping, got {json_kind(data)}")
    return data


def _string(path: Path | str, config: dict, field: str) -> str:
    value = config.get(field)
    if not isinstance(value, str) or not value:
        raise InputError(f"{path}: field '{field}' must be a non-empty string, got {json_kind(value)}")
    return value


def _number(path: Path, config: dict, field: str, default, kind, minimum):
    value = config.get(field, default)
    if value is None:
        value = default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (kind is int and value != int(value))
        or value < minimum
    ):
        raise InputError(
            f"{path}: field '{field}' must be {'an integer' if kind is int else 'a number'} >= {minimum}, got {value!r}"
        )
    return kind(value)


def _pattern(path: Path, field: str, pattern) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{path}: field '{field}' must hold regular expressions, got {json_kind(pattern)}")
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: a warning, not one line of error
            warnings.simplefilter("ignore")
            compiled = re.compile(pattern)
    except re.error as exc:
        raise InputError(f"{path}: field '{field}' {pattern!r} is not a valid regular expression ({exc})") from None
    if compiled.groups > 1:  # upstream's findall would give tuples, which its get_score cannot strip
        raise InputError(
            f"{path}: field '{field}' {pattern!r} has {compiled.groups} groups; the verdict label is "
            "the pattern's one group (or its whole match)"
        )
    return pattern


def _template(path: Path, template, arguments: tuple[str, ...]) -> str:
    """The official template, checked to take exactly these str.format arguments (as upstream fills it)."""
    if not isinstance(template, str) or not template:
        raise InputError(f"{path}: field 'prompt_template' must be a non-empty string, got {json_kind(template)}")
    missing = [f"{{{name}}}" for name in arguments if f"{{{name}}}" not in template]
    if missing:
        raise InputError(f"{path}: field 'prompt_template' lacks {', '.join(missing)}")
    try:
        template.format(**{name: "" for name in arguments})
    except (KeyError, IndexError) as exc:
        raise InputError(
            f"{path}: field 'prompt_template' has a placeholder {exc} that upstream does not fill"
        ) from None
    except ValueError as exc:
        raise InputError(f"{path}: field 'prompt_template' is not a str.format template ({exc})") from None
    return template


def _refuse(path: Path, config: dict, field: str, wanted, what: str) -> None:
    if field in config and config[field] is not None and config[field] != wanted:
        raise InputError(f"{path}: field '{field}': {config[field]!r} is not supported ({what})")


def load_judge_config(path: Path, settings_path: Path | None = None) -> ArenaSpec:
    config = _yaml(path, "judge config")
    for field in ("judge_model", "prompt_template"):
        if field not in config:
            raise InputError(f"{path}: missing field '{field}' (an Arena-Hard judge config is expected)")
    common = {
        "judge_model": _string(path, config, "judge_model"),
        "temperature": _number(path, config, "temperature", 0.0, float, 0),
        "max_tokens": _number(path, config, "max_tokens", 4096, int, 1),
    }
    bench = config.get("bench_name")
    if bench is not None and not isinstance(bench, str):
        raise InputError(f"{path}: field 'bench_name' must be a string, got {json_kind(bench)}")
    _refuse(path, config, "reference", False, "judging against reference answers is not implemented")
    if isinstance(config["prompt_template"], list):  # lm-sys v0.1 layout
        for field in ("system_prompt", "regex_pattern", "baseline_model"):
            if field not in config:
                raise InputError(f"{path}: missing field '{field}'")
        _refuse(path, config, "pairwise", True, "only pairwise judging against the baseline is implemented")
        _refuse(path, config, "baseline", True, "only pairwise judging against the baseline is implemented")
        if len(config["prompt_template"]) != 1:
            raise InputError(
                f"{path}: field 'prompt_template' must hold one template (one user turn), got "
                f"{len(config['prompt_template'])}"
            )
        template = _template(path, config["prompt_template"][0], ("question_1", "answer_1", "answer_2"))
        bench = bench or "arena-hard-v0.1"
        return ArenaSpec(
            bench=bench,
            version=V01,
            template=template,
            patterns=(_pattern(path, "regex_pattern", config["regex_pattern"]),),
            attempts=_number(path, config, "number_of_judgment_attempts", 1, int, 1),
            **common,
            settings={
                bench: {
                    "baseline": _string(path, config, "baseline_model"),
                    "system_prompt": _string(path, config, "system_prompt"),
                }
            },
        )
    template = _template(path, config["prompt_template"], ("QUESTION", "ANSWER_A", "ANSWER_B"))
    patterns = config.get("regex_patterns")
    if not isinstance(patterns, list) or not patterns:
        raise InputError(
            f"{path}: field 'regex_patterns' must be a non-empty list of regular expressions, got {json_kind(patterns)}"
        )
    patterns = tuple(_pattern(path, "regex_patterns", pattern) for pattern in patterns)
    if settings_path is None:
        raise InputError(
            f"{path}: this config takes per-category judge settings; pass --judge-settings FILE "
            "(upstream's utils/judge_utils.py, or a YAML copy of its JUDGE_SETTINGS)"
        )
    return ArenaSpec(
        bench=bench or path.stem,
        version=V2,
        patterns=patterns,
        template=template,
        attempts=1,
        settings=read_judge_settings(settings_path),
        **common,
    )


def _is_attempts_loop(node: ast.AST) -> bool:
    return isinstance(node, ast.For) and "number_of_judgment_attempts" in ast.unparse(node.iter)


def _user_turn(node: ast.AST) -> str | None:
    """The content of ``<conversation>.append({"role": "user", "content": "<literal>"})``, else None."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "append"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Dict)
    ):
        return None
    fields = {
        key.value: value
        for key, value in zip(node.args[0].keys, node.args[0].values, strict=True)
        if isinstance(key, ast.Constant)
    }
    role, content = fields.get("role"), fields.get("content")
    if (
        isinstance(role, ast.Constant)
        and role.value == "user"
        and isinstance(content, ast.Constant)
        and isinstance(content.value, str)
    ):
        return content.value
    return None


def continuation_message(path: Path) -> str:
    """v0.1's continuation message, read (never run) from lm-sys's gen_judgment.py: the user turn appended inside
    the ``number_of_judgment_attempts`` loop when the judgment has no verdict yet."""
    text = read_text(path)
    try:
        module = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise InputError(f"{path}:{exc.lineno or 0}: not valid Python ({exc.msg})") from None
    found = {
        message
        for loop in ast.walk(module)
        if _is_attempts_loop(loop)
        for node in ast.walk(loop)
        if (message := _user_turn(node)) is not None
    }
    if len(found) != 1:
        raise InputError(
            f"{path}: expected one literal user turn appended inside the number_of_judgment_attempts "
            f"loop (lm-sys gen_judgment.py), found {len(found)}"
        )
    return found.pop()


def question_fields(record: dict, where: str) -> tuple[str, str, str | None]:
    """(id, first user turn, category) of a v0.1 or v2.0 question."""
    qid = record.get("question_id", record.get("uid"))
    text = record.get("prompt")
    if text is None:
        try:
            text = record["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
    if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)) or not isinstance(text, str):
        raise InputError(f"{where}: a question needs question_id/uid and turns[0].content or prompt")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise InputError(f"{where}: field 'category' must be a string, got {json_kind(category)}")
    return str(qid), text, category


def answer_text(record: dict, where: str) -> str:
    """The first answer of a v0.1 (choices/turns) or v2.0 (messages) answer record."""
    try:
        if "choices" in record:
            return record["choices"][0]["turns"][0]["content"]
        content = [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]
        return content["answer"] if isinstance(content, dict) else content
    except (KeyError, IndexError, TypeError):
        raise InputError(
            f"{where}: answer record {record.get('question_id', record.get('uid'))!r} has no answer text"
        ) from None


def read_answer_records(path: Path) -> tuple[str, list[tuple[str, str, dict]]]:
    """(model name, [(location, question id, record)]) of an answer file (v0.1 ``choices`` or v2.0 ``messages``)."""
    located = read_located_records(path)
    records = []
    for where, record in located:
        qid = record.get("question_id", record.get("uid"))
        if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise InputError(f"{where}: an answer record needs field 'question_id' (or 'uid'), got {json_kind(qid)}")
        records.append((where, str(qid), record))
    first = located[0][1]
    name = first.get("model_id", first.get("model", path.stem))
    if not isinstance(name, str) or not name:
        raise InputError(f"{located[0][0]}: field 'model_id' (or 'model') must be a model name, got {json_kind(name)}")
    return name, records


def read_answers(path: Path) -> tuple[str, dict[str, str]]:
    """(model name, {question id: answer}) of an answer file."""
    name, records = read_answer_records(path)
    answers = {}
    for where, qid, record in records:
        text = answer_text(record, where)
        if not isinstance(text, str):
            raise InputError(f"{where}: the answer text of question {qid!r} must be a string, got {json_kind(text)}")
        answers[qid] = text
    return name, answers


def v01_score(judgment: str, pattern: re.Pattern) -> tuple[str | None, bool]:
    """lm-sys v0.1's get_score: (verdict, ask again). Distinct non-empty matches: none -> (None, True), one ->
    (the first match without surrounding newlines, False), several -> (None, False): contradictory, give up."""
    matches = [match for match in pattern.findall(judgment) if match != ""]
    if len(set(matches)) == 0:
        return None, True
    if len(set(matches)) == 1:
        return matches[0].strip("\n"), False
    return None, False


def v2_score(judgment: str, patterns: tuple[re.Pattern, ...]) -> str | None:
    """lmarena v2.0's get_score: the first pattern with a non-empty match in the upper-cased judgment decides, and
    its last match (without surrounding newlines) is the verdict."""
    for pattern in patterns:
        matches = [match for match in pattern.findall(judgment.upper()) if match != ""]
        if matches:
            return matches[-1].strip("\n")
    return None


def verdict_parser(patterns: tuple[str, ...], version: str = V2):
    """judgment text -> verdict label or None, as the version's get_score decides (v0.1: None also when it
    would ask again)."""
    regexes = tuple(re.compile(p) for p in patterns)
    if version == V01:
        return lambda text: v01_score(text, regexes[0])[0]
    return lambda text: v2_score(text, regexes)


def _v01_games(
    spec: ArenaSpec, items: dict[str, list[dict]], judge: CachedJudge, continuation: str | None
) -> dict[str, tuple[str | None, str]]:
    """(score, judgment) per game, as lm-sys gen_judgment.py's attempts loop: the answer is appended to the
    conversation and, while get_score says ask again, followed by the continuation message and asked again."""
    pattern, params, last = re.compile(spec.patterns[0]), spec.params(), spec.attempts - 1

    def replay(messages: list[dict]) -> tuple[bool, str | None]:
        """(whole chain cached, its final score), from the cache alone."""
        conversation, judgment = list(messages), ""
        for attempt in range(spec.attempts):
            answer = judge.lookup(conversation, params)
            if answer is None:
                return False, None
            judgment += "\n" + answer.text
            score, again = v01_score(judgment, pattern)
            if not again or attempt == last:
                return True, score
            conversation += [{"role": "assistant", "content": answer.text}, {"role": "user", "content": continuation}]
        return False, None

    anew = {name for name, messages in items.items() if replay(messages) == (True, None)}
    judge.counts["judged_anew"] += len(anew)
    conversations = {name: list(messages) for name, messages in items.items()}
    judgments = dict.fromkeys(items, "")
    results: dict[str, tuple[str | None, str]] = {}
    for attempt in range(spec.attempts):
        pending = {name: conversations[name] for name in items if name not in results}
        for name, answer in judge.ask(pending, params, fresh=anew & set(pending)).items():
            if answer is None:  # failed after the engine's retries: no verdict, and nothing cached
                results[name] = (None, judgments[name])
                continue
            judgments[name] += "\n" + answer.text
            score, again = v01_score(judgments[name], pattern)
            conversations[name].append({"role": "assistant", "content": answer.text})
            if not again or attempt == last:
                results[name] = (score, judgments[name])
            else:
                conversations[name].append({"role": "user", "content": continuation})
    return results


def judge_pairs(
    spec: ArenaSpec,
    questions: list[dict],
    baselines: dict[str, dict[str, str]],
    answers: dict[str, str],
    model_name: str,
    judge: CachedJudge,
    continuation: str | None = None,
) -> list[dict]:
    """Judgment records in the version's official layout (one per question, two games: the baseline first, then
    the model first). v0.1: question_id, model, judge, games [{user_prompt, judgment, score}] (plus category and
    baseline); v2.0: uid, category, judge, model, baseline, games [{score, judgment: {answer}, prompt} or null for
    a failed call]."""
    if spec.version == V01 and spec.attempts > 1 and continuation is None:
        raise ValueError("v0.1 with more than one judgment attempt needs the continuation message")
    items, meta = {}, {}
    for question in questions:
        qid, text, category = question_fields(question, "questions")
        setting = spec.setting(category)
        reference = baselines.get(setting["baseline"], {})
        if qid not in reference or qid not in answers:
            continue
        meta[qid] = (question.get("question_id", question.get("uid")), category, setting["baseline"])
        for index, (first, second) in enumerate(((reference[qid], answers[qid]), (answers[qid], reference[qid]))):
            items[f"{qid}#{index}"] = [
                {"role": "system", "content": setting["system_prompt"]},
                {"role": "user", "content": spec.prompt(text, first, second)},
            ]
    if spec.version == V01:
        games = _v01_games(spec, items, judge, continuation)
        judge.counts["unparseable"] += sum(score is None for score, _ in games.values())
        return [
            {
                "question_id": raw,
                "model": model_name,
                "judge": judge.judge_id,
                "category": category,
                "baseline": baseline,
                "games": [
                    {
                        "user_prompt": items[f"{qid}#{i}"][1]["content"],
                        "judgment": games[f"{qid}#{i}"][1],
                        "score": games[f"{qid}#{i}"][0],
                    }
                    for i in (0, 1)
                ],
            }
            for qid, (raw, category, baseline) in meta.items()
        ]
    regexes = tuple(re.compile(p) for p in spec.patterns)
    params = spec.params()
    answered = judge.ask(items, params, usable=lambda answer: v2_score(answer.text, regexes) is not None)
    v2_games = {
        name: None
        if answer is None
        else {"score": v2_score(answer.text, regexes), "judgment": {"answer": answer.text}, "prompt": items[name]}
        for name, answer in answered.items()
    }
    judge.counts["unparseable"] += sum(game is None or game["score"] is None for game in v2_games.values())
    return [
        {
            "uid": raw,
            "category": category,
            "judge": judge.judge_id,
            "model": model_name,
            "baseline": baseline,
            "games": [v2_games[f"{qid}#{i}"] for i in (0, 1)],
        }
        for qid, (raw, category, baseline) in meta.items()
    ]
