"""Usage records (one per counted usage event, cursor-paginated) and the 90-day daily usage series.

Mapping onto usage_events: ``type`` is the GenAI operation (``usage`` when unknown), ``count`` the
tokens (input + cache reads + cache writes + output), ``conversationId`` the conversation id,
``messageId`` the request id, ``contactId`` the user id, the other relation ids the attributes
``tokenscale.meta.<name>_id``, and ``meta`` every ``tokenscale.meta.*`` attribute, prefix removed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tokenscale.api._errors import InvalidRequestError
from tokenscale.api._values import Params, integer, text
from tokenscale.api.ai_metrics import REQUEST_ID_EQUALS

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_TAKE",
    "MAX_TAKE",
    "PROMPT_ID_KEYS",
    "RELATION_FILTERS",
    "SERIES_DAYS",
    "list_usage_records",
    "meta_filters",
    "usage_series",
]

DEFAULT_TAKE: Final = 25
MAX_TAKE: Final = 500
SERIES_DAYS: Final = 90
_META: Final = "tokenscale.meta."
#: The longest meta key filtered on (any text: every key an app can store).
_MAX_META_KEY_CHARS: Final = 1000
_META_PARAM_RE: Final = re.compile(r"^meta\[(.*)\]$")
#: A cursor: the last record's time (microseconds since the epoch) and id, ``<micros>.<hex id>``.
CURSOR_PATTERN: Final = r"^[0-9]{1,17}\.([0-9a-f]{2}){1,32}$"
_CURSOR_RE: Final = re.compile(r"^(\d{1,17})\.((?:[0-9a-f]{2}){1,32})$")
#: Cursors of earlier versions (base64url of ``<micros>:<hex id>``), still read.
_OLD_CURSOR_RE: Final = re.compile(r"^(-?\d{1,20}):([0-9a-f]{2,64})$")
#: The time windows a page is looked for in before the unbounded search (see list_usage_records).
_WINDOWS: Final = (timedelta(days=1), timedelta(days=8), timedelta(days=40))

_TYPE: Final = sql.SQL("coalesce(e.operation, 'usage')")
_COUNT: Final = sql.SQL("(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)")

#: Relation filters: query parameter -> (column, None) or (None, attribute key).
RELATION_FILTERS: Final[dict[str, tuple[str | None, str | None]]] = {
    "conversationId": ("conversation_id", None),
    "messageId": ("request_id", None),
    "contactId": ("user_id", None),
    "taskId": (None, _META + "task_id"),
    "blueprintId": (None, _META + "blueprint_id"),
    "botId": (None, _META + "bot_id"),
    "datasetId": (None, _META + "dataset_id"),
    "skillsetId": (None, _META + "skillset_id"),
    "abilityId": (None, _META + "ability_id"),
}

_SELECT: Final = sql.SQL(
    """e.time, e.dedupe_key, {type}, {count}, e.conversation_id, e.request_id, e.user_id,
