"""The ``alerts`` command: webhooks and thresholds of the budget alerts, the alerts fired, a round by hand."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

import psycopg

from tokenscale.alerts import (
    DEFAULT_PERCENTS,
    FORMATS,
    AlertService,
    DeliveryPolicy,
    add_webhook,
    get_thresholds,
    list_alerts,
    list_webhooks,
    remove_webhook,
    set_thresholds,
)
from tokenscale.api.scoped_budgets import DEFAULT_TEAM_ATTRIBUTE, iso
from tokenscale.errors import TokenscaleError

__all__ = ["add_subcommands", "run_alerts"]


def add_subcommands(
    sub: Any, add_database_options: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add ``alerts webhooks add|list|remove``, ``alerts thresholds set|list``, ``alerts list`` and
    ``alerts run`` to ``sub``."""
    alerts = sub.add_parser(
        "alerts",
        help="budget alerts: webhooks, thresholds, the alerts fired",
        description="Budget alerts fire when a budget window crosses a threshold (50, 80 and 100%% of "
        "its limit unless set) and go to the tenant's webhooks; `serve` evaluates them every "
        "alert_interval_seconds.",
    ).add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    options = add_database_options or (lambda parser: None)

    webhooks = alerts.add_parser("webhooks", help="where a tenant's alerts are sent").add_subparsers(
        dest="webhooks_command", metavar="ACTION", required=True
    )
    add = webhooks.add_parser("add", help="send a tenant's alerts to a URL")
    add.add_argument("tenant")
    add.add_argument("url", help="http(s) URL the alerts are POSTed to")
    add.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help='json: the alert as a JSON object (default); slack: Slack\'s {"text": ...}',
    )
    options(add)
    wlist = webhooks.add_parser("list", help="list webhooks (URLs shortened unless --show-urls)")
    wlist.add_argument("--tenant")
    wlist.add_argument("--show-urls", action="store_true", help="print whole URLs (they may hold secrets)")
    wlist.add_argument("--json", action="store_true")
    options(wlist)
    remove = webhooks.add_parser("remove", help="remove a webhook (its pending deliveries too)")
    remove.add_argument("id")
    remove.add_argument("--tenant", help="only if it is this tenant's")
    options(remove)

    thresholds = alerts.add_parser("thresholds", help="a budget's thresholds").add_subparsers(
        dest="thresholds_command", metavar="ACTION", required=True
    )
    tset = thresholds.add_parser("set", help="set a budget's thresholds in percent of its limit")
    tset.add_argument("tenant")
    tset.add_argument("budget_id", help="the budget's id (or 'company' for the tenant's company budget)")
    tset.add_argument("percents", nargs="+", metavar="PERCENT", help="e.g. 50 80 100 (above 0, at most 1000)")
    options(tset)
    tlist = thresholds.add_parser("list", help="thresholds set (other budgets have 50 80 100)")
    tlist.add_argument("--tenant")
    options(tlist)

    alist = alerts.add_parser("list", help="the most recent alerts, with their deliveries")
    alist.add_argument("--tenant")
    alist.add_argument("--limit", type=int, default=20)
    alist.add_argument("--json", action="store_true")
    options(alist)

    run = alerts.add_parser("run", help="evaluate every budget window and deliver what is due, once")
    options(run)


def run_alerts(args: argparse.Namespace, conninfo: str, out: TextIO, settings: Any = None) -> int:
    """Run one ``alerts`` action; the exit status."""
    action = args.alerts_command
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if action == "webhooks":
            return _webhooks(args, conn, out)
        if action == "thresholds":
            if args.thresholds_command == "set":
                try:
                    percents = set_thresholds(conn, args.tenant, args.budget_id, args.percents)
                except (LookupError, ValueError) as exc:
                    raise TokenscaleError(str(exc.args[0])) from None
                print(f"{args.tenant} {args.budget_id}: " + " ".join(f"{p}%" for p in percents), file=out)
                return 0
            for (tenant, budget_id), percents in sorted(get_thresholds(conn, args.tenant).items()):
                print(f"{tenant}\t{budget_id}\t" + " ".join(f"{p}%" for p in percents), file=out)
            print("(budgets not listed: " + " ".join(f"{p}%" for p in DEFAULT_PERCENTS) + ")", file=out)
            return 0
        if action == "list":
            alerts = list_alerts(conn, args.tenant, limit=args.limit)
            if args.json:
                json.dump([{**a.as_json(), "deliveries": list(a.deliveries)} for a in alerts], out, indent=2)
                out.write("\n")
                return 0
            for a in alerts:
                print(f"{iso(a.fired_at)}  {a.tenant}  {a.message}", file=out)
                for hook in a.deliveries:
                    failed = hook["lastError"] and hook["status"] != "delivered"
                    extra = f" ({hook['lastError']})" if failed else ""
                    print(
                        f"    -> {hook['url']} [{hook['format']}] {hook['status']} "
                        f"after {hook['attempts']} attempt(s){extra}",
                        file=out,
                    )
            if not alerts:
                print("no alerts", file=out)
            return 0
    # run: one round, as serve runs it
    from tokenscale.store.writer import open_pool  # noqa: PLC0415

    policy = DeliveryPolicy()
    if settings is not None:
        policy = DeliveryPolicy(
            retry_seconds=settings.alert_retry_seconds, max_attempts=settings.alert_max_attempts
        )
    pool = open_pool(conninfo, max_size=2)
    try:
        team = settings.budget_team_attribute if settings is not None else DEFAULT_TEAM_ATTRIBUTE
        report = AlertService(pool, policy=policy, team_attribute=team).run_once()
    finally:
        pool.close()
    if not report.evaluated:
        print("another process is evaluating the alerts now; nothing done", file=out)
    else:
        print(f"evaluated {report.windows} budget window(s): {len(report.fired)} alert(s) fired", file=out)
        for alert in report.fired:
            print(f"  {alert.tenant}  {alert.message}", file=out)
    sent = report.deliveries
    print(f"deliveries: {sent.delivered} delivered, {sent.retried} to retry, {sent.failed} failed", file=out)
    return 0


def _webhooks(args: argparse.Namespace, conn: psycopg.Connection[Any], out: TextIO) -> int:
    action = args.webhooks_command
    if action == "add":
        try:
            hook = add_webhook(conn, args.tenant, args.url, args.format)
        except ValueError as exc:
            raise TokenscaleError(str(exc)) from None
        print(f"{hook.id}  {hook.tenant}  {hook.format}  {hook.url}", file=out)
        return 0
    if action == "remove":
        if not remove_webhook(conn, args.id, args.tenant):
            raise TokenscaleError(
                f"no webhook {args.id!r}" + (f" of tenant {args.tenant!r}" if args.tenant else "")
            )
        print(f"removed webhook {args.id}", file=out)
        return 0
    hooks = list_webhooks(conn, args.tenant)
    if args.json:
        json.dump([h.as_json(reveal=args.show_urls) for h in hooks], out, indent=2)
        out.write("\n")
        return 0
    for h in hooks:
        print(f"{h.id}  {h.tenant}  {h.format}  {h.as_json(reveal=args.show_urls)['url']}", file=out)
    if not hooks:
        print("no webhooks", file=out)
    return 0
