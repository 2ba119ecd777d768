"""AlpacaEval 2 judging with alpaca_eval's own annotator configs and prompt templates.

The template named by the annotator config (default weighted_alpaca_eval_gpt4_turbo) is rendered with the
instruction and the two outputs and turned into chat messages by alpaca_eval's ``prompt_to_chatml``. The judge
answers with the identifier of the better output (``m`` or ``M``). Output order is randomized per instruction (as
alpaca_eval does) and the preference mapped back: 1 = reference better, 2 = model better.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from evaluation.alpaca_metrics import import_alpaca_eval
from evaluation.judging import CachedJudge
from realign_data.errors import InputError

DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def annotator_template(name: str) -> tuple[str, dict]:
    """The prompt template and settings of one of alpaca_eval's evaluator configs."""
    alpaca_eval = import_alpaca_eval()
    root = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    config_path = root / name / "configs.yaml"
    if not config_path.exists():
        known = sorted(p.name for p in root.iterdir() if (p / "configs.yaml").exists())
        raise InputError(f"--annotator {name!r}: not an alpaca_eval evaluator config (e.g. {', '.join(known[:5])})")
    config = yaml.safe_load(config_path.read_text())[name]
    return (root / config["prompt_template"]).read_text(encoding="utf-8"), config


def parse_identifier(text: str) -> int | None:
    """1 when the judge picked ``m`` (the first output), 2 for ``M``; None otherwise."""
    token = text.strip().strip("\"'`*").split()[0] if text.strip() else ""
    return {"m": 1, "M": 2}.get(token)


def annotate(eval_set: list[dict], outputs: dict[str, str], model_name: str, annotator: str, judge: CachedJudge) \
        -> list[dict]:
    """alpaca_eval-style annotations (output_1 = reference, output_2 = model, preference in 1..2)."""
    alpaca_eval = import_alpaca_eval()
    template, _ = annotator_template(annotator)
    items, swapped = {}, {}
    for index, example in enumerate(eval_set):
        if example["instruction"] not in outputs:
            continue
        reference, answer = example["output"], outputs[example["instruction"]]
        swap = hashlib.sha256(example["instruction"].encode()).digest()[0] % 2 == 1
        first, second = (answer, reference) if swap else (reference, answer)
        prompt = template.replace("{instruction}", example["instruction"]).replace("{output_1}", first) \
            .replace("{output_2}", second)
        items[str(index)] = alpaca_eval.utils.prompt_to_chatml(prompt)
        swapped[str(index)] = swap
    verdicts = judge.judge(items, parse_identifier)
    annotations = []
    for key, (verdict, text) in sorted(verdicts.items(), key=lambda kv: int(kv[0])):
        example = eval_set[int(key)]
        preference = None if verdict is None else (3 - verdict if swapped[key] else verdict)
        annotations.append({"instruction": example["instruction"], "output_1": example["output"],
                            "generator_1": example.get("generator", "reference"),
                            "output_2": outputs[example["instruction"]], "generator_2": model_name,
                            "annotator": judge.judge_id, "preference": preference, "raw_completion": text})
    return annotations
