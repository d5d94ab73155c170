"""The ``report`` and ``demo`` commands: their functions, argparse definitions and runners."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

# The functions live in their modules (tokenscale.commands.report.report,
# tokenscale.commands.demo.demo); they are not re-exported here, so that the module names stay
# modules. They are imported when used: `tokenscale hook` (tokenscale.commands.hook), run before
# every prompt and tool call of a coding assistant, must not pay for psycopg and asyncio.
__all__ = ["add_subcommands", "dashboard_hint", "run_demo", "run_report"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_subcommands(
    sub: Any, add_database_options: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add ``report`` and ``demo`` to ``sub`` (an ``add_subparsers()`` result).

    ``report`` gets the database options (``add_database_options``, e.g. ``--database-url``,
    ``--data-dir``, ``--config``); run it with :func:`run_report`. ``demo`` only needs the OTLP/gRPC
    endpoint; run it with :func:`run_demo`.
    """
    from tokenscale.commands import report as _report  # noqa: PLC0415

    rep = sub.add_parser(
        "report",
        help="usage of the last N days: requests, tokens and cost, grouped",
        description="Usage of the last N UTC days (today included) from tokenscale.usage_daily, "
        "grouped by the chosen dimensions and sorted by total tokens.",
    )
    rep.add_argument("--days", type=_positive, default=7, help="how many days, today included (default 7)")
    rep.add_argument(
        "--by",
        default="tool,user,model",
        help=f"comma-separated dimensions among {', '.join(_report.DIMENSIONS)} (default tool,user,model; "
        "empty: one total line)",
    )
    rep.add_argument("--tenant", help="only this tenant (default: every tenant)")
    rep.add_argument(
        "--format", dest="fmt", choices=_report.FORMATS, default="table", help="output format (default table)"
    )
    if add_database_options is not None:
        add_database_options(rep)

    dem = sub.add_parser(
        "demo",
        help="send realistic AI telemetry to a running tokenscale, to see data at once",
        description="Send a burst of AI usage telemetry (GenAI spans from three apps, Claude Code "
        "events and metrics, several users and models over the last days) through the OpenTelemetry "
        "SDK to an OTLP/gRPC receiver, such as a running `tokenscale serve`.",
    )
    dem.add_argument(
        "--endpoint",
        default="127.0.0.1:4317",
        help="OTLP/gRPC endpoint, host:port or http(s)://host:port (default 127.0.0.1:4317)",
    )
    dem.add_argument("--users", type=_positive, default=5, help="how many users (default 5)")
    dem.add_argument("--requests", type=_positive, default=200, help="how many AI requests (default 200)")
    dem.add_argument("--days", type=_positive, default=7, help="spread over this many days (default 7)")
    dem.add_argument("--seed", type=int, help="random seed, for a repeatable burst")
    dem.add_argument("--api-key", help="API key sent as 'Authorization: Bearer KEY'")
    dem.add_argument("--json", action="store_true", help="print what was sent as JSON")
    dem.add_argument("--quiet", action="store_true", help="no progress bar")


def run_report(args: argparse.Namespace, conninfo: str, out: TextIO | None = None) -> int:
    """Run a parsed ``report`` command against ``conninfo``; the exit status."""
    from tokenscale.commands import report as _report  # noqa: PLC0415

    stream = sys.stdout if out is None else out
    try:
        text = _report.report(conninfo, days=args.days, by=args.by, tenant=args.tenant, fmt=args.fmt)
    except ValueError as exc:
        print(f"tokenscale report: {exc}", file=sys.stderr)
        return 2
    stream.write(text)
    return 0


def dashboard_hint(endpoint: str) -> str:
    """Where the dashboard of the receiver at OTLP/gRPC ``endpoint`` is: the same host, and port 4318
    next to the default gRPC port 4317 (another gRPC port says nothing about the HTTP port)."""
    target = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        host, port = target, "4317"
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    if port == "4317":
        return f"the dashboard at http://{host}:4318/"
    return f"the dashboard at http://{host}:<its HTTP port>/ (the port `serve --http-port` was given)"


def run_demo(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``demo`` command; the exit status (1 when the receiver cannot be reached)."""
    from tokenscale.commands import demo as _demo  # noqa: PLC0415

    stream = sys.stdout if out is None else out
    errors = sys.stderr if err is None else err
    try:
        result = _demo.demo(
            args.endpoint,
            users=args.users,
            requests=args.requests,
            days=args.days,
            seed=args.seed,
            api_key=args.api_key,
            progress=not args.quiet,
            stream=errors,
        )
    except _demo.DemoError as exc:
        print(f"tokenscale demo: {exc}", file=errors)
        return 1
    except ValueError as exc:
        print(f"tokenscale demo: {exc}", file=errors)
        return 2
    if args.json:
        rows = [
            {"tool": tool, "user": user, "model": model, **totals.as_dict()}
            for (tool, user, model), totals in sorted(result.by_key.items())
        ]
        stream.write(json.dumps({"totals": result.totals.as_dict(), "rows": rows}, indent=2) + "\n")
    else:
        stream.write(result.summary())
        stream.write(f"see it: tokenscale report, or {dashboard_hint(args.endpoint)}\n")
    return 0
