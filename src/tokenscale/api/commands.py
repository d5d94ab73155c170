"""The ``keys`` and ``budgets`` CLI commands: argparse definitions and the functions they run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from tokenscale.api.budgets import Budget, budgets_json, get_budget, list_budgets, set_budget
from tokenscale.auth import SCOPES, ApiKey, create_key, list_keys, revoke_key, validate_tenant

__all__ = [
    "add_subcommands",
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
    deleter = budgets.add_parser("delete", help="delete a tenant's budget (its usage is then unlimited)")
    deleter.add_argument("tenant", help="the tenant (company)")
    deleter.set_defaults(api_command="budgets delete")
    blist = budgets.add_parser("list", help="list budgets")
    blist.add_argument("--tenant", help="only this tenant's budget")
    blist.add_argument("--json", action="store_true", help="print JSON")
    blist.set_defaults(api_command="budgets list")
    if add_database_options is not None:
        for parser in (create, listing, revoke, setter, deleter, blist):
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
            out.write(f"{budget.tenant}: {budget.token_limit} tokens per {budget.window_days} days\n")
        elif command == "budgets delete":
            if not budgets_delete(conninfo, args.tenant):
                out.write(f"tenant {args.tenant!r} has no budget\n")
                return 1
            out.write("deleted\n")
        elif command == "budgets list":
            budgets = budgets_list(conninfo, args.tenant)
            if args.json:
                out.write(json.dumps(budgets_json(budgets)) + "\n")
            else:
                out.write("tenant\ttoken_limit\twindow_days\n")
            for b in [] if args.json else budgets:
                out.write(f"{b.tenant}\t{b.token_limit}\t{b.window_days}\n")
        else:
            raise ValueError(f"unknown command {command!r}")
    except ValueError as exc:
        out.write(f"error: {exc}\n")
        return 2
    return 0


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
