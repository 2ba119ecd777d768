"""The OpenAI-compatible engine against real local servers: transformers serve, and a scripted fault server."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from realign_data.engines import GenerationRequest, SamplingParams
from realign_data.engines.base import TokenLogprob
from realign_data.engines.hf import HFEngine
from realign_data.engines.openai_engine import OpenAIEngine
from realign_data.errors import RealignError
from realign_data.models import resolve_model
from tests.openai_server import Reply, ScriptedOpenAIServer

PARAMS = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)


def requests(count, params=PARAMS):
    return [GenerationRequest(f"r{i}", [{"role": "user", "content": f"question {i}"}], params) for i in range(count)]


def engine(*urls, **options):
    options = {"max_retries": 5, "timeout_s": 2.0, "retry_backoff_s": 0.01, **options}
    return OpenAIEngine("test-model", list(urls), **options)


def collect(eng, reqs):
    return {r.request_id: r for r in eng.generate(reqs)}


def test_every_kind_of_fault_is_retried_until_it_succeeds():
    faults = [
        Reply(status=429, headers={"Retry-After": "0"}),
        Reply(status=500),
        Reply(status=503),
        Reply(body=b"{this is not json"),
        Reply(body=b'{"id": "x", "choices": []}'),
        Reply(delay=3.0),
    ]

    def script(request, seen):
        return faults[seen] if seen < len(faults) else Reply()

    with ScriptedOpenAIServer(script) as server:
        eng = engine(server.url, max_retries=len(faults))
        results = collect(eng, requests(4))
    assert all(r.error is None for r in results.values())
    assert results["r2"].completions[0].text == "echo: question 2"
    assert server.calls == 4 * (len(faults) + 1)
    assert eng.stats["retry:RateLimitError"] == 4 and eng.stats["retry:APITimeoutError"] == 4
    assert eng.stats["retry:MalformedResponse"] + eng.stats["retry:APIResponseValidationError"] >= 4


def test_requests_that_keep_failing_are_reported_by_id_not_dropped():
    def script(request, seen):
        return Reply(status=500) if request["messages"][-1]["content"] == "question 1" else Reply()

    with ScriptedOpenAIServer(script) as server:
        results = collect(engine(server.url, max_retries=2), requests(3))
    assert sorted(results) == ["r0", "r1", "r2"]
    assert results["r1"].error.startswith("InternalServerError") and results["r1"].completions == []
    assert results["r0"].error is None and results["r2"].error is None
    assert server.seen['[{"content": "question 1", "role": "user"}]'] == 3  # first try + 2 retries


def test_client_errors_are_not_retried():
    with ScriptedOpenAIServer(lambda request, seen: Reply(status=400)) as server:
        results = collect(engine(server.url), requests(2))
    assert all(r.error.startswith("HTTP 400") for r in results.values())
    assert server.calls == 2


def test_servers_that_ignore_n_are_asked_again():
    with ScriptedOpenAIServer(lambda request, seen: Reply(choices=1)) as server:
        results = collect(engine(server.url), requests(2, SamplingParams(n=3, temperature=0.7)))
    assert [len(r.completions) for r in results.values()] == [3, 3]
    assert server.calls == 6


def test_several_base_urls_are_served_round_robin():
    with ScriptedOpenAIServer() as first, ScriptedOpenAIServer() as second:
        results = collect(engine(first.url, second.url, concurrency=4), requests(20))
    assert len(results) == 20 and first.calls == 10 and second.calls == 10


def test_concurrency_is_bounded_and_used():
    with ScriptedOpenAIServer(latency=0.3) as server:
        results = collect(engine(server.url, concurrency=8, timeout_s=30), requests(24))
    assert len(results) == 24
    assert server.max_in_flight == 8  # never more than 8 requests at once, and 8 were in flight together


def test_no_base_url_is_an_actionable_error():
    with pytest.raises(RealignError, match="engine.base_urls is empty"):
        OpenAIEngine("m", [])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_serve(tiny_model_dir):
    """`transformers serve` on 127.0.0.1 with the tiny model preloaded (the serve extra must be installed)."""
    cli = Path(sys.executable).parent / "transformers"
    pytest.importorskip("fastapi", reason="transformers serve needs the serve extra (pip install -e '.[serve]')")
    port = free_port()
    process = subprocess.Popen(
        [str(cli), "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, "transformers serve exited"
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)


def test_against_transformers_serve_matches_the_hf_engine(transformers_serve, tiny_model_dir):
    served = OpenAIEngine(str(tiny_model_dir), [transformers_serve], concurrency=2, timeout_s=60)
    reqs = requests(3, SamplingParams(n=2, temperature=0.0, max_new_tokens=8))
    remote = collect(served, reqs)
    local = collect(HFEngine(resolve_model(str(tiny_model_dir))), reqs)
    for request_id, result in remote.items():
        assert result.error is None and len(result.completions) == 2  # n filled in although the server ignores it
        assert result.completions[0].text == local[request_id].completions[0].text  # greedy: the same model output
        assert result.completions[0].prompt_tokens == local[request_id].completions[0].prompt_tokens


def test_logprobs_are_asked_for_and_parsed_into_token_logprobs():
    content = [
        {
            "token": "Hi",
            "logprob": -0.25,
            "bytes": None,
            "top_logprobs": [
                {"token": "Hi", "logprob": -0.25, "bytes": None},
                {"token": "Hello", "logprob": -1.5, "bytes": None},
            ],
        },
        {
            "token": "!",
            "logprob": -2.0,
            "bytes": None,
            "top_logprobs": [
                {"token": ".", "logprob": -0.5, "bytes": None},
                {"token": "!", "logprob": -2.0, "bytes": None},
            ],
        },
    ]
    bodies = []

    def script(request, seen):
        bodies.append(request)
        return Reply(content="Hi!", logprobs=content)

    with ScriptedOpenAIServer(script) as server:
        results = collect(engine(server.url), requests(1, SamplingParams(n=1, temperature=0.0, top_logprobs=2)))
    assert bodies[0]["logprobs"] is True and bodies[0]["top_logprobs"] == 2
    assert results["r0"].completions[0].logprobs == (
        TokenLogprob("Hi", -0.25, (("Hi", -0.25), ("Hello", -1.5))),
        TokenLogprob("!", -2.0, ((".", -0.5), ("!", -2.0))),
    )


def test_a_server_without_logprobs_leaves_them_none_and_unasked_ones_are_not_requested():
    bodies = []

    def script(request, seen):
        bodies.append(request)
        return Reply(content="Hi!")

    with ScriptedOpenAIServer(script) as server:
        asked = collect(engine(server.url), requests(1, SamplingParams(top_logprobs=3)))
        unasked = collect(engine(server.url), requests(1))
    assert asked["r0"].error is None and asked["r0"].completions[0].logprobs is None
    assert unasked["r0"].completions[0].logprobs is None
    assert "logprobs" not in bodies[1] and "top_logprobs" not in bodies[1]


def test_sampling_knobs_outside_the_openai_api_are_sent_only_when_switched_on():
    bodies = []

    def script(request, seen):
        bodies.append(request)
        return Reply()

    knobs = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3}
    with ScriptedOpenAIServer(script) as server:
        collect(engine(server.url), requests(1, SamplingParams()))  # all off: a body OpenAI's hosted API accepts
        collect(engine(server.url), requests(1, SamplingParams(**knobs)))
        collect(engine(server.url), requests(1, SamplingParams(top_k=7)))
    assert not set(knobs) & set(bodies[0])
    assert {key: bodies[1][key] for key in knobs} == knobs
    assert bodies[2]["top_k"] == 7 and not {"min_p", "repetition_penalty"} & set(bodies[2])
