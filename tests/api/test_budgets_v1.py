"""Scoped budgets over ``/v1/budgets``: CRUD, the check's contract, tenants kept apart (real servers)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_servers import ApiServers

from tokenscale.instrumentation._budget import BudgetCheck, check_budgets
from tokenscale.mapping import UsageEvent

TENANT = "acme"
OTHER = "globex"
WINDOW_KEYS = [
    "budgetId",
    "scope",
    "scopeValue",
    "unit",
    "limit",
    "used",
    "remaining",
    "fraction",
    "windowSeconds",
    "windowStart",
    "windowEnd",
    "exceeded",
]


def create(api: ApiServers, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.http("POST", "/v1/budgets", key, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/budgets/{created['id']}"
    return created


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def test_check_contract_windows_tightest_first(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    admin = api.key(TENANT, ("read", "admin"))
    reader = api.key(TENANT, ("read",))
    tenant_budget = create(
        api,
        admin,
        {"scope": "tenant", "windows": [{"unit": "tokens", "limit": 100000, "windowSeconds": 86400}]},
    )
    user_budget = create(
        api,
        admin,
        {
            "scope": "user",
            "scopeValue": "alice@example.com",
            "name": "alice",
            "windows": [
                {"unit": "tokens", "limit": 1000, "windowSeconds": 5 * 3600},
                {"unit": "usd", "limit": 2.5, "windowSeconds": 7 * 86400},
            ],
        },
    )
    create(
        api,
        admin,
        {
            "scope": "user",
            "scopeValue": "bob@example.com",
            "windows": [{"unit": "tokens", "limit": 10, "windowSeconds": 3600}],
        },
    )
    create(
        api,
        admin,
        {
            "scope": "model",
            "scopeValue": "gpt-5",
            "windows": [{"unit": "tokens", "limit": 400, "windowSeconds": 3600}],
        },
    )
    api.write(
        [
            make_event(
                TENANT,
                user_email="alice@example.com",
                model="gpt-5",
                input_tokens=300,
                output_tokens=100,
                cost_usd=0.5,
            ),
            make_event(
                TENANT,
                user_email="alice@example.com",
                model="o3",
                input_tokens=200,
                age_days=1.5,
                cost_usd=1.25,
            ),  # 36 h ago: outside the 5 h and 24 h windows, inside 7 days
            make_event(TENANT, user_email="bob@example.com", model="o3", input_tokens=7, cost_usd=0.01),
            make_event(OTHER, user_email="alice@example.com", model="gpt-5", input_tokens=9999),
        ]
    )
    response = api.http("GET", "/v1/budgets/check?user=alice@example.com&model=gpt-5", reader)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer) == ["allowed", "checkedAt", "windows"]
    assert answer["allowed"] is False
    now = parse_time(answer["checkedAt"])
    rows = [
        (
            w["budgetId"],
            w["scope"],
            w["scopeValue"],
            w["unit"],
            w["limit"],
            w["used"],
            w["remaining"],
            w["fraction"],
            w["windowSeconds"],
            w["exceeded"],
        )
        for w in answer["windows"]
    ]
    assert all(list(w) == WINDOW_KEYS for w in answer["windows"])
    model_id = next(w["budgetId"] for w in answer["windows"] if w["scope"] == "model")
    assert rows == [
        (model_id, "model", "gpt-5", "tokens", 400, 400, 0, 1.0, 3600, True),
        (user_budget["id"], "user", "alice@example.com", "usd", 2.5, 1.75, 0.75, 0.7, 7 * 86400, False),
        (user_budget["id"], "user", "alice@example.com", "tokens", 1000, 400, 600, 0.4, 5 * 3600, False),
        (tenant_budget["id"], "tenant", None, "tokens", 100000, 407, 99593, 0.00407, 86400, False),
    ]
    for window in answer["windows"]:
        assert parse_time(window["windowEnd"]) == now
        assert parse_time(window["windowStart"]) == now - timedelta(seconds=window["windowSeconds"])

    # The client function parses the same answer.
    check = check_budgets(api.base, api_key=reader, user="alice@example.com", model="gpt-5")
    assert isinstance(check, BudgetCheck)
    assert check.allowed is False
    assert [(w.scope, w.unit, w.used, w.limit) for w in check.windows] == [
        ("model", "tokens", 400.0, 400.0),
        ("user", "usd", 1.75, 2.5),
        ("user", "tokens", 400.0, 1000.0),
        ("tenant", "tokens", 407.0, 100000.0),
    ]
    assert check.exceeded[0].describe() == "model gpt-5: 400 of 400 tokens in the last 1 h"

    # No identity: the tenant budgets only.
    alone = api.http("GET", "/v1/budgets/check", reader).json()
    assert alone["allowed"] is True
    assert [(w["scope"], w["used"]) for w in alone["windows"]] == [("tenant", 407)]


def test_tenants_are_isolated(api: ApiServers) -> None:
    admin = api.key(TENANT, ("read", "admin"))
    other = api.key(OTHER, ("read", "admin"))
    budget = create(
        api,
        admin,
        {
            "scope": "tool",
            "scopeValue": "claude_code",
            "windows": [{"unit": "usd", "limit": 10, "windowSeconds": 86400}],
        },
    )
    assert api.http("GET", "/v1/budgets", other).json() == {"budgets": []}
    assert api.http("GET", f"/v1/budgets/{budget['id']}", other).status_code == 404
    assert api.http("DELETE", f"/v1/budgets/{budget['id']}", other).status_code == 404
    assert api.http("GET", "/v1/budgets/check?tool=claude_code", other).json()["windows"] == []
    listed = api.http("GET", "/v1/budgets", admin).json()["budgets"]
    assert listed == [budget]
    assert api.http("GET", f"/v1/budgets/{budget['id']}", admin).json() == budget
    deleted = api.http("DELETE", f"/v1/budgets/{budget['id']}", admin)
    assert deleted.status_code == 200 and deleted.json() == budget
    assert api.http("GET", "/v1/budgets", admin).json() == {"budgets": []}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scope": "department", "windows": []}, "scope"),
        ({"scope": "user", "windows": [{"unit": "tokens", "limit": 1, "windowSeconds": 3600}]}, "scopeValue"),
        (
            {
                "scope": "tenant",
                "scopeValue": "x",
                "windows": [{"unit": "tokens", "limit": 1, "windowSeconds": 3600}],
            },
            "scopeValue",
        ),
        ({"scope": "tenant", "windows": []}, "windows"),
        (
            {"scope": "tenant", "windows": [{"unit": "eur", "limit": 1, "windowSeconds": 3600}]},
            "windows[0].unit",
        ),
        (
            {"scope": "tenant", "windows": [{"unit": "tokens", "limit": -1, "windowSeconds": 3600}]},
            "windows[0].limit",
        ),
        (
            {"scope": "tenant", "windows": [{"unit": "tokens", "limit": 1.5, "windowSeconds": 3600}]},
            "windows[0].limit",
        ),
        (
            {"scope": "tenant", "windows": [{"unit": "tokens", "limit": 1, "windowSeconds": 1800}]},
            "windows[0].windowSeconds",
        ),
        (
            {"scope": "tenant", "windows": [{"unit": "usd", "limit": 1, "windowSeconds": 367 * 86400}]},
            "windows[0].windowSeconds",
        ),
        (
            {"scope": "tenant", "windows": [{"unit": "usd", "limit": 1, "windowSeconds": 3600, "x": 1}]},
            "windows[0].x",
        ),
        ({"scope": "tenant", "limit": 5, "windows": []}, "limit"),
    ],
)
def test_invalid_budgets_are_refused_naming_the_field(
    api: ApiServers, body: dict[str, Any], field: str
) -> None:
    admin = api.key(TENANT, ("read", "admin"))
    response = api.http("POST", "/v1/budgets", admin, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert response.json()["error"] == "invalid_request"
    assert api.query("SELECT count(*) FROM tokenscale.scoped_budgets") == [(0,)]


def test_scopes_of_keys(api: ApiServers) -> None:
    reader = api.key(TENANT, ("read",))
    ingest = api.key(TENANT, ("ingest",))
    body = {"scope": "tenant", "windows": [{"unit": "tokens", "limit": 1, "windowSeconds": 3600}]}
    assert api.http("POST", "/v1/budgets", reader, json=body).status_code == 403
    assert api.http("GET", "/v1/budgets/check", ingest).status_code == 403
    assert api.http("GET", "/v1/budgets/check", None).status_code == 401
    unknown = api.http("GET", "/v1/budgets/check?users=alice", reader)
    assert (unknown.status_code, unknown.json()["field"]) == (400, "users")
    assert api.http("GET", "/v1/budgets/not-a-uuid", reader).status_code == 404
