"""The Ray backend on a real local cluster (two nodes of one CPU each): the same rows as the local backend, a killed
worker actor and a killed driver recovered from, and an OpenAI-compatible stand-in reached from the workers with
its faults retried and counted as on the local path."""

import os
import signal
import subprocess
import threading
import time

import pytest

from realign_data.build import Build
from realign_data.config import BuildConfig, load_config
from realign_data.store import Store
from tests.helpers import ONE_THREAD, build_command, run_cli
from tests.openai_server import Reply, ScriptedOpenAIServer
from tests.test_build import pair_rows, tiny_config

ray = pytest.importorskip("ray", reason="Ray is not installed (the dev extra installs it)")
pytestmark = pytest.mark.xdist_group("ray")  # one cluster per test process: these run in the same one


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    local.add_node(num_cpus=1)
    yield local
    ray.shutdown()
    local.shutdown()


def on_ray(cluster, **sets):
    return {"execution.backend": "ray", "execution.address": cluster.address, "execution.chunk": 4, **sets}


def local_build_rows(store: Store, config: BuildConfig) -> list[dict]:
    """The local backend's pairs, computed with one torch thread as each worker (cpus_per_worker=1) uses: a
    matrix product's last bits depend on the number of threads that sum it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build = Build(config, store)
        return pair_rows(build.commit(build.run()))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, tiny_model_dir):
    return local_build_rows(Store(tmp_path_factory.mktemp("local")), tiny_config(tiny_model_dir))


def test_reward_model_scores_on_ray_are_the_local_ones(tmp_path, tiny_model_dir, reward_model_dir, cluster):
    reward = {"scoring.method": "reward_model", "scoring.model": {"spec": str(reward_model_dir)}}
    local = local_build_rows(Store(tmp_path / "local"), tiny_config(tiny_model_dir, **reward))
    build = Build(tiny_config(tiny_model_dir, **reward, **on_ray(cluster)), Store(tmp_path / "ray"))
    rows = pair_rows(build.commit(build.run()))
    assert build.scorer_id().startswith(f"reward:hf:float32:{reward_model_dir}@sha256:")  # reward batches: float32
    assert rows == local and {row["pair_type"] for row in rows} >= {"on_policy"}


def engine_worker_pids() -> list[int]:
    """The processes of the engine actors (Ray titles each worker process after the actor it holds)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [
        int(line.split()[0]) for line in listing.splitlines() if "ray::MapWorker(MapBatches(_EngineWorker))" in line
    ]


def test_a_ray_build_gives_the_local_rows_even_when_a_worker_actor_is_killed(
    tmp_path, tiny_model_dir, cluster, local_rows
):
    """The rows of a local build, exactly, from a Ray build one of whose engine actors is killed mid-stage (it is
    restarted and the stage completes); each result is counted as computed once."""
    config = tiny_config(tiny_model_dir, **on_ray(cluster, **{"execution.chunk": 2}))
    build = Build(config, Store(tmp_path))
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(result=build.run()))
    worker.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        pids = engine_worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.2)
    worker.join(600)
    assert killed is not None, "no engine actor was seen alive"
    result = outcome["result"]
    assert result.stats["computed"] == {"generate": 18, "score": 18, "revise": 6, "score revisions": 6}
    rows = pair_rows(build.commit(result))
    for mine, theirs in zip(rows, local_rows, strict=True):
        assert mine == theirs, {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


def test_a_killed_driver_reruns_only_what_is_missing(tmp_path, tiny_model_dir, cluster, uninterrupted):
    command = [*build_command(tmp_path, tiny_model_dir), "--ray", cluster.address, "--set", "execution.chunk=4"]
    env = {**os.environ, **ONE_THREAD}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    stage_dir = tmp_path / "runs" / "smoke" / "generate"
    deadline = time.monotonic() + 300
    while not list(stage_dir.glob("part-*.parquet")):
        assert process.poll() is None, "the build finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    import pyarrow.parquet as pq

    cached = sum(pq.read_metadata(part).num_rows for part in stage_dir.glob("part-*.parquet"))
    assert cached >= 1 and Store(tmp_path).versions() == []
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr
    computed = next(line for line in resumed.stdout.splitlines() if "computed now" in line)
    generated = int(computed.split("generate=")[1].split(",")[0].split()[0])
    assert generated == 76 * 2 - cached, (cached, resumed.stdout)  # only the samples the killed run had not cached
    assert pair_rows(Store(tmp_path).resolve("smoke@v1")) == uninterrupted


def test_openai_faults_on_ray_workers_are_retried_and_counted_as_locally(tmp_path, cluster):
    def script(request, seen):
        content = request["messages"][-1]["content"]
        if "Rate the response" in content:
            return Reply(content=f"Rating: {min(10, 2 + len(content) % 7)}")
        if "haiku" in content:
            return Reply(status=500)  # every time: retried, then counted as failed
        if "poem" in content and seen % 3 == 0:
            return Reply(status=503)  # now and then: a retry succeeds
        return Reply(content=f"answer to {content[:20]}")

    def run(store, sets):
        with ScriptedOpenAIServer(script) as server:
            values = [
                "engine.kind=openai",
                f"engine.base_urls=[{server.url}]",
                "engine.max_retries=1",
                "engine.retry_backoff_s=0.01",
                "policy.spec=served-model",
                "prompts.limit=76",
                "generation.num_samples=2",
                "pairs.types=[on_policy]",
                *sets,
            ]
            return Build(load_config(BuildConfig, None, values), Store(store)).run()

    local = run(tmp_path / "local", [])
    remote = run(tmp_path / "ray", ["execution.backend=ray", f"execution.address={cluster.address}"])
    assert remote.failures["generate"] == local.failures["generate"] and local.failures["generate"]
    assert remote.stats["retries"] == local.stats["retries"] and local.stats["retries"]["generate"]
    assert remote.rows == local.rows


def test_ray_unreachable_is_one_line_exit_1(tmp_path, tiny_model_dir):
    result = run_cli(
        "generate", "--store", str(tmp_path), "--policy", str(tiny_model_dir), "--limit", "2", "--ray", "127.0.0.1:9"
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: cannot reach the Ray cluster at 127.0.0.1:9"), result.stderr[-2000:]
