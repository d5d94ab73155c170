"""The ``prices`` and ``reprice`` commands: the operator's price book and re-pricing stored usage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import psycopg

from tokenscale.mapping.pricebook import ALWAYS, CustomPrice, parse_unit_key
from tokenscale.store.prices import (
    delete_price,
    import_prices,
    list_prices,
    parse_prices,
    price_from_mapping,
    reprice,
    set_price,
    unpriced_usage,
)

__all__ = ["add_subcommands", "run_prices", "run_reprice"]

_PARTS = ("input", "cache_read", "cache_write", "output", "reasoning")


def _moment(text: str) -> datetime:
    """An ISO date (midnight UTC) or time (UTC when no offset is given)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time (e.g. 2026-01-31)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _unit(text: str) -> tuple[str, str]:
    # NAME[param=value,...]=USD: the price is after the last "=" outside the brackets.
    cut = text.rfind("=")
    name, price = (text[:cut], text[cut + 1 :]) if cut > text.rfind("]") else ("", "")
    if not name.strip() or not price.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAME=USD_PER_UNIT, e.g. gen_ai.usage.image.count=0.04 or "
            "gen_ai.usage.image.count[size=1024x1792,quality=hd]=0.12"
        )
    try:
        parse_unit_key(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name.strip(), price.strip()


def add_subcommands(
    sub: Any, add_database_options: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add ``prices set|list|import|delete|unpriced`` and ``reprice`` to ``sub``."""
    prices = sub.add_parser(
        "prices",
        help="your own prices per model (and tenant), on top of the built-in list prices",
        description="The price book: prices per model for private or fine-tuned models, negotiated "
        "discounts or models the built-in list prices lack, in USD per million tokens per token part.",
    ).add_subparsers(dest="prices_command", metavar="ACTION", required=True)
    setter = prices.add_parser("set", help="set a model's price (from --effective-from on)")
    setter.add_argument("model", help="the model name as usage reports it (gen_ai.request/response.model)")
    for part in _PARTS:
        setter.add_argument(
            f"--{part.replace('_', '-')}",
            metavar="USD",
            help=f"USD per million {part.replace('_', ' ')} tokens"
            + {
                "input": " (required unless --unit is given; then default 0)",
                "output": " (required unless --unit is given; then default 0)",
                "cache_read": " (default: the input price)",
                "cache_write": " (default: the input price)",
                "reasoning": " (default: the output price)",
            }.get(part, ""),
        )
    setter.add_argument(
        "--unit",
        type=_unit,
        action="append",
        default=[],
        metavar="NAME=USD",
        help="USD per unit counted by the usage attribute NAME (repeatable), e.g. "
        "gen_ai.usage.image.count=0.04; NAME[param=value,...] for a price of some request parameters, e.g. "
        "gen_ai.usage.image.count[size=1024x1792,quality=hd]=0.12",
    )
    setter.add_argument("--tenant", help="only this tenant's usage (default: every tenant)")
    setter.add_argument("--provider", help="only usage through this provider (default: any)")
    setter.add_argument(
        "--effective-from",
        type=_moment,
        metavar="WHEN",
        help="ISO date or time it applies from (default: always)",
    )
    setter.add_argument(
        "--override-reported",
        action="store_true",
        help="also replace costs the client reported (e.g. list prices, for a negotiated discount)",
    )
    listing = prices.add_parser("list", help="list the price book")
    listing.add_argument("--tenant", help="only prices applying to this tenant")
    listing.add_argument("--json", action="store_true", help="print JSON")
    importer = prices.add_parser("import", help="set many prices from a JSON or CSV file")
    importer.add_argument(
        "file", type=Path, help="JSON array of price objects, or CSV with a header ('-': stdin)"
    )
    deleter = prices.add_parser("delete", help="delete a model's prices (of one tenant/provider scope)")
    deleter.add_argument("model")
    deleter.add_argument("--tenant", help="the tenant scope (default: the prices for every tenant)")
    deleter.add_argument("--provider", help="the provider scope (default: the prices for any provider)")
    unpriced = prices.add_parser("unpriced", help="models with usage that has no cost, to give them a price")
    unpriced.add_argument("--days", type=int, default=90, help="look back this many days (default 90)")
    unpriced.add_argument("--tenant", help="only this tenant")
    unpriced.add_argument("--json", action="store_true", help="print JSON")

    rep = sub.add_parser(
        "reprice",
        help="recompute the cost of stored usage with today's prices",
        description="Recompute the cost of the usage events in [--from, --to) with today's price book "
        "and list prices. Each changed event keeps its cost as first recorded (recorded_cost_usd); "
        "usage_daily and usage_hourly stay exact.",
    )
    rep.add_argument(
        "--from", dest="since", type=_moment, required=True, metavar="WHEN", help="ISO date or time"
    )
    rep.add_argument(
        "--to", dest="until", type=_moment, metavar="WHEN", help="ISO date or time, exclusive (default: now)"
    )
    rep.add_argument("--tenant", help="only this tenant's usage")
    rep.add_argument("--model", help="only this model's usage")
    rep.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    if add_database_options is not None:
        for parser in (setter, listing, importer, deleter, unpriced, rep):
            add_database_options(parser)


def _price_from_args(args: argparse.Namespace) -> CustomPrice:
    entry: dict[str, Any] = {part: getattr(args, part) for part in _PARTS}
    entry.update(
        model=args.model,
        tenant=args.tenant,
        provider=args.provider,
        units=dict(args.unit),
        override_reported=args.override_reported,
        effective_from=args.effective_from.isoformat() if args.effective_from else None,
    )
    return price_from_mapping(entry)


def _describe(price: CustomPrice) -> str:
    start = (
        "always"
        if price.effective_from_ns == ALWAYS
        else datetime.fromtimestamp(price.effective_from_ns / 1e9, UTC).isoformat()
    )
    parts = [f"input {price.input}", f"output {price.output}"]
    for name in ("cache_read", "cache_write", "reasoning"):
        value = getattr(price, name)
        if value is not None:
            parts.append(f"{name.replace('_', ' ')} {value}")
    units = ", ".join(f"{k} {v}/unit" for k, v in sorted(price.units.items()))
    return "\t".join(
        [
            price.model,
            price.tenant or "*",
            price.provider or "*",
            start,
            ", ".join(parts) + (f"; {units}" if units else ""),
            "yes" if price.override_reported else "no",
        ]
    )


def run_prices(args: argparse.Namespace, conninfo: str, out: TextIO | None = None) -> int:
    """Run a parsed ``prices`` command; the exit status."""
    stream = sys.stdout if out is None else out
    action = args.prices_command
    try:
        with psycopg.connect(conninfo) as conn:
            if action == "set":
                price = _price_from_args(args)
                set_price(conn, price)
                stream.write(f"set: {_describe(price)}\n")
            elif action == "import":
                text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
                count = import_prices(conn, parse_prices(text))
                stream.write(f"imported {count} prices\n")
            elif action == "delete":
                count = delete_price(conn, args.model, args.tenant, args.provider)
                stream.write(f"deleted {count} prices\n")
                return 0 if count else 1
            elif action == "list":
                prices = list_prices(conn, args.tenant)
                if args.json:
                    stream.write(json.dumps([p.as_json() for p in prices]) + "\n")
                else:
                    stream.write(
                        "model\ttenant\tprovider\teffective_from\tUSD per million tokens\toverride_reported\n"
                    )
                    for price in prices:
                        stream.write(_describe(price) + "\n")
            elif action == "unpriced":
                since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
                    days=args.days - 1
                )
                found = unpriced_usage(conn, since, args.tenant)
                if args.json:
                    stream.write(json.dumps([_json(u) for u in found]) + "\n")
                else:
                    stream.write("tenant\tprovider\tmodel\tunpriced_events\tfirst_day\tlast_day\n")
                    for u in found:
                        stream.write(
                            f"{u.tenant}\t{u.provider or ''}\t{u.model or '(no model)'}\t{u.events}\t"
                            f"{u.first_day}\t{u.last_day}\n"
                        )
    except (ValueError, OSError) as exc:
        print(f"tokenscale prices: {exc}", file=sys.stderr)
        return 2
    return 0


def _json(found: Any) -> dict[str, Any]:
    return {name: getattr(found, name) for name in found.__slots__}


def run_reprice(args: argparse.Namespace, conninfo: str, out: TextIO | None = None) -> int:
    """Run a parsed ``reprice`` command; the exit status."""
    stream = sys.stdout if out is None else out
    until = args.until or datetime.now(UTC)
    try:
        report = reprice(
            conninfo, args.since, until, tenant=args.tenant, model=args.model, dry_run=args.dry_run
        )
    except ValueError as exc:
        print(f"tokenscale reprice: {exc}", file=sys.stderr)
        return 2
    verb = "would change" if args.dry_run else "changed"
    stream.write(
        f"{report.rows} usage events from {args.since.isoformat()} to {until.isoformat()}: {verb} "
        f"{report.changed} (cost {report.cost_before} -> {report.cost_after} USD); "
        f"{report.unpriced} still unpriced\n"
    )
    return 0
