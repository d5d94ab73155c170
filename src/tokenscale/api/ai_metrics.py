"""AI metrics listings (Revenium ``sources/metrics/ai``): filters, sorting and deep pages over usage_events.

Every query reads the caller's tenant only: its counted rows, and the listed rows of spans that
aggregate requests counted elsewhere (agents, tool calls, workflows: ``AGENT_SPAN``), which are
never counted. Each part is read from its own partial index, ordered and limited on its own, and
the two are merged (``UNION ALL``, then the page's order and limit). The default order
(``requestTime``) pages by keyset: the first row of page N is found by an index-only walk of
``usage_events_read_time`` and ``usage_events_read_listed`` (no heap fetches for the skipped rows),
then the page itself is a range scan from there. Other sort orders use OFFSET.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tokenscale.api._errors import InvalidRequestError
from tokenscale.api._values import Params, boolean, integer, number, text, timestamp
from tokenscale.mapping.rules import AGENT_SPAN

__all__ = [
    "AGENT_FIELDS",
    "COLLECTIONS",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "METRIC_TYPES",
    "MODALITIES",
    "MODALITY_FIELDS",
    "OPERATION_TYPES",
    "SORT_ALIASES",
    "SORT_PATTERN",
    "SORT_PROPERTIES",
    "AiMetricsPage",
    "AiMetricsQuery",
    "list_ai_metrics",
    "parse_ai_metrics_query",
]

Modality = Literal["all", "completions", "audio", "video", "images"]

METRIC_TYPES: Final = ("COMPLETION", "AUDIO", "VIDEO", "IMAGE")
#: The listing of each path and the metric type it is confined to (None: every type).
MODALITIES: Final[dict[str, str | None]] = {
    "all": None,
    "completions": "COMPLETION",
    "audio": "AUDIO",
    "video": "VIDEO",
    "images": "IMAGE",
}
#: The ``_embedded`` key of each listing (Spring HATEOAS names: resource class + "List").
COLLECTIONS: Final[dict[str, str]] = {
    "all": "aIMetricResourceList",
    "completions": "aICompletionMetricResourceList",
    "audio": "aIAudioMetricResourceList",
    "video": "aIVideoMetricResourceList",
    "images": "aIImageMetricResourceList",
}
OPERATION_TYPES: Final = (
    "CHAT",
    "GENERATE",
    "EMBED",
    "TOOL_CALL",
    "AGENT",
    "AUDIO",
    "IMAGE",
    "VIDEO",
    "OTHER",
)
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 1000
MAX_PAGE: Final = 2**31 - 1
MAX_DURATION_MS: Final = 300_000
MAX_TOTAL_COST: Final = 999_999.99

_META: Final = "tokenscale.meta."
#: The two disjoint parts a listing reads, each the predicate of its own partial index: counted
#: rows (``usage_events_read_time``), and the never counted listed rows of agent and tool spans
#: (``usage_events_read_listed``, migration 0060).
_PARTS: Final = (
    sql.SQL("e.counted"),
    sql.SQL("e.source = {} AND NOT e.counted").format(sql.Literal(AGENT_SPAN.carrier)),
)
_DATE_ONLY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TOTAL_TOKENS: Final = sql.SQL(
    "(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)"
)
_METRIC_TYPE: Final = sql.SQL("tokenscale.ai_metric_type(e.operation)")
_OPERATION_TYPE: Final = sql.SQL("tokenscale.ai_operation_type(e.operation)")
# The column (rows stored since migration 0081), else the attributes of rows stored before.
_ENVIRONMENT: Final = sql.SQL(
    "upper(coalesce(e.environment, e.attributes->>'deployment.environment.name', "
    "e.attributes->>'deployment.environment'))"
)
_BILLING_SKIPPED: Final = sql.SQL("coalesce(lower(e.attributes->>{}) IN ('true', '1'), false)").format(
    sql.Literal(_META + "billing_skipped")
)

#: ``sort`` properties and the expression each orders by.
SORT_PROPERTIES: Final[dict[str, sql.Composable]] = {
    "requestTime": sql.SQL("e.time"),
    "id": sql.SQL("e.dedupe_key"),
    "totalCost": sql.SQL("e.cost_usd"),
    "requestDuration": sql.SQL("e.duration_ms"),
    "model": sql.SQL("e.model"),
    "provider": sql.SQL("e.provider"),
    "agent": sql.SQL("e.tool"),
    "transactionId": sql.SQL("e.request_id"),
    "subscriberEmail": sql.SQL("e.user_email"),
    "subscriberId": sql.SQL("e.user_id"),
    "errorReason": sql.SQL("e.error_type"),
    "metricType": _METRIC_TYPE,
    "operationType": _OPERATION_TYPE,
    "inputTokenCount": sql.SQL("e.input_tokens"),
    "outputTokenCount": sql.SQL("e.output_tokens"),
    "reasoningTokenCount": sql.SQL("e.reasoning_tokens"),
    "cacheCreationTokenCount": sql.SQL("e.cache_write_tokens"),
    "cacheReadTokenCount": sql.SQL("e.cache_read_tokens"),
    "totalTokenCount": _TOTAL_TOKENS,
}

#: Fields of agent and tool rows (listed spans, operation types AGENT and TOOL_CALL) in the
#: listings that hold them (all, completions); null on other rows.
AGENT_FIELDS: Final[tuple[tuple[str, str, type], ...]] = (
    ("spanId", "otel.span_id", str),
    ("agentName", "gen_ai.agent.name", str),
    ("agentId", "gen_ai.agent.id", str),
    ("toolName", "gen_ai.tool.name", str),
    ("toolCallId", "gen_ai.tool.call.id", str),
)

#: Type-specific fields of the listings, each read from a usage event attribute
#: (``gen_ai.usage.<modality>.*`` units, ``gen_ai.request.image.*`` parameters, agent and tool
#: names): name, attribute key, and ``int``, ``float`` or ``str``.
MODALITY_FIELDS: Final[dict[str, tuple[tuple[str, str, type], ...]]] = {
    "all": AGENT_FIELDS,
    "completions": AGENT_FIELDS,
    "audio": (
        ("audioSeconds", "gen_ai.usage.audio.seconds", float),
        ("characterCount", "gen_ai.usage.text.characters", int),
        ("audioInputTokenCount", "gen_ai.usage.audio.input_tokens", int),
        ("audioOutputTokenCount", "gen_ai.usage.audio.output_tokens", int),
    ),
    "video": (
        ("videoSeconds", "gen_ai.usage.video.seconds", float),
        ("videoCount", "gen_ai.usage.video.count", int),
        ("videoSize", "gen_ai.request.video.size", str),
    ),
    "images": (
        ("imageCount", "gen_ai.usage.image.count", int),
        ("imageSize", "gen_ai.request.image.size", str),
        ("imageQuality", "gen_ai.request.image.quality", str),
        ("imageInputTokenCount", "gen_ai.usage.image.input_tokens", int),
        ("imageOutputTokenCount", "gen_ai.usage.image.output_tokens", int),
    ),
}
_EXTRA_KEYS: Final = tuple(dict.fromkeys(key for fields in MODALITY_FIELDS.values() for _, key, _ in fields))

#: Sort properties Revenium's clients use under other names, and the property each stands for.
SORT_ALIASES: Final[dict[str, str]] = {
    "timestamp": "requestTime",
    "requestTimestamp": "requestTime",
    "createdAt": "requestTime",
    "created": "requestTime",
    "time": "requestTime",
    "cost": "totalCost",
    "duration": "requestDuration",
    "inputTokens": "inputTokenCount",
    "outputTokens": "outputTokenCount",
    "totalTokens": "totalTokenCount",
    "reasoningTokens": "reasoningTokenCount",
    "cacheCreationTokens": "cacheCreationTokenCount",
    "cacheReadTokens": "cacheReadTokenCount",
}

_SORT_NAMES: Final = "|".join(re.escape(name) for name in (*SORT_PROPERTIES, *SORT_ALIASES))
#: One ``sort`` value: properties (or aliases) separated by commas, optionally a direction last.
SORT_PATTERN: Final = f"^(?:{_SORT_NAMES})(?:,(?:{_SORT_NAMES}))*(?:,(?:[aA][sS][cC]|[dD][eE][sS][cC]))?$"
_SORT_RE: Final = re.compile(SORT_PATTERN)

#: Filters whose stored values are normalised (lower case: providers, tools, e-mails, model ids):
#: matched case-insensitively.
_CASELESS_FILTERS: Final = frozenset({"agent", "provider", "model", "subscriberEmail"})

# Exact-match filters on columns, and on tokenscale.meta.* attributes (answered by the GIN index).
_COLUMN_FILTERS: Final = {
    "transactionId": "request_id",
    "subscriberId": "user_id",
    "subscriberEmail": "user_email",
    "agent": "tool",
    "provider": "provider",
    "model": "model",
    "errorReason": "error_type",
}
#: The OTLP trace id of a span's usage event (tokenscale.mapping), when the app sets no trace id.
_OTEL_TRACE_ID: Final = "otel.trace_id"
_TRACE_HEX: Final = re.compile(r"[0-9a-f]{32}")
#: ``e.request_id = <value>``, answered by usage_events_read_request, a B-tree over the id's 64-bit
#: hash (migration 0083): the hash is compared first, then the id.
REQUEST_ID_EQUALS: Final = sql.SQL(
    "(hashtextextended(e.request_id, 0) = hashtextextended({0}, 0) AND e.request_id = {0})"
)
_META_FILTERS: Final = {
    "organizationName": _META + "organization_name",
    "subscriptionId": _META + "subscription_id",
    "productId": _META + "product_id",
    "modelSource": _META + "model_source",
}
#: Every query parameter the listings understand (others are ignored, as Spring does).
QUERY_PARAMETERS: Final = (
    "teamId",
    "metricType",
    "startDate",
    "endDate",
    "requestDurationMin",
    "requestDurationMax",
    "totalCostMin",
    "totalCostMax",
    *_COLUMN_FILTERS,
    *_META_FILTERS,
    "traceId",
    "traceType",
    "operationType",
    "environment",
    "billingSkipped",
    "includeCodingAssistants",
    "page",
    "size",
    "sort",
)


@dataclass(slots=True)
class AiMetricsQuery:
    """A validated listing request: conditions (beyond tenant and ``counted``), order and page."""

    team_id: str
    modality: str
    conditions: list[sql.Composable] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (property, ascending)
    page: int = 0
    size: int = DEFAULT_PAGE_SIZE

    def bind(self, value: Any) -> sql.Placeholder:
        """A named placeholder for ``value``."""
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)


@dataclass(frozen=True, slots=True)
class AiMetricsPage:
    """One page of a listing."""

    items: list[dict[str, Any]]
    size: int
    total_elements: int
    number: int

    @property
    def total_pages(self) -> int:
        """Pages in the whole listing (Spring: ceil(total / size))."""
        return math.ceil(self.total_elements / self.size) if self.size else 0


def parse_ai_metrics_query(params: Params, modality: str) -> AiMetricsQuery:
    """Validate the query parameters of one listing; :class:`InvalidRequestError` names the parameter."""
    team = params.get("teamId")
    if team is None:
        raise InvalidRequestError("teamId: is required", field="teamId")
    query = AiMetricsQuery(team_id=text(team, "teamId"), modality=modality)
    fixed_type = MODALITIES[modality]
    requested_type = params.get("metricType")
    if requested_type is not None:
        metric_type = _enum(requested_type, "metricType", METRIC_TYPES)
        if fixed_type is None:
            query.conditions.append(sql.SQL("{} = {}").format(_METRIC_TYPE, query.bind(metric_type)))
        elif metric_type != fixed_type:
            query.conditions.append(sql.SQL("false"))
    if fixed_type is not None:
        query.conditions.append(sql.SQL("{} = {}").format(_METRIC_TYPE, query.bind(fixed_type)))

    def add(name: str, template: str, convert: Callable[[object, str], Any]) -> None:
        value = params.get(name)
        if value is not None:
            query.conditions.append(sql.SQL(template).format(query.bind(convert(value, name))))

    add("startDate", "e.time >= {}", timestamp)
    end = params.get("endDate")
    if end is not None:
        bound = timestamp(end, "endDate")
        if _DATE_ONLY.match(str(end).strip()):
            # A date without a time means the whole of that UTC day.
            if bound < datetime.max.replace(tzinfo=UTC) - timedelta(days=1):
                query.conditions.append(sql.SQL("e.time < {}").format(query.bind(bound + timedelta(days=1))))
        else:
            query.conditions.append(sql.SQL("e.time <= {}").format(query.bind(bound)))

    def duration(value: object, name: str) -> int:
        return integer(value, name, minimum=0, maximum=MAX_DURATION_MS)

    def cost(value: object, name: str) -> float:
        return number(value, name, minimum=0, maximum=MAX_TOTAL_COST)

    add("requestDurationMin", "e.duration_ms >= {}", duration)
    add("requestDurationMax", "e.duration_ms <= {}", duration)
    add("totalCostMin", "e.cost_usd >= {}::numeric", cost)
    add("totalCostMax", "e.cost_usd <= {}::numeric", cost)
    for name, column in _COLUMN_FILTERS.items():
        value = params.get(name)
        if value is None:
            continue
        wanted = text(value, name)
        if column == "request_id":  # through usage_events_read_request (migration 0083)
            query.conditions.append(REQUEST_ID_EQUALS.format(query.bind(wanted)))
            continue
        template = "lower(e.{}) = lower({})" if name in _CASELESS_FILTERS else "e.{} = {}"
        query.conditions.append(sql.SQL(template).format(sql.Identifier(column), query.bind(wanted)))
    for name, key in _META_FILTERS.items():
        value = params.get(name)
        if value is not None:
            query.conditions.append(
                sql.SQL("e.attributes @> {}").format(query.bind(Jsonb({key: text(value, name)})))
            )
    trace = params.get("traceId")
    if trace is not None:
        value = text(trace, "traceId")
        own = query.bind(Jsonb({_META + "trace_id": value}))
        otlp = value.lower()
        # The OTLP trace id is in the trace_id column (rows stored since migration 0081: hash index
        # usage_events_read_trace), else in attributes (rows stored before: the GIN index); an app's
        # own trace id wins over it. Three arms, each answered by an index (a BitmapOr).
        hex_id = otlp if _TRACE_HEX.fullmatch(otlp) else None
        no_own = query.bind(_META + "trace_id")
        query.conditions.append(
            sql.SQL(
                "(e.attributes @> {} "
                "OR (hashtextextended(encode(e.trace_id, 'hex'), 0) = hashtextextended({}, 0) "
                "AND e.trace_id = decode({}, 'hex') AND NOT e.attributes ? {}) "
                "OR (e.attributes @> {} AND NOT e.attributes ? {}))"
            ).format(
                own,
                query.bind(hex_id),
                query.bind(hex_id),
                no_own,
                query.bind(Jsonb({_OTEL_TRACE_ID: otlp})),
                no_own,
            )
        )
    trace_type = params.get("traceType")
    if trace_type is not None:
        value = text(trace_type, "traceType")
        key = _META + "trace_type"
        if value == "unknown":
            query.conditions.append(sql.SQL("NOT e.attributes ? {}").format(query.bind(key)))
        else:
            query.conditions.append(sql.SQL("e.attributes @> {}").format(query.bind(Jsonb({key: value}))))
    operation_type = params.get("operationType")
    if operation_type is not None:
        value = _enum(operation_type, "operationType", OPERATION_TYPES)
        query.conditions.append(sql.SQL("{} = {}").format(_OPERATION_TYPE, query.bind(value)))
    environment = params.get("environment")
    if environment is not None:
        value = text(environment, "environment", max_len=50).upper()
        query.conditions.append(sql.SQL("{} = {}").format(_ENVIRONMENT, query.bind(value)))
    skipped = params.get("billingSkipped")
    if skipped is not None:
        value_b = boolean(skipped, "billingSkipped")
        query.conditions.append(sql.SQL("{} = {}").format(_BILLING_SKIPPED, query.bind(value_b)))
    include = params.get("includeCodingAssistants")
    if include is None or not boolean(include, "includeCodingAssistants"):
        # Non-completion metrics are unaffected by this filter (Revenium's rule).
        query.conditions.append(
            sql.SQL("NOT (tokenscale.is_coding_assistant(e.tool) AND {} = 'COMPLETION')").format(_METRIC_TYPE)
        )
    page = params.get("page")
    if page is not None:
        query.page = integer(page, "page", minimum=0, maximum=MAX_PAGE)
    size = params.get("size")
    if size is not None:
        query.size = integer(size, "size", minimum=1, maximum=MAX_PAGE_SIZE)
    query.sort = _parse_sort(params.all("sort"))
    return query


def _enum(value: object, name: str, allowed: Sequence[str]) -> str:
    found = text(value, name, max_len=50).upper()
    if found not in allowed:
        raise InvalidRequestError(f"{name}: must be one of {', '.join(allowed)}", field=name)
    return found


def _parse_sort(values: Sequence[object]) -> list[tuple[str, bool]]:
    """Spring's ``sort=property[,property...][,(asc|desc)]``, repeatable; default ``requestTime,DESC``."""
    order: list[tuple[str, bool]] = []
    for raw in values:
        value = text(raw, "sort", max_len=500)
        if not _SORT_RE.match(value):
            raise InvalidRequestError(
                f"sort: {value[:60]!r} is not property[,property...][,asc|desc]; sortable: "
                f"{', '.join(SORT_PROPERTIES)} (or {', '.join(SORT_ALIASES)})",
                field="sort",
            )
        parts = value.split(",")
        ascending = True  # Spring's default direction for a property given without one
        if parts[-1].lower() in ("asc", "desc"):
            ascending = parts.pop().lower() == "asc"
        for alias in parts:
            prop = SORT_ALIASES.get(alias, alias)
            if prop not in (p for p, _ in order):
                order.append((prop, ascending))
    return order or [("requestTime", False)]


