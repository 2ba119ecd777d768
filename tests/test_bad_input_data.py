"""Bad input to `realign-data` and `realign-train`: one line naming what is wrong, exit 2, nothing written.

Each case runs the real console script in a subprocess against a real store, and compares the sha256 of every
file under the test folder before and after: a refused command must not write, create or change anything.
"""

from __future__ import annotations

import pytest

from realign_data.store import Store
from tests.helpers import assert_one_line_error, pair_row, pair_table, run_cli, tree_digest

KEY = "sk-abcdefghijklmnopqrstuvwx"  # key-shaped, never a real key


@pytest.fixture
def work(tmp_path):
    """A store with demo@v1, a folder that must survive, a manifest directory and a few bad files."""
    Store(tmp_path / "store").write_version("demo", [pair_table([pair_row(i) for i in range(6)])])
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("must survive --fresh")
    (tmp_path / "manifest-dir").mkdir()
    (tmp_path / "bad.yaml").write_text("generation: {temperature: 0.3\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "extends-dir.yaml").write_text("extends: manifest-dir\n")
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "demo-v1.jsonl").write_text("")
    (tmp_path / "hub-out").mkdir()
    return tmp_path


S = "{store}"
CASES = [
    # run ids and --fresh: never a path, never outside <store>/runs/
    (["build", "--run-id", "../../keep", "--fresh", "--store", S], "run id '../../keep'"),
    (["build", "--run-id", "{tmp}/keep", "--fresh", "--store", S], "run id"),
    (["build", "--run-id", "..", "--fresh", "--store", S], "run id '..'"),
    (["generate", "--run-id", "a/b", "--store", S], "run id 'a/b'"),
    # manifests
    (["build", "-m", "{tmp}/manifest-dir", "--store", S], "manifest-dir: is a directory"),
    (["build", "-m", "{tmp}/missing.yaml", "--store", S], "missing.yaml: manifest not found"),
    (["build", "-m", "{tmp}/bad.yaml", "--store", S], "bad.yaml:2: invalid YAML"),
    (["build", "-m", "{tmp}/list.yaml", "--store", S], "list.yaml: a manifest must be a YAML mapping"),
    (["build", "-m", "{tmp}/extends-dir.yaml", "--store", S], "manifest-dir: is a directory"),
    (["config", "show", "-m", "{tmp}/manifest-dir"], "is a directory"),
    (["config", "show", "--format", "toml"], "--format 'toml'"),
    (["recipe", "run", "{tmp}/r.yaml", "--store", S], "has moved: run `realign-train recipe /"),
    # config values
    (["build", "--set", "generation.temperature=.inf", "--store", S], "generation.temperature"),
    (["build", "--set", "generation.temperature=nan", "--store", S], "generation.temperature"),
    (["config", "show", "--set", "generation.top_p=-inf"], "generation.top_p"),
    (["build", "--set", "generation.num_samples=0", "--store", S], "generation.num_samples"),
    (["build", "--set", "nonsense.key=1", "--store", S], "nonsense: unknown key"),
    (["build", "--set", "novalue", "--store", S], "expected KEY=VALUE"),
    (["build", "--set", "pairs.types=[sideways]", "--store", S], "pairs.types.0"),
    (["build", "--set", "pairs.mix={on_policy: -1}", "--store", S], "pairs.mix.on_policy"),
    (["build", "--set", "pairs.mix={sideways: 1}", "--store", S], "pairs.mix.sideways"),
    (["build", "--set", f"engine.api_key_env={KEY}", "--store", S], "engine.api_key_env: the value looks like"),
    (["build", "--set", f"scoring.template={KEY}", "--store", S], "scoring.template: the value looks like"),
    (["build", "--set", "engine.api_key=x", "--store", S], "engine.api_key: secrets are not allowed"),
    (["build", "--engine", "bogus", "--store", S], "engine.kind"),
    (["build", "--engine", "openai", "--store", S], "engine.base_urls is empty"),
    (["build", "--limit", "0", "--store", S], "--limit"),
    (["build", "--dataset", "a/b", "--store", S], "dataset"),
    (["build", "--prompts", "{tmp}/nope.jsonl", "--store", S], "nope.jsonl: no such file"),
    (["build", "--policy", "{tmp}/no-model", "--store", S], "no-model"),
    (["prompts", "builtin", "--max-tokens", "5"], "--max-tokens needs --tokenizer"),
    # references and store commands
    (["show", "nope", "--store", S], "no dataset 'nope'"),
    (["show", "demo@v9", "--store", S], "no version demo@v9"),
    (["show", "bad ref!", "--store", S], "expected NAME or NAME@vN"),
    (["show", "--store", S], "Missing argument"),
    (["verify", "nope@v1", "--store", S], "no dataset 'nope'"),
    (["diff", "demo@v1", "demo@v2", "--store", S], "no version demo@v2"),
    (["list", "--format", "xml", "--store", S], "--format"),
    (["list", "--bogus", "--store", S], "No such option: --bogus"),
    (["catalog", "bogus", "--store", S], "bogus"),
    (["export", "demo@v1", "--out", "{tmp}/a-file", "--store", S], "a-file: is a file"),
    (["export", "demo@v1", "--out", "{tmp}/taken", "--store", S], "demo-v1.jsonl already exists"),
    (["export", "demo@v1", "--format", "xml", "--out", "{tmp}/out", "--store", S], "--format"),
    (["export", "nope@v1", "--out", "{tmp}/out", "--store", S], "no dataset 'nope'"),
    (["query", "", "--store", S], "no SQL statement"),
    (["query", "SELEC 1", "--store", S], "query: Parser Error"),
    (["query", "SELECT * FROM nope", "--store", S], "query: Catalog Error"),
    (["query", "DROP VIEW pairs", "--store", S], "DROP statements are refused"),
    (["publish", "demo@v1", "--repo-id", "me/x", "--dry-run", "{tmp}/hub-out", "--store", S], "already exists"),
    (["publish", "nope@v1", "--repo-id", "me/x", "--dry-run", "{tmp}/new", "--store", S], "no dataset 'nope'"),
    (["pull", "not-a-repo", "--store", S], "expected ORG/NAME"),
    (["pull", "me/x", "--name", "bad name", "--store", S], "dataset name 'bad name'"),
]
TRAIN_CASES = [
    (["policy", "--store", S, "-o", "{tmp}/out"], "no training data"),
    (["policy", "-d", "nope@v1", "-o", "{tmp}/out", "--store", S], "no dataset 'nope'"),
    (["policy", "-d", "demo@v1", "--store", S], "no output directory"),
    (["policy", "-d", "demo@v1", "-o", "{tmp}/a-file", "--store", S], "a-file: is a file"),
    (["policy", "--set", "beta=-1", "-d", "demo@v1", "-o", "{tmp}/out", "--store", S], "beta"),
    (["policy", "--set", "learning_rate=.inf", "-d", "demo@v1", "-o", "{tmp}/out", "--store", S], "learning_rate"),
    (["reviser", "-m", "{tmp}/manifest-dir", "--store", S], "is a directory"),
    (["recipe", "{tmp}/missing.yaml", "--store", S], "manifest not found"),
    (["recipe", "{tmp}/manifest-dir", "--store", S], "is a directory"),
    (["policy", "--model", "{tmp}/no-model", "-d", "demo@v1", "-o", "{tmp}/out", "--store", S], "no-model"),
]


