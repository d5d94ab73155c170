"""The ``keys`` and ``budgets`` CLI commands: argparse definitions and the functions they run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from tokenscale.api._errors import ApiError
from tokenscale.api.budgets import Budget, budgets_json, get_budget, list_budgets, set_budget
from tokenscale.api.scoped_budgets import (
    SCOPES as BUDGET_SCOPES,
)
from tokenscale.api.scoped_budgets import (
    ScopedBudget,
    budget_json,
    create_budget,
    delete_budget,
    list_scoped_budgets,
    parse_window_spec,
)
from tokenscale.auth import SCOPES, ApiKey, create_key, list_keys, revoke_key, validate_tenant

__all__ = [
    "add_subcommands",
    "budgets_create",
    "budgets_delete",
    "budgets_list",
    "budgets_set",
    "keys_create",
    "keys_list",
    "keys_revoke",
    "run_command",
]


def keys_create(conninfo: str, tenant: str, scopes: Sequence[str], name: str = "") -> str:
    """Create an API key; returns its secret (shown once)."""
    with psycopg.connect(conninfo) as conn:
        return create_key(conn, tenant, scopes, name)


def keys_list(conninfo: str, tenant: str | None = None, *, include_revoked: bool = True) -> list[ApiKey]:
    """The API keys (of ``tenant``), oldest first."""
    with psycopg.connect(conninfo) as conn:
        return list_keys(conn, tenant, include_revoked=include_revoked)


def keys_revoke(conninfo: str, key: str, tenant: str | None = None) -> bool:
    """Revoke a key by id or display prefix; False when no live key matched."""
    with psycopg.connect(conninfo) as conn:
        return revoke_key(conn, key, tenant)


def budgets_set(conninfo: str, tenant: str, token_limit: int, window_days: int | None = None) -> Budget:
    """Create or replace a tenant's rolling-window token budget; ``window_days`` None keeps the
    budget's window (30 days for a new budget)."""
    validate_tenant(tenant)
    with psycopg.connect(conninfo) as conn:
        if window_days is None:
            current = get_budget(conn, tenant)
            window_days = current.window_days if current is not None else 30
        return set_budget(conn, tenant, token_limit, window_days)


def budgets_delete(conninfo: str, tenant: str) -> bool:
    """Delete a tenant's budget; False when it had none."""
    with psycopg.connect(conninfo) as conn:
        return conn.execute("DELETE FROM tokenscale.budgets WHERE tenant = %s", (tenant,)).rowcount > 0


def budgets_list(conninfo: str, tenant: str | None = None) -> list[Budget]:
    """Every budget (of ``tenant``)."""
    with psycopg.connect(conninfo) as conn:
        return list_budgets(conn, tenant)


def budgets_create(
    conninfo: str, tenant: str, scope: str, value: str | None, windows: Sequence[str], name: str = ""
) -> ScopedBudget:
    """Create a scoped budget of ``tenant`` with windows given as ``24h:tokens:500000``, ``30d:usd:100``."""
    validate_tenant(tenant)
    if not windows:
        raise ValueError("a budget needs at least one --window (e.g. --window 24h:tokens:500000)")
    parsed = [parse_window_spec(spec) for spec in windows]
    with psycopg.connect(conninfo) as conn:
        return create_budget(conn, tenant, scope, value, parsed, name)


def scoped_budgets_list(conninfo: str, tenant: str | None = None) -> list[ScopedBudget]:
    """Every scoped budget (of ``tenant``)."""
    with psycopg.connect(conninfo) as conn:
        return list_scoped_budgets(conn, tenant)


def scoped_budget_delete(conninfo: str, budget_id: str, tenant: str | None = None) -> ScopedBudget:
    """Delete a scoped budget by id (of ``tenant``, when given)."""
    with psycopg.connect(conninfo) as conn:
        return delete_budget(conn, tenant, budget_id)


def _windows_text(budget: ScopedBudget) -> str:
    parts = []
    for w in budget.windows:
        hours = w.window_seconds // 3600
        span = f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"
        parts.append(f"{span}:{w.unit}:{format(w.limit, 'f')}")
    return ",".join(parts)