_SELECT: Final = sql.SQL(
    """e.time, e.dedupe_key, e.tool, e.user_email, e.user_id, e.provider, e.model, e.operation, e.request_id,
e.input_tokens, e.cache_read_tokens, e.cache_write_tokens, e.output_tokens, e.reasoning_tokens,
e.cost_usd, e.duration_ms, e.error_type, {metric_type}, {operation_type}, {environment}, {skipped},
tokenscale.is_coding_assistant(e.tool),
coalesce(e.attributes->>{trace_id}, encode(e.trace_id, 'hex'), e.attributes->>{otel_trace_id}),
e.attributes->>{trace_type},
e.attributes->>{organization}, e.attributes->>{subscription}, e.attributes->>{product},
e.attributes->>{model_source}, {extras}"""
).format(
    extras=sql.SQL(", ").join(sql.SQL("e.attributes->{}").format(sql.Literal(k)) for k in _EXTRA_KEYS),
    metric_type=_METRIC_TYPE,
    operation_type=_OPERATION_TYPE,
    environment=_ENVIRONMENT,
    skipped=_BILLING_SKIPPED,
    trace_id=sql.Literal(_META + "trace_id"),
    otel_trace_id=sql.Literal(_OTEL_TRACE_ID),
    trace_type=sql.Literal(_META + "trace_type"),
    organization=sql.Literal(_META + "organization_name"),
    subscription=sql.Literal(_META + "subscription_id"),
    product=sql.Literal(_META + "product_id"),
    model_source=sql.Literal(_META + "model_source"),
)


