"""``tokenscale budgets create|list|delete`` for scoped budgets, against real databases."""

from __future__ import annotations

import json
import uuid

import pytest

from tokenscale.cli import main
from tokenscale.store import migrate


def test_create_list_delete_scoped_budgets(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(db_url)
    db = ["--database-url", db_url]
    create = ["budgets", "create", "acme", "--scope", "user", "--value", "ana@example.com"]
    assert (
        main([*create, "--window", "5h:tokens:200000", "--window", "30d:usd:100.5", "--name", "ana", *db])
        == 0
    )
    budget_id = capsys.readouterr().out.strip()
    assert uuid.UUID(budget_id)
    assert main(["budgets", "create", "acme", "--scope", "tenant", "--window", "7d:tokens:9000000", *db]) == 0
    tenant_id = capsys.readouterr().out.strip()
    assert main(["budgets", "set", "acme", "--limit", "5000", *db]) == 0
    capsys.readouterr()

    assert main(["budgets", "list", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tenant\ttoken_limit\twindow_days\tcompany_id"
    assert lines[1].split("\t")[:3] == ["acme", "5000", "30"]
    assert lines[2:4] == ["", "id\ttenant\tscope\tvalue\twindows\tname"]
    assert sorted(line.split("\t") for line in lines[4:]) == sorted(
        [
            [budget_id, "acme", "user", "ana@example.com", "5h:tokens:200000,30d:usd:100.5", "ana"],
            [tenant_id, "acme", "tenant", "", "7d:tokens:9000000", ""],
        ]
    )
    assert main(["budgets", "list", "--scoped", "--json", *db]) == 0
    listed = json.loads(capsys.readouterr().out)
    ana = next(b for b in listed if b["id"] == budget_id)
    assert ana["windows"] == [
        {"unit": "tokens", "limit": 200000, "windowSeconds": 5 * 3600},
        {"unit": "usd", "limit": 100.5, "windowSeconds": 30 * 86400},
    ]
    assert (ana["tenant"], ana["scope"], ana["scopeValue"]) == ("acme", "user", "ana@example.com")

    assert main(["budgets", "delete", "--id", budget_id, *db]) == 0
    assert capsys.readouterr().out == "deleted\n"
    assert main(["budgets", "delete", "--id", budget_id, *db]) == 1
    assert capsys.readouterr().out == f"error: no budget {budget_id!r}\n"
    assert main(["budgets", "list", "--scoped", *db]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"{tenant_id}\tacme\ttenant\t\t7d:tokens:9000000\t"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--scope", "user", "--window", "1h:tokens:5"],
            "error: scopeValue: a user budget needs the user it applies to",
        ),
        (
            ["--scope", "user", "--value", "x"],
            "error: a budget needs at least one --window (e.g. --window 24h:tokens:500000)",
        ),
        (
            ["--scope", "tool", "--value", "codex", "--window", "90m:tokens:5"],
            "error: invalid window '90m:tokens:5': expected <N>h or <N>d, a unit and a limit, "
            "e.g. 24h:tokens:500000 or 30d:usd:100",
        ),
        (
            ["--scope", "tool", "--value", "codex", "--window", "400d:usd:5"],
            "error: window.windowSeconds: must be whole hours from 1 hour to 366 days (3600 to 31622400, "
            "a multiple of 3600), not 34560000",
        ),
        (
            ["--scope", "model", "--value", "o3", "--window", "1h:tokens:1.5"],
            "error: window.limit: a token limit must be a whole number",
        ),
    ],
)
def test_create_errors_are_clear(
    db_url: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    migrate(db_url)
    assert main(["budgets", "create", "acme", *args, "--database-url", db_url]) == 2
    assert capsys.readouterr().out == message + "\n"


def test_delete_needs_a_tenant_or_an_id(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(db_url)
    assert main(["budgets", "delete", "--database-url", db_url]) == 2
    assert "give a tenant" in capsys.readouterr().out
