"""Logging: quiet by default; --verbose tells a person debugging a run which engine, which files and which retries."""

from __future__ import annotations

import json

from tests.helpers import run_cli
from tests.openai_server import Reply, ScriptedOpenAIServer

PROMPTS = ["Name a prime number.", "What colour is the sky?"]


def test_quiet_by_default_and_verbose_names_engine_files_and_retries(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    def script(request, seen):  # every request fails once with a 503, then gets an answer
        return Reply(status=503) if seen == 0 else Reply(content="An answer.")

    def generate(store: str, *extra: str):
        return run_cli(
            "generate",
            "--store",
            str(tmp_path / store),
            "--engine",
            "openai",
            "--policy",
            "served",
            "--prompts",
            str(prompts),
            "--set",
            f"engine.base_urls=[{server.url}]",
            "--set",
            "engine.retry_backoff_s=0.01",
            *extra,
            check=True,
        )

    with ScriptedOpenAIServer(script) as server:
        quiet = generate("quiet")
        server.seen.clear()
        verbose = generate("verbose", "--verbose")
    assert quiet.stderr.strip() == ""
    logged = verbose.stderr
    assert f"INFO realign_data.engines: engine openai for served at {server.url}" in logged
    assert f"prompts: 2 row(s) from {prompts}" in logged
    assert logged.count("InternalServerError, retry 1 of") == 2  # one retry per request, each with its reason
    assert f"stage cache {tmp_path / 'verbose' / 'runs'}" in logged
    assert "generate=" in verbose.stdout and "generate=" in quiet.stdout  # the summary is unchanged


def test_verbose_log_lines_never_enter_piped_json():
    result = run_cli("prompts", "builtin", "--format", "json", "--verbose")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # log lines go to stderr, never into piped machine output
    assert "prompts: " in result.stderr