def add_subcommands(
    sub: Any, add_database_options: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add ``keys create|list|revoke`` and ``budgets set|list`` to ``sub`` (``add_subparsers()``).

    Each leaf parser gets ``api_command`` set; pass the parsed args to :func:`run_command`.
    """
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key and print its secret (shown once)")
    create.add_argument("tenant", help="the tenant (company) the key acts for")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=SCOPES,
        help="a scope (repeatable; default: ingest and read)",
    )
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(api_command="keys create")
    listing = keys.add_parser("list", help="list API keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--live", action="store_true", help="leave revoked keys out")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(api_command="keys list")
    revoke = keys.add_parser("revoke", help="revoke an API key (effective within seconds)")
    revoke.add_argument("key", help="the key's id or display prefix (tsk_...)")
    revoke.add_argument("--tenant", help="only a key of this tenant")
    revoke.set_defaults(api_command="keys revoke")

    budgets = sub.add_parser("budgets", help="manage token budgets").add_subparsers(
        dest="budgets_command", required=True
    )
    setter = budgets.add_parser("set", help="set a tenant's token limit over a rolling window")
    setter.add_argument("tenant", help="the tenant (company)")
    setter.add_argument("--limit", dest="token_limit", type=int, required=True, help="tokens per window")
    setter.add_argument(
        "--window-days",
        type=int,
        help="window length in days (default: the budget's current window; 30 for a new budget)",
    )
    setter.set_defaults(api_command="budgets set")
    creator = budgets.add_parser(
        "create",
        help="create a budget for a tenant, team, user, tool or model, with one or more rolling windows",
    )
    creator.add_argument("tenant", help="the tenant (company) the budget belongs to")
    creator.add_argument("--scope", required=True, choices=BUDGET_SCOPES, help="what the budget applies to")
    creator.add_argument(
        "--value",
        help="the team, user (email, else user id), tool or model it applies to (not for --scope tenant)",
    )
    creator.add_argument(
        "--window",
        dest="windows",
        action="append",
        default=[],
        metavar="SPEC",
        help="a rolling window <N>h|<N>d:tokens|usd:<limit>, e.g. 24h:tokens:500000 or 30d:usd:100 "
        "(repeatable)",
    )
    creator.add_argument("--name", default="", help="a label for the budget")
    creator.set_defaults(api_command="budgets create")
    deleter = budgets.add_parser(
        "delete", help="delete a tenant's company budget (its usage is then unlimited), or a budget by --id"
    )
    deleter.add_argument("tenant", nargs="?", help="the tenant (company) whose company budget to delete")
    deleter.add_argument("--id", dest="budget_id", help="the id of a budget made with 'budgets create'")
    deleter.set_defaults(api_command="budgets delete")
    blist = budgets.add_parser("list", help="list budgets")
    blist.add_argument("--tenant", help="only this tenant's budgets")
    blist.add_argument("--json", action="store_true", help="print JSON")
    blist.add_argument(
        "--scoped",
        action="store_true",
        help="only the budgets made with 'budgets create' (with --json: theirs)",
    )
    blist.set_defaults(api_command="budgets list")
    if add_database_options is not None:
        for parser in (create, listing, revoke, setter, creator, deleter, blist):
            add_database_options(parser)


def run_command(args: argparse.Namespace, conninfo: str, out: TextIO) -> int:
    """Run the command :func:`add_subcommands` parsed into ``args``; the exit status."""
    command = getattr(args, "api_command", None)
    try:
        if command == "keys create":
            secret = keys_create(conninfo, args.tenant, args.scopes or ["ingest", "read"], args.name)
            out.write(secret + "\n")
        elif command == "keys list":
            _print_keys(keys_list(conninfo, args.tenant, include_revoked=not args.live), args.json, out)
        elif command == "keys revoke":
            if not keys_revoke(conninfo, args.key, args.tenant):
                out.write(f"no live key matches {args.key!r}\n")
                return 1
            out.write("revoked\n")
        elif command == "budgets set":
            budget = budgets_set(conninfo, args.tenant, args.token_limit, args.window_days)
            out.write(
                f"{budget.tenant}: {budget.token_limit} tokens per {budget.window_days} days "
                f"(company id {budget.company_id})\n"
            )
        elif command == "budgets create":
            scoped = budgets_create(conninfo, args.tenant, args.scope, args.value, args.windows, args.name)
            out.write(f"{scoped.id}\n")
        elif command == "budgets delete":
            if (args.tenant is None) == (args.budget_id is None):
                raise ValueError(
                    "give a tenant (its company budget) or --id (a budget made with 'budgets create')"
                )
            if args.budget_id is not None:
                scoped_budget_delete(conninfo, args.budget_id)
            elif not budgets_delete(conninfo, args.tenant):
                out.write(f"tenant {args.tenant!r} has no budget\n")
                return 1
            out.write("deleted\n")
        elif command == "budgets list":
            _print_budgets(conninfo, args, out)
        else:
            raise ValueError(f"unknown command {command!r}")
    except ApiError as exc:
        out.write(f"error: {exc.message}\n")
        return 1 if exc.status == 404 else 2
    except ValueError as exc:
        out.write(f"error: {exc}\n")
        return 2
    return 0


def _print_budgets(conninfo: str, args: argparse.Namespace, out: TextIO) -> None:
    scoped = scoped_budgets_list(conninfo, args.tenant)
    if args.json:
        if args.scoped:
            out.write(json.dumps([{"tenant": b.tenant, **budget_json(b)} for b in scoped]) + "\n")
        else:
            out.write(json.dumps(budgets_json(budgets_list(conninfo, args.tenant))) + "\n")
        return
    if not args.scoped:
        out.write("tenant\ttoken_limit\twindow_days\tcompany_id\n")
        for b in budgets_list(conninfo, args.tenant):
            out.write(f"{b.tenant}\t{b.token_limit}\t{b.window_days}\t{b.company_id}\n")
        if not scoped:
            return
        out.write("\n")
    out.write("id\ttenant\tscope\tvalue\twindows\tname\n")
    for s in scoped:
        out.write(f"{s.id}\t{s.tenant}\t{s.scope}\t{s.scope_value or ''}\t{_windows_text(s)}\t{s.name}\n")


def _print_keys(keys: Sequence[ApiKey], as_json: bool, out: TextIO) -> None:
    if as_json:
        rows = [
            {
                "id": k.id,
                "tenant": k.tenant,
                "name": k.name,
                "scopes": list(k.scopes),
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked_at": None if k.revoked_at is None else k.revoked_at.isoformat(),
            }
            for k in keys
        ]
        out.write(json.dumps(rows) + "\n")
        return
    out.write("id\tprefix\ttenant\tscopes\tstate\tname\n")
    for k in keys:
        state = "revoked" if k.revoked_at else "live"
        out.write(f"{k.id}\t{k.prefix}...\t{k.tenant}\t{','.join(k.scopes)}\t{state}\t{k.name}\n")