e.attributes->>{task}, e.attributes->>{blueprint}, e.attributes->>{bot}, e.attributes->>{dataset},
e.attributes->>{skillset}, e.attributes->>{ability},
(SELECT jsonb_object_agg(substr(a.key, {cut}), a.value) FROM jsonb_each(e.attributes) a
 WHERE starts_with(a.key, {prefix})), e.amended_at"""
).format(
    type=_TYPE,
    count=_COUNT,
    task=sql.Literal(_META + "task_id"),
    blueprint=sql.Literal(_META + "blueprint_id"),
    bot=sql.Literal(_META + "bot_id"),
    dataset=sql.Literal(_META + "dataset_id"),
    skillset=sql.Literal(_META + "skillset_id"),
    ability=sql.Literal(_META + "ability_id"),
    cut=sql.Literal(len(_META) + 1),
    prefix=sql.Literal(_META),
)


def meta_filters(params: Params) -> dict[str, str]:
    """The ``meta[key]=value`` (deep-object) filters of a query: any key, spaces and brackets included."""
    found: dict[str, str] = {}
    for name in params.names():
        match = _META_PARAM_RE.match(name)
        if match is None:
            continue
        key = match[1]
        if len(key) > _MAX_META_KEY_CHARS:
            raise InvalidRequestError(
                f"meta[...]: keys are at most {_MAX_META_KEY_CHARS} characters", field="meta"
            )
        value = params.get(name)
        if isinstance(value, str) and len(value) > 1000:
            raise InvalidRequestError(f"meta[{key[:60]}]: values are at most 1000 characters", field="meta")
        found[key] = value if isinstance(value, str) else text(value, f"meta[{key}]", min_len=0, max_len=1000)
    return found


def _meta_condition(key: str, value: str, bind: Any) -> sql.Composable:
    if "\x00" in key or "\x00" in value:
        return sql.SQL("false")  # nothing stored holds a NUL (PostgreSQL text cannot)
    # Containment keeps the GIN index usable; numbers and booleans stored as JSON match their text.
    candidates: list[Any] = [value]
    if value in ("true", "false"):
        candidates.append(value == "true")
    elif re.fullmatch(r"-?\d{1,18}", value):
        candidates.append(int(value))
    alternatives = [sql.SQL("e.attributes @> {}").format(bind(Jsonb({_META + key: c}))) for c in candidates]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives))


def _encode_cursor(moment: datetime, dedupe_key: bytes) -> str:
    micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return f"{micros}.{dedupe_key.hex()}"


def _decode_cursor(cursor: str) -> tuple[datetime, bytes]:
    match = _CURSOR_RE.match(cursor)
    if match is None:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raw = ""
        match = _OLD_CURSOR_RE.match(raw)
    if match is None or len(match[2]) % 2:
        raise InvalidRequestError("cursor: not a cursor returned by this API", field="cursor")
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(match[1]))
    except OverflowError:
        raise InvalidRequestError("cursor: not a cursor returned by this API", field="cursor") from None
    return moment, bytes.fromhex(match[2])


def list_usage_records(conn: psycopg.Connection[Any], tenant: str, params: Params) -> dict[str, Any]:
    """One page of ``tenant``'s usage records: ``{"items": [...], "cursor": ...}`` (cursor while more)."""
    values: dict[str, Any] = {"tenant": tenant}

    def bind(value: Any) -> sql.Placeholder:
        name = f"p{len(values)}"
        values[name] = value
        return sql.Placeholder(name)

    order_raw = params.get("order")
    order = "desc" if order_raw is None else text(order_raw, "order", max_len=4).lower()
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order: must be asc or desc", field="order")
    take_raw = params.get("take")
    take = DEFAULT_TAKE if take_raw is None else integer(take_raw, "take", minimum=1, maximum=MAX_TAKE)
    conditions: list[sql.Composable] = [sql.SQL("e.tenant = %(tenant)s"), sql.SQL("e.counted")]
    record_type = params.get("type")
    if record_type is not None:
        conditions.append(sql.SQL("{} = {}").format(_TYPE, bind(text(record_type, "type"))))
    for name, (column, key) in RELATION_FILTERS.items():
        raw = params.get(name)
        if raw is None:
            continue
        value = text(raw, name)
        if column == "request_id":  # through usage_events_read_request (migration 0083)
            conditions.append(REQUEST_ID_EQUALS.format(bind(value)))
        elif column is not None:
            conditions.append(sql.SQL("e.{} = {}").format(sql.Identifier(column), bind(value)))
        else:
            conditions.append(sql.SQL("e.attributes @> {}").format(bind(Jsonb({key: value}))))
    for key, value in meta_filters(params).items():
        conditions.append(_meta_condition(key, value, bind))
    cursor_raw = params.get("cursor")
    if cursor_raw is not None:
        moment, dedupe_key = _decode_cursor(text(cursor_raw, "cursor", max_len=200))
        conditions.append(
            sql.SQL("(e.time, e.dedupe_key) {} ({}, {})").format(
                sql.SQL("<" if order == "desc" else ">"), bind(moment), bind(dedupe_key)
            )
        )
    direction = sql.SQL("DESC" if order == "desc" else "ASC")
    # The page is looked for in a growing time window next to its anchor (the cursor, or now for
    # the newest first): a window with a plain time bound lets PostgreSQL plan only the partitions
    # inside it, instead of every partition of the retention period. The last try is unbounded.
    anchor = moment if cursor_raw is not None else (datetime.now(UTC) if order == "desc" else None)
    rows: list[tuple[Any, ...]] = []
    for width in (*(_WINDOWS if anchor is not None else ()), None):
        bounded = list(conditions)
        if width is not None and anchor is not None:
            bounded.append(
                sql.SQL("e.time >= {}").format(bind(anchor - width))
                if order == "desc"
                else sql.SQL("e.time <= {}").format(bind(anchor + width))
            )
        query = sql.SQL(
            "SELECT {cols} FROM tokenscale.usage_events e WHERE {w} "
            "ORDER BY e.time {d}, e.dedupe_key {d} LIMIT {l}"
        ).format(cols=_SELECT, w=sql.SQL(" AND ").join(bounded), d=direction, l=bind(take + 1))
        rows = conn.execute(query, values).fetchall()
        if len(rows) > take:
            break
    page = rows[:take]
    result: dict[str, Any] = {"items": [_record(row) for row in page]}
    if len(rows) > take:
        result["cursor"] = _encode_cursor(page[-1][0], bytes(page[-1][1]))
    return result


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _record(row: Sequence[Any]) -> dict[str, Any]:
    created = _ms(row[0])
    record: dict[str, Any] = {
        "id": bytes(row[1]).hex(),
        "createdAt": created,
        # A record is never removed; a better carrier of its request may amend it (amended_at).
        "updatedAt": created if row[14] is None else _ms(row[14]),
        "type": row[2],
        "count": int(row[3]),
    }
    for name, value in zip(RELATION_FILTERS, row[4:13], strict=True):
        if value is not None:
            record[name] = value
    record["meta"] = row[13] or {}
    return record


