"""Output that a pipe and an 80-column terminal can use, on a store whose path holds a quote and a space."""

from __future__ import annotations

import csv
import io

import pytest

from realign_data.store import Store
from tests.helpers import pair_row, pair_table, run_cli, strict_json

NARROW = {"COLUMNS": "80"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("out") / "it's a store"
    target = Store(root)
    target.write_version("demo", [pair_table([pair_row(i) for i in range(12)])])
    target.write_version("demo", [pair_table([pair_row(i) for i in range(20)])], config={"note": "second"})
    return root


COMMANDS = [
    ["list"],
    ["show", "demo@v2"],
    ["show", "demo"],
    ["diff", "demo@v1", "demo@v2"],
    ["query", "SELECT version, pair_type, count(*) AS n, avg(margin) AS m FROM pairs GROUP BY ALL ORDER BY ALL"],
    ["verify", "demo@v2"],
    ["catalog", "rebuild"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0] + ("-" + a[1] if len(a) > 1 else ""))
def test_tables_fit_80_columns(store, args):
    result = run_cli(*args, "--store", str(store), env=NARROW, check=True)
    lines = result.stdout.splitlines()
    assert lines, "the command printed nothing"
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, too_wide
    assert "…" not in result.stdout, "a header or value was cut off"


@pytest.mark.parametrize(
    "args",
    [a for a in COMMANDS if a[0] in {"list", "show", "diff", "query"}],
    ids=lambda a: a[0] + ("-" + a[1] if len(a) > 1 else ""),
)
def test_json_and_csv_parse_cleanly(store, args):
    parsed = strict_json(run_cli(*args, "--store", str(store), "--format", "json", check=True).stdout)
    assert parsed
    text = run_cli(*args, "--store", str(store), "--format", "csv", check=True).stdout
    assert "\r" not in text
    table = list(csv.reader(io.StringIO(text)))
    assert len(table) >= 2 and len({len(row) for row in table}) == 1


def test_values_survive_the_quoted_path_and_nan_is_null(store):
    shown = strict_json(run_cli("show", "demo@v2", "--store", str(store), "--format", "json", check=True).stdout)
    assert shown["num_rows"] == 20 and shown["ref"] == "demo@v2"
    rows = strict_json(
        run_cli(
            "query",
            "SELECT count(*) AS n, 'nan'::DOUBLE AS x, -'inf'::DOUBLE AS y FROM pairs WHERE version = 2",
            "--store",
            str(store),
            "--format",
            "json",
            check=True,
        ).stdout
    )
    assert rows == [{"n": 20, "x": None, "y": None}]
    listed = strict_json(run_cli("list", "--store", str(store), "--format", "json", check=True).stdout)
    assert [row["version"] for row in listed] == ["demo@v1", "demo@v2"]
    assert [row["rows"] for row in listed] == [12, 20]
    diff = run_cli("diff", "demo@v1", "demo@v2", "--store", str(store), "--format", "json", check=True)
    assert strict_json(diff.stdout)
