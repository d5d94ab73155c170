# ruff: noqa
# fmt: off
# mypy: ignore-errors
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AiToolMetric(_message.Message):
    __slots__ = ("email", "date", "is_active", "tool", "metrics", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens", "spend_cents", "metrics_json")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEND_CENTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    email: str
    date: str
    is_active: bool
    tool: str
    metrics: _struct_pb2.Struct
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    spend_cents: int
    metrics_json: str
    def __init__(self, email: _Optional[str] = ..., date: _Optional[str] = ..., is_active: _Optional[bool] = ..., tool: _Optional[str] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., spend_cents: _Optional[int] = ..., metrics_json: _Optional[str] = ...) -> None: ...

class AiToolMetricRecord(_message.Message):
    __slots__ = ("id", "email", "date", "is_active", "tool", "metrics", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens", "spend_cents", "metrics_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEND_CENTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    date: str
    is_active: bool
    tool: str
    metrics: _struct_pb2.Struct
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    spend_cents: int
    metrics_json: str
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., date: _Optional[str] = ..., is_active: _Optional[bool] = ..., tool: _Optional[str] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., spend_cents: _Optional[int] = ..., metrics_json: _Optional[str] = ...) -> None: ...

class PushAllAiToolMetricsRequest(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedCompositeFieldContainer[AiToolMetric]
    def __init__(self, data: _Optional[_Iterable[_Union[AiToolMetric, _Mapping]]] = ...) -> None: ...

class PushAllAiToolMetricsResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedCompositeFieldContainer[AiToolMetricRecord]
    def __init__(self, data: _Optional[_Iterable[_Union[AiToolMetricRecord, _Mapping]]] = ...) -> None: ...

class ListAiMetricsRequest(_message.Message):
    __slots__ = ("team_id", "metric_type", "start_date", "end_date", "request_duration_min", "request_duration_max", "total_cost_min", "total_cost_max", "transaction_id", "trace_id", "trace_type", "organization_name", "subscriber_id", "subscriber_email", "subscription_id", "product_id", "agent", "provider", "model", "model_source", "error_reason", "operation_type", "environment", "billing_skipped", "include_coding_assistants", "page", "size", "sort")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_TYPE_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DURATION_MIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DURATION_MAX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MIN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MAX_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_EMAIL_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    BILLING_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CODING_ASSISTANTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    metric_type: str
    start_date: str
    end_date: str
    request_duration_min: int
    request_duration_max: int
    total_cost_min: float
    total_cost_max: float
    transaction_id: str
    trace_id: str
    trace_type: str
    organization_name: str
    subscriber_id: str
    subscriber_email: str
    subscription_id: str
    product_id: str
    agent: str
    provider: str
    model: str
    model_source: str
    error_reason: str
    operation_type: str
    environment: str
    billing_skipped: bool
    include_coding_assistants: bool
    page: int
    size: int
    sort: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, team_id: _Optional[str] = ..., metric_type: _Optional[str] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., request_duration_min: _Optional[int] = ..., request_duration_max: _Optional[int] = ..., total_cost_min: _Optional[float] = ..., total_cost_max: _Optional[float] = ..., transaction_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., trace_type: _Optional[str] = ..., organization_name: _Optional[str] = ..., subscriber_id: _Optional[str] = ..., subscriber_email: _Optional[str] = ..., subscription_id: _Optional[str] = ..., product_id: _Optional[str] = ..., agent: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., model_source: _Optional[str] = ..., error_reason: _Optional[str] = ..., operation_type: _Optional[str] = ..., environment: _Optional[str] = ..., billing_skipped: _Optional[bool] = ..., include_coding_assistants: _Optional[bool] = ..., page: _Optional[int] = ..., size: _Optional[int] = ..., sort: _Optional[_Iterable[str]] = ...) -> None: ...

class AiMetric(_message.Message):
    __slots__ = ("id", "metric_type", "transaction_id", "trace_id", "trace_type", "request_time", "request_duration", "model", "provider", "agent", "operation_type", "environment", "subscriber_id", "subscriber_email", "organization_name", "subscription_id", "product_id", "model_source", "error_reason", "total_cost", "billing_skipped", "is_coding_assistant", "input_token_count", "output_token_count", "reasoning_token_count", "cache_creation_token_count", "cache_read_token_count", "total_token_count", "audio_seconds", "character_count", "audio_input_token_count", "audio_output_token_count", "video_seconds", "video_count", "image_count", "image_size", "image_quality", "image_input_token_count", "image_output_token_count", "video_size", "span_id", "agent_name", "agent_id", "tool_name", "tool_call_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DURATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_EMAIL_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    BILLING_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    IS_CODING_ASSISTANT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    CACHE_CREATION_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OUTPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_OUTPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SIZE_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    metric_type: str
    transaction_id: str
    trace_id: str
    trace_type: str
    request_time: str
    request_duration: int
    model: str
    provider: str
    agent: str
    operation_type: str
    environment: str
    subscriber_id: str
    subscriber_email: str
    organization_name: str
    subscription_id: str
    product_id: str
    model_source: str
    error_reason: str
    total_cost: float
    billing_skipped: bool
    is_coding_assistant: bool
    input_token_count: int
    output_token_count: int
    reasoning_token_count: int
    cache_creation_token_count: int
    cache_read_token_count: int
    total_token_count: int
    audio_seconds: float
    character_count: int
    audio_input_token_count: int
    audio_output_token_count: int
    video_seconds: float
    video_count: int
    image_count: int
    image_size: str
    image_quality: str
    image_input_token_count: int
    image_output_token_count: int
    video_size: str
    span_id: str
    agent_name: str
    agent_id: str
    tool_name: str
    tool_call_id: str
    def __init__(self, id: _Optional[str] = ..., metric_type: _Optional[str] = ..., transaction_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., trace_type: _Optional[str] = ..., request_time: _Optional[str] = ..., request_duration: _Optional[int] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., agent: _Optional[str] = ..., operation_type: _Optional[str] = ..., environment: _Optional[str] = ..., subscriber_id: _Optional[str] = ..., subscriber_email: _Optional[str] = ..., organization_name: _Optional[str] = ..., subscription_id: _Optional[str] = ..., product_id: _Optional[str] = ..., model_source: _Optional[str] = ..., error_reason: _Optional[str] = ..., total_cost: _Optional[float] = ..., billing_skipped: _Optional[bool] = ..., is_coding_assistant: _Optional[bool] = ..., input_token_count: _Optional[int] = ..., output_token_count: _Optional[int] = ..., reasoning_token_count: _Optional[int] = ..., cache_creation_token_count: _Optional[int] = ..., cache_read_token_count: _Optional[int] = ..., total_token_count: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., character_count: _Optional[int] = ..., audio_input_token_count: _Optional[int] = ..., audio_output_token_count: _Optional[int] = ..., video_seconds: _Optional[float] = ..., video_count: _Optional[int] = ..., image_count: _Optional[int] = ..., image_size: _Optional[str] = ..., image_quality: _Optional[str] = ..., image_input_token_count: _Optional[int] = ..., image_output_token_count: _Optional[int] = ..., video_size: _Optional[str] = ..., span_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., agent_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., tool_call_id: _Optional[str] = ...) -> None: ...

class PageInfo(_message.Message):
    __slots__ = ("size", "total_elements", "total_pages", "number")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    size: int
    total_elements: int
    total_pages: int
    number: int
    def __init__(self, size: _Optional[int] = ..., total_elements: _Optional[int] = ..., total_pages: _Optional[int] = ..., number: _Optional[int] = ...) -> None: ...

class ListAiMetricsResponse(_message.Message):
    __slots__ = ("items", "page")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AiMetric]
    page: PageInfo
    def __init__(self, items: _Optional[_Iterable[_Union[AiMetric, _Mapping]]] = ..., page: _Optional[_Union[PageInfo, _Mapping]] = ...) -> None: ...

class RecordAiChatUsageRequest(_message.Message):
    __slots__ = ("company_id", "tokens_used")
    COMPANY_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_USED_FIELD_NUMBER: _ClassVar[int]
    company_id: str
    tokens_used: int
    def __init__(self, company_id: _Optional[str] = ..., tokens_used: _Optional[int] = ...) -> None: ...

class CheckBudgetRequest(_message.Message):
    __slots__ = ("company_id",)
    COMPANY_ID_FIELD_NUMBER: _ClassVar[int]
    company_id: str
    def __init__(self, company_id: _Optional[str] = ...) -> None: ...

class AiChatUsageResponse(_message.Message):
    __slots__ = ("company_id", "tokens_used", "token_limit", "tokens_remaining", "is_within_budget", "window_days")
    COMPANY_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_USED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    IS_WITHIN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    company_id: str
    tokens_used: int
    token_limit: int
    tokens_remaining: int
    is_within_budget: bool
    window_days: int
    def __init__(self, company_id: _Optional[str] = ..., tokens_used: _Optional[int] = ..., token_limit: _Optional[int] = ..., tokens_remaining: _Optional[int] = ..., is_within_budget: _Optional[bool] = ..., window_days: _Optional[int] = ...) -> None: ...

class ListUsageRecordsRequest(_message.Message):
    __slots__ = ("cursor", "order", "take", "type", "conversation_id", "message_id", "task_id", "contact_id", "blueprint_id", "bot_id", "dataset_id", "skillset_id", "ability_id", "meta")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    TAKE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SKILLSET_ID_FIELD_NUMBER: _ClassVar[int]
    ABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    order: str
    take: int
    type: str
    conversation_id: str
    message_id: str
    task_id: str
    contact_id: str
    blueprint_id: str
    bot_id: str
    dataset_id: str
    skillset_id: str
    ability_id: str
    meta: _containers.ScalarMap[str, str]
    def __init__(self, cursor: _Optional[str] = ..., order: _Optional[str] = ..., take: _Optional[int] = ..., type: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., task_id: _Optional[str] = ..., contact_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., bot_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., skillset_id: _Optional[str] = ..., ability_id: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("id", "created_at", "updated_at", "type", "count", "conversation_id", "message_id", "task_id", "contact_id", "blueprint_id", "bot_id", "dataset_id", "skillset_id", "ability_id", "meta", "meta_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SKILLSET_ID_FIELD_NUMBER: _ClassVar[int]
    ABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    created_at: int
    updated_at: int
    type: str
    count: int
    conversation_id: str
    message_id: str
    task_id: str
    contact_id: str
    blueprint_id: str
    bot_id: str
    dataset_id: str
    skillset_id: str
    ability_id: str
    meta: _struct_pb2.Struct
    meta_json: str
    def __init__(self, id: _Optional[str] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., type: _Optional[str] = ..., count: _Optional[int] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., task_id: _Optional[str] = ..., contact_id: _Optional[str] = ..., blueprint_id: _Optional[str] = ..., bot_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., skillset_id: _Optional[str] = ..., ability_id: _Optional[str] = ..., meta: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., meta_json: _Optional[str] = ...) -> None: ...

class ListUsageRecordsResponse(_message.Message):
    __slots__ = ("items", "cursor")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    cursor: str
    def __init__(self, items: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class FetchUsageSeriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SeriesPoint(_message.Message):
    __slots__ = ("date", "total")
    DATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    date: int
    total: int
    def __init__(self, date: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class FetchUsageSeriesResponse(_message.Message):
    __slots__ = ("tokens", "conversations", "messages")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[SeriesPoint]
    conversations: _containers.RepeatedCompositeFieldContainer[SeriesPoint]
    messages: _containers.RepeatedCompositeFieldContainer[SeriesPoint]
    def __init__(self, tokens: _Optional[_Iterable[_Union[SeriesPoint, _Mapping]]] = ..., conversations: _Optional[_Iterable[_Union[SeriesPoint, _Mapping]]] = ..., messages: _Optional[_Iterable[_Union[SeriesPoint, _Mapping]]] = ...) -> None: ...