def list_ai_metrics(conn: psycopg.Connection[Any], tenant: str, query: AiMetricsQuery) -> AiMetricsPage:
    """One page of ``query`` for ``tenant``, and the total the page envelope reports."""
    query.params["tenant"] = tenant
    where = sql.SQL(" AND ").join([sql.SQL("e.tenant = %(tenant)s"), *query.conditions])
    offset = query.page * query.size
    with conn.transaction():
        # The count and the page come from one snapshot.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        counts = [
            sql.SQL("(SELECT count(*) FROM tokenscale.usage_events e WHERE {} AND {})").format(part, where)
            for part in _PARTS
        ]
        count_row = conn.execute(sql.SQL("SELECT ") + sql.SQL(" + ").join(counts), query.params).fetchone()
        total = int(count_row[0]) if count_row else 0
        rows: list[tuple[Any, ...]] = []
        page = _page_sql(conn, query, where, offset) if offset < total else None
        if page is not None:
            rows = conn.execute(page, query.params).fetchall()
    items = [_item(row, query.modality) for row in rows]
    return AiMetricsPage(items=items, size=query.size, total_elements=total, number=query.page)


def _merged(
    columns: sql.Composable, where: sql.Composable, order: sql.Composable, limit: sql.Composable
) -> sql.Composed:
    """The first ``limit`` rows in ``order`` of each part (:data:`_PARTS`), as one relation ``e``.

    Each part is ordered and limited on its own, so that each is read along its own index; the
    caller orders the union again and takes its page."""
    parts = [
        sql.SQL(
            "(SELECT {c} FROM tokenscale.usage_events e WHERE {p} AND {w} ORDER BY {o} LIMIT {l})"
        ).format(c=columns, p=part, w=where, o=order, l=limit)
        for part in _PARTS
    ]
    return sql.SQL("(") + sql.SQL(" UNION ALL ").join(parts) + sql.SQL(") e")


