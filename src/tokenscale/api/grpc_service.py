"""The usage API over gRPC (``tokenscale.v1.UsageApi``): thin conversions around the shared operations.

Requests become the same values the HTTP API parses (field presence kept, names mapped to the HTTP
parameter names), so both transports validate and answer alike; failures abort with the status of
:func:`tokenscale.api._errors.classify`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message

from tokenscale.api._errors import InvalidRequestError, classify
from tokenscale.api._values import Params
from tokenscale.api.ai_metrics import AiMetricsPage
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.api.service import UsageApiService
from tokenscale.api.tool_metrics import COUNT_FIELDS, parse_push, parse_push_all
from tokenscale.api.usage_records import RELATION_FILTERS
from tokenscale.auth import Principal

__all__ = ["SERVICE_NAME", "UsageApiServicer"]

#: The full gRPC service name.
SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["UsageApi"].full_name

T = TypeVar("T")

_TOOL_METRIC_FIELDS: Final = ("email", "date", "is_active", "tool", *COUNT_FIELDS)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


#: ListAiMetricsRequest fields and the HTTP query parameters they stand for.
_AI_METRIC_PARAMS: Final = {
    f.name: _camel(f.name) for f in pb.ListAiMetricsRequest.DESCRIPTOR.fields if f.name != "sort"
}
_USAGE_PARAMS: Final = {
    f.name: _camel(f.name) for f in pb.ListUsageRecordsRequest.DESCRIPTOR.fields if f.name != "meta"
}


class _Undecodable:
    """Stands in for request bytes that are not a valid message (answered INVALID_ARGUMENT, not INTERNAL)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _deserializer(message_type: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return _Undecodable(f"invalid {message_type.DESCRIPTOR.name} ({len(data)} bytes): {exc}")

    return deserialize


def _plain(value: Any) -> Any:
    """A Struct's JSON with integral numbers back as ints (Struct keeps every number as a double)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _present(message: Message, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _tool_metric(message: pb.AiToolMetric, where: str = "") -> dict[str, Any]:
    record = _present(message, _TOOL_METRIC_FIELDS)
    if message.HasField("metrics") and message.HasField("metrics_json"):
        raise InvalidRequestError(
            f"{where}metrics_json: send either metrics or metrics_json, not both", field="metrics_json"
        )
    if message.HasField("metrics"):
        record["metrics"] = _plain(MessageToDict(message.metrics))
    if message.HasField("metrics_json"):
        try:
            record["metrics"] = json.loads(message.metrics_json, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise InvalidRequestError(
                f"{where}metrics_json: not valid JSON ({str(exc)[:120]})", field="metrics_json"
            ) from None
    return record


def _tool_metric_record(record: Mapping[str, Any]) -> pb.AiToolMetricRecord:
    out = pb.AiToolMetricRecord(
        id=record["id"],
        email=record["email"],
        date=record["date"],
        is_active=record["is_active"],
        tool=record["tool"],
    )
    if record["metrics"] is not None:
        out.metrics.update(record["metrics"])
        out.metrics_json = json.dumps(record["metrics"], ensure_ascii=False, separators=(",", ":"))
    for name in COUNT_FIELDS:
        if record[name] is not None:
            setattr(out, name, record[name])
    return out


def _ai_metrics_page(page: AiMetricsPage) -> pb.ListAiMetricsResponse:
    out = pb.ListAiMetricsResponse(
        page=pb.PageInfo(
            size=page.size,
            total_elements=page.total_elements,
            total_pages=page.total_pages,
            number=page.number,
        )
    )
    for item in page.items:
        fields = {_snake(k): v for k, v in item.items() if k != "subscriber" and v is not None}
        fields["subscriber_id"] = item["subscriber"]["id"]
        fields["subscriber_email"] = item["subscriber"]["email"]
        out.items.append(pb.AiMetric(**{k: v for k, v in fields.items() if v is not None}))
    return out


def _budget(status: Mapping[str, Any]) -> pb.AiChatUsageResponse:
    out = pb.AiChatUsageResponse(
        company_id=status["CompanyId"],
        tokens_used=status["TokensUsed"],
        is_within_budget=status["IsWithinBudget"],
        window_days=status["WindowDays"],
    )
    if status["TokenLimit"] is not None:
        out.token_limit = status["TokenLimit"]
        out.tokens_remaining = status["TokensRemaining"]
    return out


def _usage_records(result: Mapping[str, Any]) -> pb.ListUsageRecordsResponse:
    out = pb.ListUsageRecordsResponse()
    if "cursor" in result:
        out.cursor = result["cursor"]
    for item in result["items"]:
        record = pb.UsageRecord(
            id=item["id"],
            created_at=item["createdAt"],
            updated_at=item["updatedAt"],
            type=item["type"],
            count=item["count"],
            **{_snake(name): item[name] for name in RELATION_FILTERS if name in item},
        )
        record.meta.update(item["meta"])
        record.meta_json = json.dumps(item["meta"], ensure_ascii=False, separators=(",", ":"))
        out.items.append(record)
    return out


def _series(result: Mapping[str, Any]) -> pb.FetchUsageSeriesResponse:
    return pb.FetchUsageSeriesResponse(
        **{
            name: [pb.SeriesPoint(date=p["date"], total=p["total"]) for p in result[name]]
            for name in ("tokens", "conversations", "messages")
        }
    )


class UsageApiServicer:
    """``tokenscale.v1.UsageApi`` over a :class:`UsageApiService`; :meth:`add_to_server` mounts it."""

    def __init__(self, service: UsageApiService) -> None:
        self.service = service

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register every RPC on ``server`` (before it starts), like a generated ``add_*_to_server``."""
        methods = pb.DESCRIPTOR.services_by_name["UsageApi"].methods
        handlers = {}
        for method in methods:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                getattr(self, method.name),
                request_deserializer=_deserializer(request_type),
                response_serializer=response_type.SerializeToString,
            )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    async def _call(self, request: Any, context: Any, scope: str, work: Callable[[Principal], T]) -> T:
        """Resolve the caller, run ``work`` in a worker thread, or abort with the failure's status."""
        try:
            if isinstance(request, _Undecodable):
                raise InvalidRequestError(request.reason)
            headers = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            principal = await asyncio.to_thread(self.service.principal, headers, scope)
            return await asyncio.to_thread(work, principal)
        except Exception as exc:
            failure = classify(exc)
        await context.abort(failure.grpc_code, failure.message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    async def PushAiToolMetric(self, request: Any, context: Any) -> pb.AiToolMetricRecord:  # noqa: N802
        """aiToolMetrics.push."""

        def work(principal: Principal) -> pb.AiToolMetricRecord:
            records = parse_push(_tool_metric(request))
            return _tool_metric_record(self.service.push_tool_metrics(principal, records)[0])

        return await self._call(request, context, "ingest", work)

    async def PushAllAiToolMetrics(self, request: Any, context: Any) -> pb.PushAllAiToolMetricsResponse:  # noqa: N802
        """aiToolMetrics.pushAll."""

        def work(principal: Principal) -> pb.PushAllAiToolMetricsResponse:
            records = parse_push_all(
                {"data": [_tool_metric(m, f"data[{i}].") for i, m in enumerate(request.data)]}
            )
            stored = self.service.push_tool_metrics(principal, records)
            return pb.PushAllAiToolMetricsResponse(data=[_tool_metric_record(r) for r in stored])

        return await self._call(request, context, "ingest", work)

    async def _ai_metrics(self, request: Any, context: Any, modality: str) -> pb.ListAiMetricsResponse:
        def work(principal: Principal) -> pb.ListAiMetricsResponse:
            values: dict[str, list[object]] = {
                http: [getattr(request, name)]
                for name, http in _AI_METRIC_PARAMS.items()
                if request.HasField(name)
            }
            if request.sort:
                values["sort"] = list(request.sort)
            return _ai_metrics_page(self.service.list_ai_metrics(principal, Params(values), modality))

        return await self._call(request, context, "read", work)

    async def ListAiMetrics(self, request: Any, context: Any) -> pb.ListAiMetricsResponse:  # noqa: N802
        """GET /v2/api/sources/metrics/ai."""
        return await self._ai_metrics(request, context, "all")

    async def ListAiCompletionMetrics(self, request: Any, context: Any) -> pb.ListAiMetricsResponse:  # noqa: N802
        """GET /v2/api/sources/metrics/ai/completions."""
        return await self._ai_metrics(request, context, "completions")

    async def ListAiAudioMetrics(self, request: Any, context: Any) -> pb.ListAiMetricsResponse:  # noqa: N802
        """GET /v2/api/sources/metrics/ai/audio."""
        return await self._ai_metrics(request, context, "audio")

    async def ListAiVideoMetrics(self, request: Any, context: Any) -> pb.ListAiMetricsResponse:  # noqa: N802
        """GET /v2/api/sources/metrics/ai/video."""
        return await self._ai_metrics(request, context, "video")

    async def ListAiImageMetrics(self, request: Any, context: Any) -> pb.ListAiMetricsResponse:  # noqa: N802
        """GET /v2/api/sources/metrics/ai/images."""
        return await self._ai_metrics(request, context, "images")

    async def RecordAiChatUsage(self, request: Any, context: Any) -> pb.AiChatUsageResponse:  # noqa: N802
        """POST /assistant/ai-chat/usage."""

        metadata = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        key = metadata.get("idempotency-key")
        if key is None:
            key = metadata.get("x-request-id") or None

        def work(principal: Principal) -> pb.AiChatUsageResponse:
            company = request.company_id if request.HasField("company_id") else None
            tokens = request.tokens_used if request.HasField("tokens_used") else None
            return _budget(self.service.record_chat_usage(principal, company, tokens, key))

        return await self._call(request, context, "ingest", work)

    async def CheckBudget(self, request: Any, context: Any) -> pb.AiChatUsageResponse:  # noqa: N802
        """GET /api/budgets/check."""

        def work(principal: Principal) -> pb.AiChatUsageResponse:
            company = request.company_id if request.HasField("company_id") else None
            return _budget(self.service.check_budget(principal, company))

        return await self._call(request, context, "read", work)

    async def ListUsageRecords(self, request: Any, context: Any) -> pb.ListUsageRecordsResponse:  # noqa: N802
        """GET /api/v1/usage/list."""

        def work(principal: Principal) -> pb.ListUsageRecordsResponse:
            values: dict[str, list[object]] = {
                http: [getattr(request, name)]
                for name, http in _USAGE_PARAMS.items()
                if request.HasField(name)
            }
            for key, value in request.meta.items():
                values[f"meta[{key}]"] = [value]
            return _usage_records(self.service.list_usage_records(principal, Params(values)))

        return await self._call(request, context, "read", work)

    async def FetchUsageSeries(self, request: Any, context: Any) -> pb.FetchUsageSeriesResponse:  # noqa: N802
        """GET /api/v1/usage/series/fetch."""

        def work(principal: Principal) -> pb.FetchUsageSeriesResponse:
            return _series(self.service.usage_series(principal))

        return await self._call(request, context, "read", work)
