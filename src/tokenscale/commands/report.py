"""``tokenscale report``: usage of the last N days from usage_daily, grouped, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

import psycopg
from psycopg import sql

__all__ = [
    "DIMENSIONS",
    "FORMATS",
    "VALUE_COLUMNS",
    "ReportRow",
    "parse_dimensions",
    "query",
    "render",
    "report",
]

#: ``by`` names -> usage_daily columns.
DIMENSIONS: Final = {
    "day": "day",
    "tenant": "tenant",
    "tool": "tool",
    "user": "user_email",
    "provider": "provider",
    "model": "model",
}
FORMATS: Final = ("table", "csv", "json")
#: The numeric columns of every row, in output order (``total_tokens``: input + cache + output).
VALUE_COLUMNS: Final = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_events",
)
_SUMMED: Final = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "unpriced_events",
)
_TABLE_TITLES: Final = {
    "day": "DAY",
    "tenant": "TENANT",
    "tool": "TOOL",
    "user": "USER",
    "provider": "PROVIDER",
    "model": "MODEL",
    "requests": "REQUESTS",
    "input_tokens": "INPUT",
    "cache_read_tokens": "CACHE READ",
    "cache_write_tokens": "CACHE WRITE",
    "output_tokens": "OUTPUT",
    "reasoning_tokens": "REASONING",
    "total_tokens": "TOTAL TOKENS",
    "cost_usd": "COST USD",
    "unpriced_events": "UNPRICED",
}
_MAX_DAYS: Final = 3660
_COST_PLACES: Final = Decimal("0.0000000001")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group: its dimension values (``None`` where usage_daily has NULL) and its sums."""

    keys: tuple[str | None, ...]
    requests: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal | None
    unpriced_events: int

    @property
    def total_tokens(self) -> int:
        """Input + cache reads + cache writes + output (reasoning is part of output)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens + self.output_tokens

    def value(self, column: str) -> Any:
        """The value of one of :data:`VALUE_COLUMNS`."""
        return getattr(self, column)


def parse_dimensions(by: str | Iterable[str]) -> tuple[str, ...]:
    """``"tool,user"`` or ``("tool", "user")`` -> validated dimension names (duplicates dropped)."""
    names = [p.strip() for p in by.split(",")] if isinstance(by, str) else [str(p).strip() for p in by]
    out: list[str] = []
    for name in names:
        if not name:
            continue
        if name not in DIMENSIONS:
            raise ValueError(f"unknown dimension {name!r}; choose from {', '.join(DIMENSIONS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _statement(dims: Sequence[str]) -> sql.Composed:
    def key(name: str) -> sql.Composable:
        if name == "day":  # the UTC date, whatever the session's time zone
            return sql.SQL("to_char(day AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
        return sql.Identifier(DIMENSIONS[name])

    keys = [key(d) for d in dims]
    group = sql.SQL(" GROUP BY {}").format(sql.SQL(", ").join(keys)) if keys else sql.SQL("")
    select_keys = sql.SQL("").join(sql.SQL("{}, ").format(k) for k in keys)
    return sql.SQL(
        "SELECT {keys}{sums}, sum(cost_usd) FROM tokenscale.usage_daily "
        "WHERE day >= %(since)s AND day < %(until)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
        "{group}"
    ).format(
        keys=select_keys,
        sums=sql.SQL(", ").join(
            sql.SQL("coalesce(sum({}), 0)::bigint").format(sql.Identifier(c)) for c in _SUMMED
        ),
        group=group,
    )


def _window(days: int, today: date | None) -> tuple[datetime, datetime]:
    last = today or datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    return datetime.combine(first, time(0), tzinfo=UTC), datetime.combine(
        last + timedelta(days=1), time(0), tzinfo=UTC
    )


def query(
    conninfo: str,
    days: int = 7,
    by: str | Iterable[str] = ("tool", "user", "model"),
    tenant: str | None = None,
    *,
    today: date | None = None,
) -> list[ReportRow]:
    """The groups of the last ``days`` UTC days (today included), by total tokens, largest first
    (grouped by ``day``: by day, oldest first, then by total tokens)."""
    if not 1 <= days <= _MAX_DAYS:
        raise ValueError(f"days must be between 1 and {_MAX_DAYS}")
    dims = parse_dimensions(by)
    since, until = _window(days, today)
    params = {"since": since, "until": until, "tenant": tenant}
    with psycopg.connect(conninfo) as conn:
        fetched = conn.execute(_statement(dims), params).fetchall()
    rows = []
    for record in fetched:
        keys = tuple(None if v is None else str(v) for v in record[: len(dims)])
        sums = [int(v) for v in record[len(dims) : len(dims) + len(_SUMMED)]]
        cost = record[-1]
        if not dims and not any(sums) and cost is None:
            continue  # no usage at all: no total row
        rows.append(_row(keys, sums, cost))
    rows.sort(key=lambda r: (-r.total_tokens, -(r.cost_usd or 0), tuple(k or "" for k in r.keys)))
    if "day" in dims:  # by day: in calendar order (within a day, largest first)
        at = dims.index("day")
        rows.sort(key=lambda r: r.keys[at] or "")
    return rows


def _row(keys: tuple[str | None, ...], sums: Sequence[int], cost: Decimal | None) -> ReportRow:
    """A row from ``_SUMMED`` values (in that order) and a cost."""
    values = dict(zip(_SUMMED, sums, strict=True))
    return ReportRow(
        keys,
        requests=values["requests"],
        input_tokens=values["input_tokens"],
        cache_read_tokens=values["cache_read_tokens"],
        cache_write_tokens=values["cache_write_tokens"],
        output_tokens=values["output_tokens"],
        reasoning_tokens=values["reasoning_tokens"],
        cost_usd=cost,
        unpriced_events=values["unpriced_events"],
    )


def _cost_text(cost: Decimal | None) -> str:
    return "" if cost is None else str(cost.quantize(_COST_PLACES))


def _total(rows: Sequence[ReportRow], width: int) -> ReportRow:
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    keys: tuple[str | None, ...] = ("TOTAL", *([""] * (width - 1))) if width else ()
    sums = [sum(int(r.value(c)) for r in rows) for c in _SUMMED]
    return _row(keys, sums, sum(costs, Decimal(0)) if costs else None)


def _table(dims: Sequence[str], rows: Sequence[ReportRow], days: int, tenant: str | None) -> str:
    if not rows:
        scope = f" for tenant {tenant}" if tenant else ""
        return f"No usage in the last {days} days{scope}.\n"
    values = [c for c in VALUE_COLUMNS if c != "unpriced_events" or any(r.unpriced_events for r in rows)]
    headers = [_TABLE_TITLES[d] for d in dims] + [_TABLE_TITLES[c] for c in values]

    def cells(row: ReportRow) -> list[str]:
        keys = ["-" if k is None else k for k in row.keys]
        out: list[str] = []
        for column in values:
            value = row.value(column)
            if column == "cost_usd":
                out.append("n/a" if value is None else f"{value:,.4f}")
            else:
                out.append(f"{value:,}")
        return keys + out

    body = [cells(r) for r in rows]
    footer = cells(_total(rows, len(dims))) if len(rows) > 1 or not dims else None
    widths = [len(h) for h in headers]
    for line in [*body, *([footer] if footer else [])]:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
    numeric = [False] * len(dims) + [True] * len(values)

    def fmt(line: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if right else c.ljust(w) for c, w, right in zip(line, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [fmt(headers), rule, *(fmt(b) for b in body)]
    if footer and dims:
        lines += [rule, fmt(footer)]
    elif footer:
        lines = [fmt(headers), rule, fmt(footer)]
    return "\n".join(lines) + "\n"


def _csv(dims: Sequence[str], rows: Sequence[ReportRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*dims, *VALUE_COLUMNS])
    for row in rows:
        numbers = [_cost_text(row.cost_usd) if c == "cost_usd" else row.value(c) for c in VALUE_COLUMNS]
        writer.writerow([*("" if k is None else k for k in row.keys), *numbers])
    return buffer.getvalue()


def _json(dims: Sequence[str], rows: Sequence[ReportRow], days: int, tenant: str | None) -> str:
    def values(row: ReportRow) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column in VALUE_COLUMNS:
            value = row.value(column)
            out[column] = (None if value is None else float(value)) if column == "cost_usd" else value
        return out

    document = {
        "days": days,
        "tenant": tenant,
        "by": list(dims),
        "rows": [{**dict(zip(dims, r.keys, strict=True)), **values(r)} for r in rows],
        "total": values(_total(rows, 0)),
    }
    return json.dumps(document, indent=2) + "\n"


def render(
    rows: Sequence[ReportRow],
    by: str | Iterable[str],
    fmt: Literal["table", "csv", "json"] | str = "table",
    *,
    days: int = 7,
    tenant: str | None = None,
) -> str:
    """``rows`` (from :func:`query` with the same ``by``) as an aligned table, CSV or JSON."""
    dims = parse_dimensions(by)
    if fmt == "table":
        return _table(dims, rows, days, tenant)
    if fmt == "csv":
        return _csv(dims, rows)
    if fmt == "json":
        return _json(dims, rows, days, tenant)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def report(
    conninfo: str,
    days: int = 7,
    by: str | Iterable[str] = ("tool", "user", "model"),
    tenant: str | None = None,
    fmt: Literal["table", "csv", "json"] | str = "table",
    *,
    today: date | None = None,
) -> str:
    """Usage of the last ``days`` UTC days (today included) from ``tokenscale.usage_daily``, grouped
    by ``by`` (day, tenant, tool, user, provider, model), with requests, each token kind and cost,
    sorted by total tokens, as ``fmt``: an aligned ``table`` with a total line, ``csv`` or ``json``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = query(conninfo, days, by, tenant, today=today)
    return render(rows, by, fmt, days=days, tenant=tenant)
