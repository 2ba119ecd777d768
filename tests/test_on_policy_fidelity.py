"""On-policy means on-policy: TRL trains the policy on exactly the prompt tokens it was sampled with.

The hf engine's prompt tokens are compared with those TRL's DPOTrainer collates for stored pairs, for the embedded
SmolLM2 (whose template injects a default system prompt) and for a tiny model whose tokenizer adds a BOS. Builds
record how the policy's prompts were rendered (for an OpenAI-compatible server, through its ``/tokenize``), and
realign-train warns when its tokenizer renders them otherwise.
"""

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from realign_data.build import Build
from realign_data.config import BuildConfig, load_config
from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.hf import HFEngine
from realign_data.models import load_tokenizer, resolve_model
from realign_data.store import Store
from tests.helpers import pair_row, pair_table
from tests.openai_server import Reply, ScriptedOpenAIServer
from trainers.config import DatasetInput, PolicyTrainConfig
from trainers.data import load_training_pairs, prompt_rendering_check, truncation_report
from trainers.run import _preference_trainer, train

SMOLLM2_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
THINKING = CHATML.replace("'<|im_start|>assistant\n' }}", "'<|im_start|>assistant\n<think>\n\n</think>\n\n' }}")
PROMPTS = [
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2+2?"},
    ],
]


