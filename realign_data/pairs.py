"""ReAlign pair construction from scored samples and revisions, and the final per-type mix.

- ``on_policy``: chosen = the highest-scored sample, rejected = the lowest; prompts whose samples are all identical
  or all tied are dropped and counted.
- ``revision`` (the structured revision task): prompt = revision template(instruction, draft), chosen = the
  revision, rejected = the draft.
- ``revision_direct``: the same responses under the plain instruction.
- ``reviser_train``: prompt = revision template(instruction, draft), chosen = the best available response (samples,
  revisions, reference), rejected = the draft; when the draft itself is best, rejected = the worst response.

Every type keeps a pair only when chosen_score - rejected_score >= ``min_margin`` and > 0 (equal scores carry no
preference). A response that hit the token limit (finish reason ``length``) takes part in no pair unless
``allow_truncated``; with ``max_length_ratio`` a pair whose chosen is more than that many times longer (in tokens)
than its rejected is dropped. Every candidate dropped is counted as ``TYPE:REASON``. Ties between equal scores are
broken by source order, so results are deterministic.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from realign_data.config import PairsConfig, RevisionChecks
from realign_data.templates import Template

if TYPE_CHECKING:
    from realign_data.schema import PairType


@dataclass(frozen=True)
class Response:
    text: str
    score: float | None
    source: str  # "sample:I", "revision:I" (of draft sample I) or "reference"
    finish_reason: str | None = None  # "stop", "length" (cut at the token limit), None: unknown (a reference)
    tokens: int | None = None  # completion tokens, None where unknown

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def _score(response: Response) -> float:
    """The score of a response that takes part in a pair: only scored responses are paired."""
    assert response.score is not None, "build_pairs pairs only responses with a score"
    return response.score


@dataclass
class PromptResults:
    prompt_id: str
    messages: list[dict[str, str]]
    samples: list[Response]
    revisions: dict[int, Response] = field(default_factory=dict)  # the draft's position in samples -> its revision
    reference: Response | None = None


@dataclass(frozen=True)
class PairOrigin:
    """What produced the pairs of a build: the models, the scorer and the sampling settings (their source columns)."""

    policy_model: str
    reviser_model: str | None
    scorer: str
    sample_params: dict
    revision_params: dict


def revision_prompt(template: Template, messages: list[dict[str, str]], draft: str) -> list[dict[str, str]]:
    """The structured revision task: earlier turns, then the instruction and the draft rendered as one user turn."""
    content = template.render(instruction=messages[-1]["content"], draft=draft)
    return [*messages[:-1], {"role": "user", "content": content}]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


ECHO_WORDS = 4  # a run of this many words from one of the template's fixed lines counts as an echo


@functools.lru_cache(maxsize=8)
def _template_runs(template: Template) -> tuple[frozenset[tuple[str, ...]], tuple[tuple[str, ...], ...]]:
    """Word runs of the template's fixed lines (those without a placeholder): 4-word runs of the long lines, and
    the short lines whole (e.g. "[Draft response]"); computed once per template, not once per revision."""
    runs: set[tuple[str, ...]] = set()
    short: list[tuple[str, ...]] = []
    for line in template.text.splitlines():
        words = tuple(_words(line))
        if not words or "{" in line:
            continue
        if len(words) < ECHO_WORDS:
            short.append(words)
        runs.update(words[i : i + ECHO_WORDS] for i in range(len(words) - ECHO_WORDS + 1))
    return frozenset(runs), tuple(short)


def revision_defect(revision: str, draft: str, template: Template, checks: RevisionChecks) -> str | None:
    """Why a revision is not pair material (``empty``, ``unchanged``, ``template_echo``, ``restates_draft``), or
    None when it passes every check that is on."""
    words, draft_words = _words(revision), _words(draft)
    if checks.empty and not words:
        return "empty"
    if checks.unchanged and words == draft_words:
        return "unchanged"
    if checks.template_echo:
        runs, short = _template_runs(template)
        grams = {tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1)}
        text = " ".join(words)
        if grams & runs or any(f" {' '.join(line)} " in f" {text} " for line in short):
            return "template_echo"
    if checks.restates_draft is not None and len(draft_words) >= 8:
        same = 0
        for mine, theirs in zip(words, draft_words, strict=False):
            if mine != theirs:
                break
            same += 1
        if same >= checks.restates_draft * len(draft_words):
            return "restates_draft"
    return None


def pair_id(pair_type: str, prompt: list[dict[str, str]], chosen: str, rejected: str) -> str:
    payload = json.dumps([pair_type, prompt, chosen, rejected], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _row(
    pair_type: str,
    results: PromptResults,
    prompt: list[dict[str, str]],
    chosen: Response,
    rejected: Response,
    origin: PairOrigin,
) -> dict:
    uses_reviser = "revision" in chosen.source or "revision" in rejected.source or pair_type == "reviser_train"
    params = dict(origin.sample_params)
    if uses_reviser:
        params["revision"] = origin.revision_params
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen.text}],
        "rejected": [{"role": "assistant", "content": rejected.text}],
        "pair_id": pair_id(pair_type, prompt, chosen.text, rejected.text),
        "prompt_id": results.prompt_id,
        "pair_type": pair_type,
        "chosen_score": chosen.score,
        "rejected_score": rejected.score,
        "margin": _score(chosen) - _score(rejected),
        "chosen_source": chosen.source,
        "rejected_source": rejected.source,
        "policy_model": origin.policy_model,
        "reviser_model": origin.reviser_model if uses_reviser else None,
        "scorer": origin.scorer,
        "sample_params": json.dumps(params, sort_keys=True),
        "chosen_finish_reason": chosen.finish_reason,
        "rejected_finish_reason": rejected.finish_reason,
        "chosen_tokens": chosen.tokens,
        "rejected_tokens": rejected.tokens,
    }


def _length_check(chosen: Response, rejected: Response, ratio: float) -> str | None:
    """``length_ratio`` when chosen has more than ``ratio`` times the rejected's tokens, ``length_unknown`` when
    either count is unknown (or the rejected is empty), None when the pair passes."""
    if chosen.tokens is None or not rejected.tokens:
        return "length_unknown"
    return "length_ratio" if chosen.tokens > ratio * rejected.tokens else None


def build_pairs(
    results: list[PromptResults], rules: PairsConfig, template: Template, origin: PairOrigin
) -> tuple[list[dict], Counter]:
    """All pairs of the types ``rules`` asks for; the Counter holds ``type:reason`` for every candidate dropped."""
    rows: list[dict] = []
    dropped: Counter = Counter()
    types, checks = rules.types, rules.revision_checks

    def usable(response: Response) -> bool:
        return response.score is not None and (rules.allow_truncated or not response.truncated)

    def keep(pair_type: str, prompt, chosen: Response, rejected: Response, item: PromptResults) -> None:
        margin = _score(chosen) - _score(rejected)
        if margin <= 0 or margin < rules.min_margin:
            dropped[f"{pair_type}:below_margin" if margin > 0 else f"{pair_type}:not_better"] += 1
        elif rules.max_length_ratio is not None and (reason := _length_check(chosen, rejected, rules.max_length_ratio)):
            dropped[f"{pair_type}:{reason}"] += 1
        else:
            rows.append(_row(pair_type, item, prompt, chosen, rejected, origin))

    for item in results:
        scored = [s for s in item.samples if s.score is not None]
        if "on_policy" in types:
            complete = [s for s in scored if usable(s)]
            if len(scored) < 2:
                dropped["on_policy:unscored"] += 1
            elif len(complete) < 2:
                dropped["on_policy:truncated"] += 1
            elif len({s.text for s in complete}) == 1:
                dropped["on_policy:identical"] += 1
            elif len({s.score for s in complete}) == 1:
                dropped["on_policy:tied"] += 1
            else:
                best = max(complete, key=_score)  # the first of equal scores wins: deterministic
                worst = min(complete, key=_score)
                keep("on_policy", item.messages, best, worst, item)
        defects = {
            i: revision_defect(r.text, item.samples[i].text, template, checks) for i, r in item.revisions.items()
        }
        for index, revision in sorted(item.revisions.items()):
            draft = item.samples[index]
            task_prompt = revision_prompt(template, item.messages, draft.text)
            revision_types = [t for t in ("revision", "revision_direct") if t in types]
            if revision_types and (revision.score is None or draft.score is None):
                dropped.update(f"{t}:unscored" for t in revision_types)
            elif revision_types and not (usable(revision) and usable(draft)):
                dropped.update(f"{t}:truncated" for t in revision_types)
            elif revision_types and defects[index]:
                dropped.update(f"{t}:{defects[index]}" for t in revision_types)
            else:
                for pair_type in revision_types:
                    prompt = task_prompt if pair_type == "revision" else item.messages
                    keep(pair_type, prompt, revision, draft, item)
            if "reviser_train" in types:
                if defects[index]:
                    dropped[f"reviser_train:revision_{defects[index]}"] += 1
                offered = [
                    r
                    for r in [*item.samples, *(v for i, v in item.revisions.items() if not defects[i]), item.reference]
                    if r is not None and r.score is not None
                ]
                candidates = [r for r in offered if usable(r)]
                if draft.score is None or len(offered) < 2:
                    dropped["reviser_train:unscored"] += 1
                    continue
                if not usable(draft) or len(candidates) < 2:
                    dropped["reviser_train:truncated"] += 1
                    continue
                best = max(candidates, key=_score)
                if best.text != draft.text:
                    keep("reviser_train", task_prompt, best, draft, item)
                else:  # the draft is already the best: teach the reviser to prefer it over the worst response
                    keep("reviser_train", task_prompt, draft, min(candidates, key=_score), item)
    return rows, dropped


def mix_pairs(rows: list[dict], weights: Mapping[PairType, float], seed: int) -> tuple[list[dict], dict[str, dict]]:
    """Subsample pair types to the proportions in ``weights`` (types not named are kept whole).

    The type that is scarcest relative to its weight is kept whole and the others are cut to match, e.g.
    ``{on_policy: 1.0, revision: 0.5}`` keeps every on-policy pair and half as many revision pairs (when
    available). A weight of 0 drops the type. Which rows survive is decided by a seeded shuffle.
    """
    by_type: dict[PairType, list[dict]] = {}
    for row in rows:
        by_type.setdefault(row["pair_type"], []).append(row)
    before = {t: len(v) for t, v in by_type.items()}
    weighted = {t: w for t, w in weights.items() if w > 0 and before.get(t)}
    scale = min((before[t] / w for t, w in weighted.items()), default=0.0)
    rng = random.Random(seed)
    kept: list[dict] = []
    for pair_type, group in sorted(by_type.items()):
        if pair_type in weights:
            target = int(scale * weights[pair_type] + 1e-9) if pair_type in weighted else 0
            group = sorted(group, key=lambda r: r["pair_id"])
            rng.shuffle(group)
            group = group[:target]
        kept += group
    after = Counter(r["pair_type"] for r in kept)
    counts: dict[str, dict] = {
        t: {"before": before[t], "after": after.get(t, 0), "weight": weights.get(t)} for t in sorted(before)
    }
    return sorted(kept, key=lambda r: (r["pair_type"], r["prompt_id"], r["pair_id"])), counts
