"""`realign-data build --plan`: the work left per stage after the cache, the tokens it can generate, its time at
the throughput earlier runs of the store measured, and its cost at engine.price; nothing loaded, nothing written."""

import json

import pytest

from realign_data.build import Build
from realign_data.config import BuildConfig, load_config
from realign_data.store import Store
from tests.helpers import run_cli
from tests.openai_server import Reply, ScriptedOpenAIServer
from tests.test_build import tiny_config, tiny_sets


def plan(store, *sets: str, args: tuple[str, ...] = ()) -> dict:
    values = [part for item in sets for part in ("--set", item)]
    result = run_cli("build", "--plan", "--format", "json", "--store", str(store), *values, *args)
    assert result.returncode == 0, result.stderr
    return {stage["stage"]: stage for stage in json.loads(result.stdout)["stages"]}


def files_under(root) -> set:
    return {p.relative_to(root) for p in root.rglob("*")} if root.exists() else set()


def test_a_fresh_store_plans_every_stage_and_writes_nothing(tmp_path, tiny_model_dir):
    stages = plan(tmp_path, *tiny_sets(tiny_model_dir))
    assert files_under(tmp_path) == set()
    generate, score, revise, rescore = (stages[s] for s in ("generate", "score", "revise", "score revisions"))
    # 6 prompts x 3 samples of at most 8 tokens; one draft revised per prompt, at most 8 tokens
    assert (generate["to_run"], generate["cached"], generate["exact"]) == (6, 0, True)
    assert generate["new_tokens"] == 6 * 3 * 8 and generate["unit"] == "requests"
    assert (score["to_run"], score["exact"], score["new_tokens"]) == (18, False, 0)  # a logprob judge writes nothing
    assert (revise["to_run"], revise["new_tokens"], revise["exact"]) == (6, 6 * 8, False)
    assert rescore["to_run"] == 6
    assert all(stage["seconds"] is None and stage["cost_usd"] is None for stage in stages.values())


def test_after_a_build_nothing_is_left_and_more_prompts_are_timed_from_it(tmp_path, tiny_model_dir):
    build = Build(tiny_config(tiny_model_dir), Store(tmp_path))
    build.run()
    measured = [json.loads(line) for line in (tmp_path / "runs" / "throughput.jsonl").read_text().splitlines()]
    assert {m["stage"] for m in measured} == {"generate", "score", "revise", "score revisions"}
    assert next(m for m in measured if m["stage"] == "generate")["units"] == 18
    done = plan(tmp_path, *tiny_sets(tiny_model_dir))
    assert all(s["to_run"] == 0 and s["exact"] for s in done.values()), done
    assert done["generate"]["cached"] == 6 and done["score"]["cached"] == 18 and done["revise"]["cached"] == 6
    before = files_under(tmp_path)
    more = plan(tmp_path, *tiny_sets(tiny_model_dir, **{"prompts.limit": 10}))
    twice = plan(tmp_path, *tiny_sets(tiny_model_dir, **{"prompts.limit": 14}))
    assert files_under(tmp_path) == before  # planning wrote nothing, not even a cache part
    assert more["generate"]["to_run"] == 4 and more["generate"]["cached"] == 6 and more["generate"]["exact"]
    assert twice["generate"]["to_run"] == 8
    # a worker's stages are measured together: the policy's generate and revise runs, the judge's two scorings
    for stage in ("generate", "score", "revise"):  # twice the work left: twice the time, from the same measurement
        assert more[stage]["seconds"] > 0 and more[stage]["measured_from"] == 2
        assert twice[stage]["seconds"] == pytest.approx(2 * more[stage]["seconds"], rel=0.05)
    # another backend has measured nothing yet
    assert plan(tmp_path, *tiny_sets(tiny_model_dir), "execution.backend=ray")["generate"]["seconds"] is None


def test_after_the_generate_stage_the_revisions_are_counted_exactly(tmp_path, tiny_model_dir):
    Build(tiny_config(tiny_model_dir, **{"revision.drafts_per_prompt": 2}), Store(tmp_path)).run("generate")
    stages = plan(tmp_path, *tiny_sets(tiny_model_dir, **{"revision.drafts_per_prompt": 2}))
    assert stages["generate"]["to_run"] == 0
    assert (stages["score"]["to_run"], stages["score"]["exact"]) == (18, True)
    assert (stages["revise"]["to_run"], stages["revise"]["exact"]) == (12, True)
    fresh = plan(tmp_path, *tiny_sets(tiny_model_dir), args=("--fresh",))
    assert fresh["generate"]["to_run"] == 6 and fresh["generate"]["cached"] == 0


def test_a_served_policy_is_costed_at_its_price(tmp_path):
    sets = [
        "engine.kind=openai",
        "policy.spec=served-model",
        "prompts.limit=5",
        "generation.num_samples=2",
        "generation.max_new_tokens=100",
        "pairs.types=[on_policy]",
    ]
    with ScriptedOpenAIServer(lambda request, seen: Reply(content="Rating: 7")) as server:
        priced = [*sets, f"engine.base_urls=[{server.url}]", "engine.price={input: 0, output: 2.5}"]
        stages = plan(tmp_path, *priced)
    # 5 prompts x 2 samples x 100 tokens at most, at $2.50 per million generated tokens
    assert stages["generate"]["new_tokens"] == 1000
    assert stages["generate"]["cost_usd"] == pytest.approx(1000 * 2.5 / 1e6, abs=1e-4)
    # the text judge answers in at most 24 tokens, asked up to 3 times, at the same price
    assert stages["score"]["new_tokens"] == 10 * 24 * 3
    assert stages["score"]["cost_usd"] == pytest.approx(10 * 24 * 3 * 2.5 / 1e6, abs=1e-4)


def test_format_without_plan_is_refused(tmp_path):
    result = run_cli("build", "--format", "json", "--store", str(tmp_path))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: --format goes with --plan (a build prints its summary as a table)"
    )
    assert not tmp_path.joinpath("runs").exists()


def test_equal_responses_are_planned_once_as_the_build_runs_them(tmp_path):
    def script(request, seen):  # every sample of a prompt is the same answer
        content = request["messages"][-1]["content"]
        return Reply(content="Rating: 7" if "Rate the response" in content else f"answer to {content[:30]}")

    with ScriptedOpenAIServer(script) as server:
        sets = ["engine.kind=openai", f"engine.base_urls=[{server.url}]", "policy.spec=served-model"]
        sets += ["prompts.limit=6", "generation.num_samples=3", "revision.drafts_per_prompt=2"]
        build = Build(load_config(BuildConfig, None, sets), Store(tmp_path))
        result = build.run()
        assert result.stats["computed"]["score"] == 6 and result.stats["computed"]["revise"] == 6  # one per prompt
        stages = plan(tmp_path, *sets)
    assert all(s["to_run"] == 0 and s["exact"] for s in stages.values()), stages
    assert stages["score"]["cached"] == 6 and stages["revise"]["cached"] == 6
