"""The budget alerts' HTTP API: webhooks, thresholds, recent alerts and the check with its forecast."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from api_servers import ApiServers

from tokenscale.alerts import AlertService, DeliveryPolicy
from tokenscale.mapping import UsageEvent

TENANT = "acme"
USER = "ana@example.com"


def test_alerts_api(api: ApiServers, make_event: Callable[..., UsageEvent]) -> None:
    admin = api.key(TENANT, ("read", "admin"))
    reader = api.key(TENANT, ("read",))
    other = api.key("globex", ("read", "admin"))
    created = api.http(
        "POST",
        "/v1/budgets",
        admin,
        json={
            "scope": "user",
            "scopeValue": USER,
            "windows": [{"unit": "tokens", "limit": 10000, "windowSeconds": 24 * 3600}],
        },
    ).json()
    budget_id = created["id"]
    # A steady 1,000 tokens an hour over the last 4 hours: 4,000 of 10,000.
    now = datetime.now(UTC)
    api.write(
        make_event(TENANT, age_days=(i * 360 + 30) / 86400, user_email=USER, input_tokens=100)
        for i in range(40)
    )
    check = api.http("GET", f"/v1/budgets/check?user={USER}", reader).json()
    forecast = api.http("GET", f"/v1/budgets/forecast?user={USER}", reader)
    assert forecast.status_code == 200, forecast.text
    [window] = forecast.json()["windows"]
    [checked] = check["windows"]
    # The check's window, with three fields added.
    assert {k: v for k, v in window.items() if k not in ("windowStart", "windowEnd")} == {
        **{k: v for k, v in checked.items() if k not in ("windowStart", "windowEnd")},
        "ratePerHour": pytest.approx(1000.0, rel=0.05),
        "forecastExhaustedAt": window["forecastExhaustedAt"],
        "thresholds": [50, 80, 100],
    }
    assert window["used"] == 4000
    exhausted = datetime.fromisoformat(window["forecastExhaustedAt"].replace("Z", "+00:00"))
    # 6,000 left at 1,000 an hour: 6 hours, within 5%.
    assert (exhausted - now).total_seconds() == pytest.approx(6 * 3600, rel=0.05)

    # Thresholds: admin only, the tenant's own budgets only.
    path = f"/v1/budgets/{budget_id}/thresholds"
    assert api.http("PUT", path, reader, json={"percents": [30]}).status_code == 403
    assert api.http("PUT", path, other, json={"percents": [30]}).status_code == 404
    bad = api.http("PUT", path, admin, json={"percents": [0]})
    assert (bad.status_code, bad.json()["field"]) == (400, "percents")
    ok = api.http("PUT", path, admin, json={"percents": [30, 90]})
    assert ok.json() == {"budgetId": budget_id, "percents": [30, 90]}
    assert api.http("GET", f"/v1/budgets/forecast?user={USER}", reader).json()["windows"][0][
        "thresholds"
    ] == [30, 90]

    # Webhooks: admin adds and removes, readers list them (URLs shortened), tenants apart.
    hooks = "/v1/alerts/webhooks"
    url = "http://127.0.0.1:9/secret-path-abcd"
    assert api.http("POST", hooks, reader, json={"url": url}).status_code == 403
    bad = api.http("POST", hooks, admin, json={"url": url, "format": "xml"})
    assert (bad.status_code, bad.json()["field"]) == (400, "format")
    added = api.http("POST", hooks, admin, json={"url": url, "format": "slack"})
    assert added.status_code == 201
    assert added.json()["url"] == "http://127.0.0.1:9/…abcd"
    assert [h["id"] for h in api.http("GET", hooks, reader).json()["webhooks"]] == [added.json()["id"]]
    assert api.http("GET", hooks, other).json() == {"webhooks": []}

    # An evaluation fires the 30% threshold; the alert shows in /v1/alerts, with its delivery.
    service = AlertService(api.pool, policy=DeliveryPolicy(retry_seconds=60, timeout=2))
    [fired] = service.evaluate().fired
    assert fired.percent == 30
    listed = api.http("GET", "/v1/alerts", reader).json()["alerts"]
    assert [(a["alertId"], a["threshold"], a["used"]) for a in listed] == [(fired.id, 30, 4000)]
    assert listed[0]["deliveries"][0]["status"] == "pending"
    assert listed[0]["forecastExhaustedAt"] is not None
    assert api.http("GET", "/v1/alerts", other).json() == {"alerts": []}
    assert api.http("GET", "/v1/alerts?limit=0", reader).status_code == 400
    assert api.http("GET", "/v1/alerts").status_code == 401
    assert api.http("DELETE", f"{hooks}/{added.json()['id']}", other).status_code == 404
    assert api.http("DELETE", f"{hooks}/{added.json()['id']}", admin).json()["deleted"] is True
    # The budget routes still answer their own paths.
    assert api.http("GET", f"/v1/budgets/{budget_id}", reader).json()["id"] == budget_id
    assert now - timedelta(days=1) < datetime.fromisoformat(listed[0]["firedAt"].replace("Z", "+00:00"))
