"""The dashboard's alerts panel: the most recent budget alerts and the budget windows' forecasts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from tokenscale.alerts import list_alerts, read_windows
from tokenscale.api.scoped_budgets import iso

__all__ = ["alerts_panel"]

#: Alerts listed.
RECENT_ALERTS: Final = 10
#: Forecasts listed (the windows closest to running out).
FORECASTS: Final = 10
#: Budget windows beyond this are not read for the panel's forecasts (GET /v1/budgets/forecast is).
MAX_FORECAST_WINDOWS: Final = 200


def alerts_panel(conn: psycopg.Connection[Any], tenant: str | None) -> dict[str, Any]:
    """Recent alerts (of ``tenant``) and the forecasts of the windows closest to running out.

    ``available`` is false before the alerts' migration."""
    present = conn.execute(
        "SELECT to_regclass('tokenscale.alerts') IS NOT NULL AND to_regclass('tokenscale.scoped_budgets') "
        "IS NOT NULL AND to_regclass('tokenscale.budgets') IS NOT NULL"
    ).fetchone()
    if not present or not present[0]:
        return {"available": False, "items": [], "forecasts": [], "forecasts_skipped": False}
    items = []
    for alert in list_alerts(conn, tenant, limit=RECENT_ALERTS):
        statuses = [d["status"] for d in alert.deliveries]
        items.append(
            {
                **{k: v for k, v in alert.as_json().items() if k != "type"},
                "delivery": "none"
                if not statuses
                else "failed"
                if "failed" in statuses
                else "pending"
                if "pending" in statuses
                else "delivered",
            }
        )
    count = conn.execute(
        "SELECT (SELECT count(*) FROM tokenscale.scoped_budget_windows w JOIN tokenscale.scoped_budgets b "
        "ON b.id = w.budget_id WHERE %(t)s::text IS NULL OR b.tenant = %(t)s) "
        "+ (SELECT count(*) FROM tokenscale.budgets WHERE %(t)s::text IS NULL OR tenant = %(t)s)",
        {"t": tenant},
    ).fetchone()
    forecasts: list[dict[str, Any]] = []
    skipped = bool(count and int(count[0]) > MAX_FORECAST_WINDOWS)
    if not skipped:
        now = datetime.now(UTC)
        readings = read_windows(conn, now, tenant=tenant)
        rows = []
        for r in readings:
            f = r.forecast()
            rows.append((f.exhausted_at or datetime.max.replace(tzinfo=UTC), r, f))
        rows.sort(key=lambda row: (row[0], -float(row[1].percent_used)))
        for _, r, f in rows[:FORECASTS]:
            whole = r.unit == "tokens"
            forecasts.append(
                {
                    "tenant": r.tenant,
                    "budgetId": r.budget_id,
                    "scope": r.scope,
                    "scopeValue": r.scope_value,
                    "unit": r.unit,
                    "windowSeconds": r.window_seconds,
                    "limit": int(r.limit) if whole else float(r.limit),
                    "used": int(r.used) if whole else float(r.used),
                    "percentUsed": round(float(r.percent_used), 1),
                    "ratePerHour": round(f.rate_per_hour, 4),
                    "forecastExhaustedAt": None if f.exhausted_at is None else iso(f.exhausted_at),
                }
            )
    return {"available": True, "items": items, "forecasts": forecasts, "forecasts_skipped": skipped}
