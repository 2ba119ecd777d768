"""AlpacaEval annotators run as their alpaca_eval config says, against a real local OpenAI-compatible server (and the
in-process hf judge): every preference equals what alpaca_eval's own parser gives on the same completions, the
order shown to the judge is alpaca_eval's, the request carries the config's completion settings, a judge without
logprobs is refused or runs under the named discrete mode, and the report names the config with its hash."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from evaluation.alpaca_metrics import import_alpaca_eval
from tests.helpers import assert_one_line_error, run_cli
from tests.openai_server import Reply, ScriptedOpenAIServer

alpaca_eval = import_alpaca_eval()
CONFIGS = Path(alpaca_eval.__file__).parent / "evaluators_configs"
COUNT = 12
UNSCORABLE = 7  # this instruction's top_logprobs hold neither m nor M


def config_of(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name / "configs.yaml").read_text())[name]


def env(tmp_path: Path) -> dict[str, str]:
    return {"REALIGN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "test-key"}


def inputs(tmp_path: Path, count: int = COUNT) -> tuple[Path, Path]:
    eval_set = tmp_path / "eval.json"
    eval_set.write_text(
        json.dumps(
            [
                {"instruction": f"Task {i}", "output": f"reference {i}", "generator": "gpt4_ref", "dataset": "test"}
                for i in range(count)
            ]
        )
    )
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            [{"instruction": f"Task {i}", "output": f"model answer {i}", "generator": "ours"} for i in range(count)]
        )
    )
    return eval_set, outputs


def alpaca(tmp_path: Path, server_url: str, folder: str, *extra: str):
    eval_set, outputs = inputs(tmp_path)
    return run_cli(
        "alpaca",
        "--eval-set",
        str(eval_set),
        "--outputs",
        str(outputs),
        "--judge-base-url",
        server_url,
        "-o",
        str(tmp_path / folder),
        *extra,
        prog="realign-eval",
        env=env(tmp_path),
        timeout=300,
    )


def ok(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def switched(instruction: str) -> bool:
    """alpaca_eval's order for an instruction: RandomSwitchTwoColumnsProcessor's seeded choice (seed string: the
    switch column, the instruction, the annotator's seed 0)."""
    return alpaca_eval.utils.random_seeded_choice(seed="is_switched_outputs" + instruction + "0", choices=[False, True])


def shown(prompt: str, first_id: str, second_id: str, key: str) -> tuple[str, str]:
    """The two outputs in the order the prompt shows them."""
    first = re.search(rf'"{key}": "{first_id}",\s*"[a-z]+": """(.*?)"""', prompt, re.S).group(1)
    second = re.search(rf'"{key}": "{second_id}",\s*"[a-z]+": """(.*?)"""', prompt, re.S).group(1)
    return first, second


def task(prompt: str) -> int:
    return int(re.search(r'"instruction": """Task (\d+)"""', prompt).group(1))


def top_logprobs(index: int) -> list[dict]:
    """The scripted distribution over the first token of instruction ``index``."""
    if index == UNSCORABLE:
        values = {"The": -0.2, "Based": -1.9}
    else:
        values = {"m": -0.15 * (index + 1), "M": -0.3 * (COUNT - index), "The": -6.0}
    return [
        {"token": t, "bytes": list(t.encode()), "logprob": v} for t, v in sorted(values.items(), key=lambda kv: -kv[1])
    ]


def annotations(tmp_path: Path, folder: str) -> dict[str, dict]:
    return {a["instruction"]: a for a in json.loads((tmp_path / folder / "annotations.json").read_text())}


def test_weighted_annotator_equals_alpaca_evals_parser_and_order(tmp_path):
    config = config_of("weighted_alpaca_eval_gpt4_turbo")
    requests, prompts = [], {}

    def script(request, seen):
        requests.append(request)
        prompt = request["messages"][-1]["content"]
        index = task(prompt)
        prompts[index] = prompt
        top = top_logprobs(index)
        return Reply(content=top[0]["token"], logprobs=[{**top[0], "top_logprobs": top}])

    with ScriptedOpenAIServer(script) as server:
        ok(alpaca(tmp_path, server.url, "r"))
        first_calls = server.calls
        ok(alpaca(tmp_path, server.url, "again"))
        rerun_calls = server.calls - first_calls

    # the request is the config's completions_kwargs, the judge model its model_name
    kwargs = config["completions_kwargs"]
    for request in requests:
        assert (
            request["model"],
            request["max_tokens"],
            request["temperature"],
            request["logprobs"],
            request["top_logprobs"],
        ) == (
            kwargs["model_name"],
            kwargs["max_tokens"],
            kwargs["temperature"],
            kwargs["logprobs"],
            kwargs["top_logprobs"],
        )
    assert first_calls == COUNT
    ours = annotations(tmp_path, "r")
    parser = alpaca_eval.completion_parsers.logprob_parser
    between = 0
    for index in range(COUNT):
        instruction = f"Task {index}"
        flip = switched(instruction)
        # the order the judge saw is alpaca_eval's
        pair = (f"reference {index}", f"model answer {index}")
        assert shown(prompts[index], "m", "M", "model_identifier") == (pair[::-1] if flip else pair)
        top = top_logprobs(index)
        # alpaca_eval's parser on the completion as its openai decoder passes it, mapped back as it maps a switch
        parsed = parser(
            {"logprobs": {"content": [{**top[0], "top_logprobs": top}]}}, **config["completion_parser_kwargs"]
        )[0]
        expected = 3 - parsed if flip else parsed
        annotation = ours[instruction]
        assert annotation["is_switched_outputs"] is flip
        assert annotation["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
        assert (annotation["output_1"], annotation["output_2"]) == (f"reference {index}", f"model answer {index}")
        if math.isnan(expected):
            assert annotation["preference"] is None and index == UNSCORABLE
        else:
            assert annotation["preference"] == pytest.approx(expected, abs=1e-12)
            between += 1 < annotation["preference"] < 2
    assert between == COUNT - 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["judge"]["mode"] == "logprobs" and report["judge_label"] == "weighted_alpaca_eval_gpt4_turbo"
    template = CONFIGS / config["prompt_template"]
    digest = hashlib.sha256(
        (CONFIGS / "weighted_alpaca_eval_gpt4_turbo" / "configs.yaml").read_bytes() + template.read_bytes()
    ).hexdigest()
    assert report["judge"]["annotator"]["name"] == "weighted_alpaca_eval_gpt4_turbo"
    assert report["judge"]["annotator"]["config_sha256"] == digest
    assert report["failures"] == 1 and report["judge_usage"]["unparseable"] == 1
    # a rerun replays every scored annotation and judges the unscorable one anew
    assert rerun_calls == 1
    again = annotations(tmp_path, "again")
    assert {k: a["preference"] for k, a in again.items()} == {k: a["preference"] for k, a in ours.items()}
    assert json.loads((tmp_path / "again" / "report.json").read_text())["judge_usage"]["judged_anew"] == 1


def test_a_judge_without_logprobs_is_refused_or_runs_discrete_when_named(tmp_path):
    def script(request, seen):  # "M" (the output shown second) for even instructions, "m" for odd ones
        return Reply(content="M" if task(request["messages"][-1]["content"]) % 2 == 0 else "m")

    with ScriptedOpenAIServer(script) as server:
        refused = alpaca(tmp_path, server.url, "refused")
        assert server.calls == 1  # refused after the first answer
        discrete = alpaca(tmp_path, server.url, "discrete", "--judge-mode", "discrete")
    assert_one_line_error(refused, 1, "logprobs", "--judge-mode discrete")
    assert not (tmp_path / "refused").exists()
    ok(discrete)
    report = json.loads((tmp_path / "discrete" / "report.json").read_text())
    assert report["judge"]["mode"] == "discrete"
    assert report["judge_label"] == "weighted_alpaca_eval_gpt4_turbo (discrete: no logprobs)"
    assert report["judge"]["annotator"]["label"] == report["judge_label"]
    for instruction, annotation in annotations(tmp_path, "discrete").items():
        in_shown_order = 2 if int(instruction.split()[1]) % 2 == 0 else 1  # by hand: M = second shown is better
        assert annotation["preference"] == (3 - in_shown_order if switched(instruction) else in_shown_order)


def test_a_text_annotator_runs_its_own_parser_and_settings(tmp_path):
    """alpaca_eval_gpt4: ranking_parser over the text, max_tokens 100 at temperature 0 (from its config). The judge
    ranks the model's output first wherever it is shown, so every preference is 2; one answer is garbage."""
    config = config_of("alpaca_eval_gpt4")
    requests = []

    def script(request, seen):
        requests.append(request)
        prompt = request["messages"][-1]["content"]
        if task(prompt) == 3 and seen == 0:
            return Reply(content="I cannot rank these.")
        first, _ = shown(prompt, "model_1", "model_2", "model")
        ranks = (1, 2) if first.startswith("model answer") else (2, 1)
        return Reply(
            content=f"[{{'model': 'model_1', 'rank': {ranks[0]}}}, {{'model': 'model_2', 'rank': {ranks[1]}}}]"
        )

    with ScriptedOpenAIServer(script) as server:
        ok(alpaca(tmp_path, server.url, "r", "--annotator", "alpaca_eval_gpt4"))
        ok(alpaca(tmp_path, server.url, "again", "--annotator", "alpaca_eval_gpt4"))
        assert server.calls == COUNT + 1  # the garbage answer is judged anew on the rerun, nothing else
    kwargs = config["completions_kwargs"]
    assert {(r["model"], r["max_tokens"], r["temperature"]) for r in requests} == {
        (kwargs["model_name"], kwargs["max_tokens"], float(kwargs["temperature"]))
    }
    assert all("logprobs" not in r for r in requests)
    first = annotations(tmp_path, "r")
    assert first["Task 3"]["preference"] is None
    assert {a["preference"] for k, a in first.items() if k != "Task 3"} == {2}
    assert {a["preference"] for a in annotations(tmp_path, "again").values()} == {2}
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["judge"]["mode"] == "text" and report["judge_label"] == "alpaca_eval_gpt4"
    assert report["metrics"]["win_rate"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "annotator, needle",
    [
        ("claude", "anthropic_completions"),
        ("alpaca_eval_gpt4_fn", "tool_choice"),
        ("text_davinci_003", "plain-text completion prompt"),
    ],
)
def test_annotators_realign_cannot_run_are_refused_with_one_line(tmp_path, annotator, needle):
    result = alpaca(tmp_path, "http://127.0.0.1:9/v1", "r", "--annotator", annotator)
    assert_one_line_error(result, 2, annotator, needle)
    assert not (tmp_path / "r").exists()


def test_judge_mode_that_does_not_fit_the_annotator_is_refused(tmp_path):
    result = alpaca(
        tmp_path, "http://127.0.0.1:9/v1", "r", "--annotator", "alpaca_eval_gpt4", "--judge-mode", "discrete"
    )
    assert_one_line_error(result, 2, "--judge-mode", "alpaca_eval_gpt4")


@pytest.mark.slow
def test_the_hf_judge_gives_the_m_and_M_probabilities_of_its_logits(tmp_path, smollm2):
    """In-process SmolLM2 as the judge: each preference equals alpaca_eval's logprob_parser on the top-5
    log-softmax of the model's next-token logits after the chat-templated prompt, computed here directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    count = 4
    eval_set, outputs = inputs(tmp_path, count)
    result = run_cli(
        "alpaca",
        "--eval-set",
        str(eval_set),
        "--outputs",
        str(outputs),
        "--judge-engine",
        "hf",
        "--judge-model",
        "smollm2-135m-instruct",
        "-o",
        str(tmp_path / "r"),
        prog="realign-eval",
        env={"HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    ok(result)
    config = config_of("weighted_alpaca_eval_gpt4_turbo")
    template = (CONFIGS / config["prompt_template"]).read_text()
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    model = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32).eval()
    ours = annotations(tmp_path, "r")
    found = 0
    for index in range(count):
        instruction = f"Task {index}"
        pair = (f"reference {index}", f"model answer {index}")
        first, second = pair[::-1] if switched(instruction) else pair
        prompt = (
            template.replace("{instruction}", instruction, 1)
            .replace("{output_1}", first, 1)
            .replace("{output_2}", second, 1)
        )
        messages = alpaca_eval.utils.prompt_to_chatml(prompt.strip())
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )["input_ids"]
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
        top = torch.topk(logprobs, config["completions_kwargs"]["top_logprobs"])
        entries = [
            {"token": tokenizer.decode([i]), "logprob": v}
            for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]
        parsed = alpaca_eval.completion_parsers.logprob_parser(
            {"logprobs": {"content": [{**entries[0], "top_logprobs": entries}]}}, **config["completion_parser_kwargs"]
        )[0]
        expected = 3 - parsed if switched(instruction) else parsed
        if math.isnan(expected):
            assert ours[instruction]["preference"] is None
        else:
            found += 1
            assert ours[instruction]["preference"] == pytest.approx(expected, abs=1e-4)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["judge"]["mode"] == "logprobs" and report["judge"]["engine"] == "hf"
    assert found >= 1, "neither m nor M among SmolLM2's top 5 for any instruction"