def copy_with_tokenizer(tiny_model_dir, target, chat_template=None, **tokenizer_options):
    """The tiny model with SmolLM2's tokenizer changed by ``tokenizer_options`` and ``chat_template``."""
    shutil.copytree(tiny_model_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, **tokenizer_options)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory, tiny_model_dir):
    """A tokenizer that adds a BOS (``<|endoftext|>``) when it tokenizes text, with a template that starts with it,
    as Llama 3's does: rendered text tokenized with special tokens would start with two."""
    template = "{{ bos_token }}" + AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    return copy_with_tokenizer(
        tiny_model_dir,
        tmp_path_factory.mktemp("bos") / "model",
        template,
        add_bos_token=True,
        bos_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def chatml_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with plain ChatML: SmolLM2's template without its default system prompt."""
    return copy_with_tokenizer(tiny_model_dir, tmp_path_factory.mktemp("chatml") / "model", CHATML)


def stored_pairs(tmp_path, prompts=PROMPTS):
    store = Store(tmp_path / "store")
    rows = [
        pair_row(
            i,
            prompt=prompt,
            prompt_id=f"prompt-{i}",
            pair_type="on_policy",
            chosen=[{"role": "assistant", "content": f"Answer {i}: blue, red and yellow."}],
        )
        for i, prompt in enumerate(prompts)
    ]
    store.write_version("pairs", [pair_table(rows)])
    return store


def collated(tmp_path, store, model_dir, tokenizer):
    """Per stored pair, as realign-train hands it to TRL's DPOTrainer: (prompt messages, chosen content, the
    collated prompt token ids, the collated chosen completion ids)."""
    config = PolicyTrainConfig(
        pair_types=["on_policy"],
        datasets=[{"ref": "pairs@v1"}],
        max_length=512,
        precompute_ref_log_probs=False,
        eval_fraction=0,
    )
    data, _, _ = load_training_pairs(config.datasets, config.pair_types, store, config.seed)
    trainer = _preference_trainer(
        config, AutoModelForCausalLM.from_pretrained(model_dir), data, None, tokenizer, tmp_path / "trainer"
    )
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(examples)
    result = []
    for example, ids, completion, attention in zip(
        examples,
        batch["input_ids"].tolist(),
        batch["completion_mask"].tolist(),
        batch["attention_mask"].tolist(),
        strict=False,
    ):
        start = completion.index(1)  # the chosen half comes first in the batch
        end = start + sum(completion)
        assert sum(attention) == end  # nothing after the completion but padding
        result.append((example["prompt"], example["chosen"][0]["content"], ids[:start], ids[start:end]))
    return result


@pytest.mark.parametrize("which", ["embedded", "bos"])
def test_trl_trains_on_exactly_the_prompt_tokens_the_hf_engine_sampled_with(
    tmp_path, which, smollm2, tiny_model_dir, bos_model_dir
):
    model = smollm2 if which == "embedded" else resolve_model(str(bos_model_dir))
    engine = HFEngine(model)
    tokenizer = engine.tokenizer
    # TRL's tokenization depends on the tokenizer alone: the embedded model's pairs are collated with the tiny model
    # that carries the embedded tokenizer
    pairs = collated(
        tmp_path, stored_pairs(tmp_path), tiny_model_dir if which == "embedded" else bos_model_dir, tokenizer
    )
    assert sorted(json.dumps(p) for p, *_ in pairs) == sorted(json.dumps(p) for p in PROMPTS)
    sampled = {
        r.request_id: r
        for r in engine.generate(
            [GenerationRequest(json.dumps(p), p, SamplingParams(n=1, temperature=0, max_new_tokens=1)) for p in PROMPTS]
        )
    }
    for prompt, chosen, prompt_ids, completion_ids in pairs:
        assert prompt_ids == engine.encode(prompt)
        assert sampled[json.dumps(prompt)].completions[0].prompt_tokens == len(prompt_ids)
        text = tokenizer.decode(prompt_ids)
        assert text.endswith(f"<|im_start|>user\n{prompt[-1]['content']}<|im_end|>\n<|im_start|>assistant\n")
        assert (SMOLLM2_SYSTEM in text) == (prompt[0]["role"] != "system")  # the template's default system prompt
        if which == "bos":
            bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
            assert tokenizer("x")["input_ids"][0] == bos  # this tokenizer does add a BOS to text
            assert prompt_ids[0] == bos and prompt_ids.count(bos) == 1
        else:
            assert text.startswith("<|im_start|>")
        # the response starts on a token boundary: its tokens as tokenized alone, then the end-of-turn token
        response = tokenizer(chosen, add_special_tokens=False)["input_ids"]
        assert completion_ids[: len(response) + 1] == [*response, tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_prompts_a_template_renders_otherwise_before_a_response_are_counted(tmp_path, tiny_model_dir):
    """A Qwen3-style template ends the generation prompt with an empty think block that the conversation with the
    response leaves out: TRL cuts those prompts short, so they are counted and realign-train warns."""
    thinking = copy_with_tokenizer(tiny_model_dir, tmp_path / "thinking", THINKING)
    store = stored_pairs(tmp_path)
    data, _, _ = load_training_pairs([DatasetInput(ref="pairs@v1")], ["on_policy"], store, 0)
    assert truncation_report(data, load_tokenizer(resolve_model(str(tiny_model_dir))), 512)["prompt_cut"] == 0
    tokenizer = load_tokenizer(resolve_model(str(thinking)))
    assert truncation_report(data, tokenizer, 512)["prompt_cut"] == len(PROMPTS)
    for prompt, _, prompt_ids, _ in collated(tmp_path, store, thinking, tokenizer):
        generation = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        assert (
            prompt_ids == generation[: len(prompt_ids)]
            and tokenizer.decode(generation[len(prompt_ids) :]) == "<think>\n\n</think>\n\n"
        )


def build_config(**sets) -> BuildConfig:
    values = {
        "dataset": "pairs",
        "prompts.limit": 6,
        "generation.num_samples": 2,
        "generation.max_new_tokens": 8,
        "generation.temperature": 1.0,
        "pairs.types": ["on_policy"],
        "pairs.allow_truncated": True,  # a random model never stops: every sample hits max_new_tokens
        **sets,
    }
    return load_config(BuildConfig, None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def rendering_checks(store, tokenizer_dir):
    _, _, inputs = load_training_pairs([DatasetInput(ref="pairs@v1")], ["on_policy"], store, 0)
    return prompt_rendering_check(inputs, load_tokenizer(resolve_model(str(tokenizer_dir))))


def test_hf_build_records_its_prompt_rendering_and_training_with_another_template_warns(
    tmp_path, tiny_model_dir, chatml_model_dir, capsys
):
    store = Store(tmp_path / "store")
    build = Build(build_config(**{"policy.spec": str(tiny_model_dir)}), store)
    version = build.commit(build.run())
    record = version.record["models"]["policy"]["prompt_rendering"]
    assert record["engine"] == "hf" and record["chat_template_sha256"]
    assert record["probe"]["prompt_id"] in {p.prompt_id for p in build.load_prompts().prompts}
    [same] = rendering_checks(store, tiny_model_dir)
    assert same["same_prompt_tokens"] is True and same["same_chat_template"] is True and "warning" not in same
    [other] = rendering_checks(store, chatml_model_dir)
    assert other["same_prompt_tokens"] is False and other["same_chat_template"] is False
    assert "not on-policy" in other["warning"]

    config = load_config(
        PolicyTrainConfig,
        None,
        [],
        {
            "model.spec": str(chatml_model_dir),
            "output_dir": str(tmp_path / "out"),
            "datasets": ["pairs@v1"],
            "pair_types": ["on_policy"],
            "eval_fraction": 0,
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "max_length": 256,
        },
    )
    capsys.readouterr()
    manifest = train(config, store)
    assert f"warning: {other['warning']}" in capsys.readouterr().err.splitlines()
    assert manifest["warnings"] == [other["warning"]]
    assert manifest["prompt_rendering"][0]["same_prompt_tokens"] is False


def tokenizing_server(tokenizer_dir, paths):
    """The scripted server, answering vLLM's ``/tokenize`` with ``tokenizer_dir``'s rendering (None: no such
    endpoint, every POST gets a chat completion); the policy's samples differ, and so do their ratings."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None

    def script(request, seen):
        if "add_generation_prompt" in request and tokenizer is not None:
            ids = tokenizer.apply_chat_template(
                request["messages"], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            return Reply(body=json.dumps({"count": len(ids), "max_model_len": 2048, "tokens": ids}).encode())
        content = request["messages"][-1]["content"]
        if "Rate the response" in content:
            return Reply(content=f"Rating: {8 if 'answer 1 to' in content else 3}")
        return Reply(content=f"answer {seen} to {content[:20]}", choices=1)  # asked again for each sample

    server = ScriptedOpenAIServer(script)
    handler = server.httpd.RequestHandlerClass

    class RecordingPaths(handler):
        def do_POST(self):
            paths.append(self.path)
            super().do_POST()

    server.httpd.RequestHandlerClass = RecordingPaths
    return server


@pytest.mark.parametrize("served", ["same", "chatml", "no_tokenize"])
def test_openai_build_records_the_servers_rendering_for_training_to_compare(
    tmp_path, tiny_model_dir, chatml_model_dir, served
):
    paths = []
    rendering = {"same": tiny_model_dir, "chatml": chatml_model_dir, "no_tokenize": None}[served]
    store = Store(tmp_path / "store")
    with tokenizing_server(rendering, paths) as server:
        build = Build(
            build_config(**{"engine.kind": "openai", "engine.base_urls": [server.url], "policy.spec": "served-model"}),
            store,
        )
        record = build.commit(build.run()).record["models"]["policy"]["prompt_rendering"]
    assert "/tokenize" in paths and record["engine"] == "openai"
    [check] = rendering_checks(store, tiny_model_dir)  # training starts from the tiny model: SmolLM2's template
    if served == "no_tokenize":
        assert record["probe"]["token_ids_sha256"] is None and "unknown" in record["note"]
        assert check["same_prompt_tokens"] is None and "cannot check" in check["warning"]
    else:
        assert record["rendered_by"].endswith("/tokenize") and record["probe"]["tokens"] > 0
        assert check["same_prompt_tokens"] is (served == "same")
        assert ("warning" in check) is (served == "chatml")