def _keyset_order(query: AiMetricsQuery) -> tuple[sql.Composable, sql.Composable] | None:
    """ORDER BY and boundary comparison of a listing in (time, dedupe_key) order, else None."""
    if len(query.sort) != 1 or query.sort[0][0] != "requestTime":
        return None
    ascending = query.sort[0][1]
    direction = sql.SQL("ASC" if ascending else "DESC")
    order = sql.SQL("e.time {d}, e.dedupe_key {d}").format(d=direction)
    return order, sql.SQL(">=" if ascending else "<=")


def _boundary_sql(query: AiMetricsQuery, where: sql.Composable, offset: int) -> sql.Composed:
    """The (time, dedupe_key) of the row at ``offset`` of a keyset listing: index-only walks."""
    keyset = _keyset_order(query)
    assert keyset is not None
    rows = _merged(sql.SQL("e.time, e.dedupe_key"), where, keyset[0], query.bind(offset + 1))
    return sql.SQL("SELECT e.time, e.dedupe_key FROM {rows} ORDER BY {o} OFFSET {off} LIMIT 1").format(
        rows=rows, o=keyset[0], off=query.bind(offset)
    )


def _page_sql(
    conn: psycopg.Connection[Any], query: AiMetricsQuery, where: sql.Composable, offset: int
) -> sql.Composed | None:
    """The statement of the page at ``offset`` (None: there is nothing there)."""
    limit = query.bind(query.size)
    keyset = _keyset_order(query)
    if keyset is not None:
        # Keyset: the page's first row is found by an index-only walk, in a statement of its own, so
        # that the page itself starts with an index condition on it.
        order, compare = keyset
        if offset > 0:
            boundary = conn.execute(_boundary_sql(query, where, offset), query.params).fetchone()
            if boundary is None:
                return None
            where = sql.SQL("{w} AND e.time {cmp} {t} AND (e.time, e.dedupe_key) {cmp} ({t}, {k})").format(
                w=where, cmp=compare, t=query.bind(boundary[0]), k=query.bind(boundary[1])
            )
        return sql.SQL("SELECT {cols} FROM {rows} ORDER BY {o} LIMIT {l}").format(
            cols=_SELECT, rows=_merged(sql.SQL("*"), where, order, limit), o=order, l=limit
        )
    terms: list[sql.Composable] = [
        sql.SQL("{} {} NULLS LAST").format(SORT_PROPERTIES[prop], sql.SQL("ASC" if asc else "DESC"))
        for prop, asc in query.sort
    ]
    sorted_props = {p for p, _ in query.sort}
    if "requestTime" not in sorted_props:
        terms.append(sql.SQL("e.time DESC"))
    if "id" not in sorted_props:
        terms.append(sql.SQL("e.dedupe_key DESC"))
    order = sql.SQL(", ").join(terms)
    rows = _merged(sql.SQL("*"), where, order, query.bind(offset + query.size))
    return sql.SQL("SELECT {cols} FROM {rows} ORDER BY {o} OFFSET {off} LIMIT {l}").format(
        cols=_SELECT, rows=rows, o=order, off=query.bind(offset), l=limit
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _unit(value: Any, kind: type) -> Any:
    """An attribute as the field's type (``None`` when absent or not of that kind)."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    if kind is str:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return int(number) if kind is int else number


def _item(row: Sequence[Any], modality: str) -> dict[str, Any]:
    extras = dict(zip(_EXTRA_KEYS, row[28:], strict=True))
    (
        time_,
        dedupe_key,
        tool,
        user_email,
        user_id,
        provider,
        model,
        _operation,
        request_id,
        input_tokens,
        cache_read,
        cache_write,
        output_tokens,
        reasoning,
        cost,
        duration,
        error_type,
        metric_type,
        operation_type,
        environment,
        skipped,
        coding,
        trace_id,
        trace_type,
        organization,
        subscription,
        product,
        model_source,
    ) = row[:28]
    item: dict[str, Any] = {
        "id": bytes(dedupe_key).hex(),
        "metricType": metric_type,
        "transactionId": request_id,
        "traceId": trace_id,
        "traceType": trace_type,
        "requestTime": _iso(time_),
        "requestDuration": None if duration is None else round(duration),
        "model": model,
        "provider": provider,
        "agent": tool,
        "operationType": operation_type,
        "environment": environment,
        "subscriber": {"id": user_id, "email": user_email},
        "organizationName": organization,
        "subscriptionId": subscription,
        "productId": product,
        "modelSource": model_source,
        "errorReason": error_type,
        "totalCost": None if cost is None else float(cost),
        "billingSkipped": bool(skipped),
        "isCodingAssistant": bool(coding),
    }
    if modality != "all":
        item.update(
            inputTokenCount=int(input_tokens),
            outputTokenCount=int(output_tokens),
            reasoningTokenCount=int(reasoning),
            cacheCreationTokenCount=int(cache_write),
            cacheReadTokenCount=int(cache_read),
            totalTokenCount=int(input_tokens + cache_read + cache_write + output_tokens),
        )
    for name, key, kind in MODALITY_FIELDS.get(modality, ()):
        item[name] = _unit(extras[key], kind)
    return item