_SERIES_DAILY: Final = sql.SQL(
    """SELECT date_trunc('day', h.hour, 'UTC'), sum({tokens})::bigint, sum(h.requests)::bigint
FROM tokenscale.usage_hourly h
WHERE h.tenant = %(tenant)s AND h.hour >= %(start)s AND h.hour < %(end)s GROUP BY 1"""
).format(tokens=sql.SQL("h.input_tokens + h.cache_read_tokens + h.cache_write_tokens + h.output_tokens"))

# A conversation counts on the day of its first usage ever: seen in the series' span, and never before
# it (an index probe of usage_events_read_conversation per conversation).
_SERIES_CONVERSATIONS: Final = """
SELECT date_trunc('day', c.first_seen, 'UTC'), count(*) FROM (
    SELECT e.conversation_id, min(e.time) AS first_seen FROM tokenscale.usage_events e
    WHERE e.tenant = %(tenant)s AND e.counted AND e.conversation_id IS NOT NULL
      AND e.time >= %(start)s AND e.time < %(end)s
    GROUP BY e.conversation_id
) c
WHERE NOT EXISTS (
    SELECT 1 FROM tokenscale.usage_events p
    WHERE p.tenant = %(tenant)s AND p.conversation_id = c.conversation_id AND p.counted
      AND p.time < %(start)s
)
GROUP BY 1
"""

#: The attributes that name the user input (prompt) an AI request answers: Claude Code's
#: ``prompt.id``, Gemini CLI's ``prompt_id``. Every request of one agentic turn carries the same one.
PROMPT_ID_KEYS: Final = ("prompt.id", "prompt_id")

# User inputs per day: a prompt id counts once, on the day of its first request; a request without
# a prompt id answers one input of its own.
_SERIES_INPUTS: Final = sql.SQL(
    """
WITH w AS (
    SELECT e.time, e.requests, coalesce({prompt}) AS prompt FROM tokenscale.usage_events e
    WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(start)s AND e.time < %(end)s
)
SELECT day, sum(n)::bigint FROM (
    SELECT date_trunc('day', min(w.time), 'UTC') AS day, 1 AS n FROM w
    WHERE w.prompt IS NOT NULL GROUP BY w.prompt
    UNION ALL
    SELECT date_trunc('day', w.time, 'UTC'), w.requests FROM w WHERE w.prompt IS NULL
) x GROUP BY day
"""
).format(
    prompt=sql.SQL(", ").join(sql.SQL("e.attributes->>{}").format(sql.Literal(k)) for k in PROMPT_ID_KEYS)
)


def usage_series(conn: psycopg.Connection[Any], tenant: str, now: datetime | None = None) -> dict[str, Any]:
    """``tokens``, ``conversations`` and ``messages`` per UTC day for the last 90 days (today included).

    Each point is ``{"date": <midnight UTC in ms>, "total": n}``; days without usage are 0.
    Tokens and bot responses (AI requests) come from usage_hourly (the tenant's usage per UTC
    hour). Messages are user inputs plus bot responses: an input is a distinct prompt id
    (:data:`PROMPT_ID_KEYS`) on the day of its first request, or, for a request without one, the
    request's own. Conversations count on the day of their first usage ever.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    today = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    days = [today - timedelta(days=n) for n in range(SERIES_DAYS - 1, -1, -1)]
    span = {"tenant": tenant, "start": days[0], "end": today + timedelta(days=1)}
    tokens: dict[int, int] = {}
    messages: dict[int, int] = {}
    conversations: dict[int, int] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for day, day_tokens, day_requests in conn.execute(_SERIES_DAILY, span):
            tokens[_ms(day)] = int(day_tokens or 0)
            messages[_ms(day)] = int(day_requests or 0)
        for day, count in conn.execute(_SERIES_CONVERSATIONS, span):
            conversations[_ms(day)] = int(count)
        for day, inputs in conn.execute(_SERIES_INPUTS, span):
            messages[_ms(day)] = messages.get(_ms(day), 0) + int(inputs or 0)
    points = [_ms(d) for d in days]
    return {
        "tokens": [{"date": p, "total": tokens.get(p, 0)} for p in points],
        "conversations": [{"date": p, "total": conversations.get(p, 0)} for p in points],
        "messages": [{"date": p, "total": messages.get(p, 0)} for p in points],
    }