def _run(work, args, prog):
    filled = [a.replace("{store}", str(work / "store")).replace("{tmp}", str(work)) for a in args]
    return run_cli(*filled, prog=prog, env={"REALIGN_HOME": str(work / "home")}, cwd=work)


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_realign_data_bad_input(work, args, needle):
    before = tree_digest(work)
    result = _run(work, args, "realign-data")
    assert_one_line_error(result, 2, needle)
    assert tree_digest(work) == before


@pytest.mark.parametrize("args, needle", TRAIN_CASES, ids=[" ".join(c[0][:3]) for c in TRAIN_CASES])
def test_realign_train_bad_input(work, args, needle):
    before = tree_digest(work)
    result = _run(work, args, "realign-train")
    assert_one_line_error(result, 2, needle)
    assert tree_digest(work) == before


def test_debug_shows_the_traceback_and_its_root_cause(work):
    plain = _run(work, ["build", "-m", str(work / "manifest-dir")], "realign-data")
    debug = _run(work, ["build", "-m", str(work / "manifest-dir"), "--debug"], "realign-data")
    assert "Traceback" not in plain.stderr
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert "IsADirectoryError" in debug.stderr  # the root cause that the one-line error summarizes
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
    via_env = run_cli("show", "nope", "--store", str(work / "store"), env={"REALIGN_DEBUG": "1"})
    assert via_env.returncode == 2 and "Traceback" in via_env.stderr
