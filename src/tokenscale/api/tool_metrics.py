"""aiToolMetrics.push / pushAll: daily metrics of bespoke AI tools, validated whole, stored all-or-nothing."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from tokenscale.api._errors import InvalidRequestError
from tokenscale.api._values import boolean, calendar_date, clean_json, integer, text

__all__ = [
    "COUNT_FIELDS",
    "EMAIL_PATTERN",
    "MAX_RECORDS",
    "ToolMetric",
    "parse_push",
    "parse_push_all",
    "parse_record",
    "store_tool_metrics",
]

#: The optional integer fields, in DX's order.
COUNT_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_read_tokens",
    "spend_cents",
)
#: Records per pushAll request.
MAX_RECORDS: Final = 1000
_MAX_COUNT: Final = 10**15
#: Deliberately loose: one @ with something on each side (leading and trailing blanks are dropped).
#: Blanks are the ASCII ones, spelled out, so that the pattern means the same in Python and in
#: the OpenAPI document's (ECMA) regular expressions.
_BLANKS: Final = " \t\n\r\f\v"
EMAIL_PATTERN: Final = r"^[ \t\n\r\f\v]*[^ \t\n\r\f\v@]+@[^ \t\n\r\f\v@]+[ \t\n\r\f\v]*$"
_EMAIL_RE: Final = re.compile(EMAIL_PATTERN)

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class ToolMetric:
    """One validated record: a user's daily use of one tool."""

    email: str
    date: dt.date
    is_active: bool
    tool: str
    metrics: dict[str, Any] | None
    counts: tuple[int | None, ...]  # COUNT_FIELDS, in order

    @property
    def key(self) -> tuple[str, dt.date, str]:
        """What a push replaces: the (email, date, tool) combination."""
        return (self.email, self.date, self.tool)


def parse_record(obj: object, index: int | None = None) -> ToolMetric:
    """Validate one record; :class:`InvalidRequestError` names the field (and the record's index)."""
    if not isinstance(obj, dict):
        where = "request body" if index is None else f"data[{index}]"
        raise InvalidRequestError(f"{where}: must be a JSON object", index=index)
    for name in ("email", "date", "is_active", "tool"):
        if obj.get(name) is None:
            where = name if index is None else f"data[{index}].{name}"
            raise InvalidRequestError(f"{where}: is required", field=name, index=index)
    email = text(obj["email"], "email", max_len=320, index=index).strip(_BLANKS).lower()
    if not _EMAIL_RE.match(email):
        where = "email" if index is None else f"data[{index}].email"
        raise InvalidRequestError(f"{where}: not an email address", field="email", index=index)
    metrics = obj.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            where = "metrics" if index is None else f"data[{index}].metrics"
            raise InvalidRequestError(f"{where}: must be a JSON object", field="metrics", index=index)
        metrics = clean_json(metrics, "metrics", index=index)
    counts = tuple(
        None
        if obj.get(name) is None
        else integer(obj[name], name, minimum=0, maximum=_MAX_COUNT, index=index)
        for name in COUNT_FIELDS
    )
    for name in COUNT_FIELDS:
        if isinstance(obj.get(name), str):  # JSON integers only: "100" is a client bug, not a count
            where = name if index is None else f"data[{index}].{name}"
            raise InvalidRequestError(f"{where}: must be an integer, not a string", field=name, index=index)
    return ToolMetric(
        email=email,
        date=calendar_date(obj["date"], "date", index=index),
        is_active=boolean(obj["is_active"], "is_active", strict=True, index=index),
        tool=text(obj["tool"], "tool", index=index),
        metrics=metrics,
        counts=counts,
    )


def parse_push(body: object) -> list[ToolMetric]:
    """The single record of an ``aiToolMetrics.push`` body."""
    return [parse_record(body)]


def parse_push_all(body: object) -> list[ToolMetric]:
    """The records of an ``aiToolMetrics.pushAll`` body (``{"data": [...]}``), all valid or an error."""
    if not isinstance(body, dict):
        raise InvalidRequestError("request body: must be a JSON object with a 'data' array")
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidRequestError("data: is required and must be an array", field="data")
    if not data:
        raise InvalidRequestError("data: must hold at least one record", field="data")
    if len(data) > MAX_RECORDS:
        raise InvalidRequestError(f"data: at most {MAX_RECORDS} records per request", field="data")
    return [parse_record(item, index) for index, item in enumerate(data)]


_UPSERT: Final = """
INSERT INTO tokenscale.bespoke_ai_tool_daily_metrics AS m
    (id, tenant, email, date, is_active, tool, metrics,
     input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, spend_cents)
SELECT r.id, %(tenant)s, r.email, r.date, r.is_active, r.tool, r.metrics::jsonb,
       r.input_tokens, r.output_tokens, r.cache_write_tokens, r.cache_read_tokens, r.spend_cents
FROM unnest(%(id)s::uuid[], %(email)s::text[], %(date)s::date[], %(is_active)s::bool[], %(tool)s::text[],
            %(metrics)s::text[], %(input_tokens)s::int8[], %(output_tokens)s::int8[],
            %(cache_write_tokens)s::int8[], %(cache_read_tokens)s::int8[], %(spend_cents)s::int8[])
     AS r(id, email, date, is_active, tool, metrics,
          input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, spend_cents)
ORDER BY r.email, r.date, r.tool
ON CONFLICT (tenant, email, date, tool) DO UPDATE SET
    is_active = excluded.is_active,
    metrics = excluded.metrics,
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    cache_write_tokens = excluded.cache_write_tokens,
    cache_read_tokens = excluded.cache_read_tokens,
    spend_cents = excluded.spend_cents,
    updated_at = now()
RETURNING id, email, date, is_active, tool, metrics,
          input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, spend_cents
"""


def store_tool_metrics(conn: Connection, tenant: str, records: Sequence[ToolMetric]) -> list[dict[str, Any]]:
    """Upsert ``records`` for ``tenant`` in one statement; the stored records, in request order.

    A record whose (email, date, tool) already exists replaces it (every field, keeping its id);
    within one request the last record of a combination wins and every copy answers the stored row.
    """
    latest = {r.key: r for r in records}
    rows = list(latest.values())
    params: dict[str, Any] = {
        "tenant": tenant,
        "id": [uuid.uuid4() for _ in rows],
        "email": [r.email for r in rows],
        "date": [r.date for r in rows],
        "is_active": [r.is_active for r in rows],
        "tool": [r.tool for r in rows],
        "metrics": [None if r.metrics is None else json.dumps(r.metrics) for r in rows],
    }
    for position, name in enumerate(COUNT_FIELDS):
        params[name] = [r.counts[position] for r in rows]
    with conn.transaction():
        stored = {(row[1], row[2], row[4]): _record(row) for row in conn.execute(_UPSERT, params)}
    return [stored[r.key] for r in records]


def _record(row: Sequence[Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": str(row[0]),
        "email": row[1],
        "date": row[2].isoformat(),
        "is_active": row[3],
        "tool": row[4],
        "metrics": row[5],
    }
    for position, name in enumerate(COUNT_FIELDS):
        record[name] = None if row[6 + position] is None else int(row[6 + position])
    return record
