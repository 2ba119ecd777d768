"""Prompt templates written for this project (judge, revision); a manifest may replace either with a file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from realign_data.errors import InputError


@dataclass(frozen=True)
class Template:
    text: str
    fields: tuple[str, ...]
    origin: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, **values: str) -> str:
        """Replace ``{field}`` placeholders only, so other braces in a template are left alone."""
        text = self.text
        for name in self.fields:
            text = text.replace("{" + name + "}", values[name])
        return text


def load_template(name: str, fields: tuple[str, ...], path: str | None = None) -> Template:
    """The built-in template ``name`` or the file at ``path``; each of ``fields`` must appear as ``{field}``."""
    if path is None:
        text, origin = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8"), f"builtin:{name}"
    else:
        try:
            text, origin = Path(path).read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the {name} template ({exc})") from None
    missing = [f"{{{f}}}" for f in fields if "{" + f + "}" not in text]
    if missing:
        raise InputError(f"{origin}: the {name} template lacks the placeholder(s) {', '.join(missing)}")
    return Template(text.strip(), fields, origin)
