"""Arena-Hard v2.0 judge settings: per question category, the baseline model and the judge's system prompt.

Upstream (lmarena/arena-hard-auto, ``utils/judge_utils.py``) keeps them in a Python dict, ``JUDGE_SETTINGS``. Two forms
are accepted:

- that Python file itself, read without running it: the module is parsed (``ast``) and the ``JUDGE_SETTINGS``
  assignment is evaluated from literals only (strings, numbers, dicts, lists, ``+`` of strings, and names bound
  earlier in the file to such literals, as upstream's ``OG_ARENA_HARD_PROMPT``); nothing in the file is executed;
- YAML or JSON holding the same mapping, at the top level or under ``judge_settings`` (or ``JUDGE_SETTINGS``).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import yaml

from evaluation.records import read_text
from realign_data.errors import InputError
from realign_data.files import json_kind

SETTINGS_NAME = "JUDGE_SETTINGS"
SETTINGS_KEYS = ("judge_settings", "JUDGE_SETTINGS")


class _NotLiteral(Exception):
    def __init__(self, node: ast.expr, what: str):
        super().__init__(what)
        self.node, self.what = node, what


def _literal(node: ast.expr, names: dict[str, Any]) -> Any:
    """The value of a literal expression; _NotLiteral for anything that would need running code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.Dict):
        keys = [key for key in node.keys if key is not None]  # a None key is a ** expansion
        if len(keys) < len(node.keys):
            raise _NotLiteral(node, "a ** expansion")
        return {_literal(key, names): _literal(value, names) for key, value in zip(keys, node.values, strict=True)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item, names) for item in node.elts]
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise _NotLiteral(node, f"the name {node.id!r}, which is not bound earlier in the file to a literal")
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left, names), _literal(node.right, names)
        if isinstance(left, str) and isinstance(right, str):
            return left + right
        raise _NotLiteral(node, "a '+' of values that are not both strings")
    raise _NotLiteral(node, f"a {type(node).__name__} expression (only literals are read, nothing is run)")


def _targets(statement: ast.stmt) -> tuple[list[str], ast.expr | None]:
    if isinstance(statement, ast.Assign):
        return [t.id for t in statement.targets if isinstance(t, ast.Name)], statement.value
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return [statement.target.id], statement.value
    return [], None


def _python_settings(path: Path, text: str) -> Any:
    """``JUDGE_SETTINGS`` of an upstream-like ``judge_utils.py``, evaluated from literals only."""
    try:
        module = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise InputError(f"{path}:{exc.lineno or 0}: not valid Python ({exc.msg})") from None
    names: dict[str, Any] = {}
    found: tuple[ast.AST, Any] | None = None
    for statement in module.body:  # top-level assignments, in order
        targets, value = _targets(statement)
        if not targets or value is None:
            continue
        try:
            result = _literal(value, names)
        except _NotLiteral as exc:
            if SETTINGS_NAME in targets:
                raise InputError(
                    f"{path}:{exc.node.lineno}: {SETTINGS_NAME} must be a literal mapping; it uses {exc.what}"
                ) from None
            for target in targets:  # a non-literal rebinding hides any earlier literal value
                names.pop(target, None)
            continue
        for target in targets:
            names[target] = result
        if SETTINGS_NAME in targets:
            found = (statement, result)
    if found is None:
        raise InputError(
            f"{path}: no top-level assignment to {SETTINGS_NAME} (upstream's utils/judge_utils.py defines it)"
        )
    return found[1]


def _data_settings(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise InputError(
                f"{where}: the judge settings are not valid YAML "
                f"({getattr(exc, 'problem', None) or type(exc).__name__})"
            ) from None
    if isinstance(data, dict):
        for key in SETTINGS_KEYS:
            if key in data:
                return data[key]
    return data


def read_judge_settings(path: Path) -> dict[str, dict[str, str]]:
    """{category: {"baseline": model, "system_prompt": text}} from upstream's judge_utils.py, YAML or JSON."""
    text = read_text(path)
    settings = _python_settings(path, text) if path.suffix.lower() == ".py" else _data_settings(path, text)
    if not isinstance(settings, dict) or not settings:
        raise InputError(
            f"{path}: the judge settings must map each question category to its 'baseline' and "
            f"'system_prompt' (under 'judge_settings' in YAML/JSON), got {json_kind(settings)}"
        )
    checked = {}
    for category, setting in settings.items():
        where = f"{path}: judge_settings.{category}"
        if not isinstance(setting, dict):
            raise InputError(f"{where} must be a mapping with 'baseline' and 'system_prompt', got {json_kind(setting)}")
        for field in ("baseline", "system_prompt"):
            value = setting.get(field)
            if not isinstance(value, str) or not value:
                raise InputError(f"{where}: field '{field}' must be a non-empty string, got {json_kind(value)}")
        checked[str(category)] = {"baseline": setting["baseline"], "system_prompt": setting["system_prompt"]}
    return checked
