"""GenAI semantic-convention names and tokenscale's own attribute keys, in one place."""

from __future__ import annotations

from typing import Final

# --- span and metric attributes (semconv gen-ai registry, v1.41 + genai repo main) ---------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"

# Usage: input_tokens counts ALL input (cache reads and writes included); output_tokens counts all
# output (reasoning included). The cache and reasoning counts are parts of those totals.
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"

OPENAI_API_TYPE: Final = "openai.api.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

# --- attribute values -------------------------------------------------------------------------

OPERATION_CHAT: Final = "chat"
OPERATION_EMBEDDINGS: Final = "embeddings"
#: Operations of the image and audio APIs (no semconv names yet; tokenscale's read APIs file them
#: under the IMAGE and AUDIO metric types).
OPERATION_IMAGE_GENERATION: Final = "image_generation"
OPERATION_IMAGE_EDIT: Final = "image.edit"
OPERATION_TRANSCRIPTION: Final = "transcription"
OPERATION_TRANSLATION: Final = "translation"
OPERATION_SPEECH: Final = "speech"
#: Video generation (the VIDEO metric type): creating a video job and retrieving it.
OPERATION_VIDEO_GENERATION: Final = "video_generation"
#: Per-modality usage (``gen_ai.usage.<modality>.<unit>``) and the request's image parameters.
GEN_AI_USAGE_IMAGE_COUNT: Final = "gen_ai.usage.image.count"
GEN_AI_USAGE_IMAGE_INPUT_TOKENS: Final = "gen_ai.usage.image.input_tokens"
GEN_AI_USAGE_IMAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.image.output_tokens"
GEN_AI_USAGE_TEXT_INPUT_TOKENS: Final = "gen_ai.usage.text.input_tokens"
GEN_AI_USAGE_TEXT_CHARACTERS: Final = "gen_ai.usage.text.characters"
GEN_AI_USAGE_AUDIO_SECONDS: Final = "gen_ai.usage.audio.seconds"
GEN_AI_USAGE_AUDIO_INPUT_TOKENS: Final = "gen_ai.usage.audio.input_tokens"
GEN_AI_USAGE_VIDEO_SECONDS: Final = "gen_ai.usage.video.seconds"
GEN_AI_USAGE_VIDEO_COUNT: Final = "gen_ai.usage.video.count"
GEN_AI_REQUEST_VIDEO_SIZE: Final = "gen_ai.request.video.size"
GEN_AI_REQUEST_VIDEO_SECONDS: Final = "gen_ai.request.video.seconds"
#: A video job's status when the span ended (queued, in_progress, completed, failed).
GEN_AI_RESPONSE_VIDEO_STATUS: Final = "gen_ai.response.video.status"
GEN_AI_REQUEST_IMAGE_SIZE: Final = "gen_ai.request.image.size"
GEN_AI_REQUEST_IMAGE_QUALITY: Final = "gen_ai.request.image.quality"
#: Images and documents sent as input (their tokens are part of ``gen_ai.usage.input_tokens``).
GEN_AI_REQUEST_IMAGE_COUNT: Final = "gen_ai.request.image.count"
GEN_AI_REQUEST_DOCUMENT_COUNT: Final = "gen_ai.request.document.count"
PROVIDER_OPENAI: Final = "openai"
PROVIDER_ANTHROPIC: Final = "anthropic"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"
OPENAI_API_CHAT_COMPLETIONS: Final = "chat_completions"
OPENAI_API_RESPONSES: Final = "responses"
OPENAI_API_EMBEDDINGS: Final = "embeddings"

# --- identity and tokenscale context (not part of the GenAI conventions) ------------------------

USER_ID: Final = "user.id"
USER_EMAIL: Final = "user.email"
TOKENSCALE_TENANT: Final = "tokenscale.tenant"
TOKENSCALE_META_PREFIX: Final = "tokenscale.meta."

# --- metrics (semconv gen-ai metrics; counters from the genai repo main branch) --------------

METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_USAGE_INPUT_TOKENS: Final = "gen_ai.client.inference.usage.input_tokens"
METRIC_USAGE_OUTPUT_TOKENS: Final = "gen_ai.client.inference.usage.output_tokens"
METRIC_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.client.inference.usage.cache_read.input_tokens"
METRIC_USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.client.inference.usage.cache_write.input_tokens"
METRIC_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.client.inference.usage.reasoning.output_tokens"

UNIT_TOKEN: Final = "{token}"
UNIT_SECONDS: Final = "s"

#: Advisory bucket boundaries of ``gen_ai.client.token.usage`` (semconv gen-ai-metrics.md).
TOKEN_USAGE_BUCKETS: Final[tuple[float, ...]] = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)

#: Advisory bucket boundaries of ``gen_ai.client.operation.duration`` (semconv gen-ai-metrics.md).
OPERATION_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)

#: Attribute keys allowed on metric points: low cardinality only (no ids, no fingerprints).
METRIC_ATTRIBUTE_KEYS: Final = frozenset(
    {
        GEN_AI_OPERATION_NAME,
        GEN_AI_PROVIDER_NAME,
        GEN_AI_REQUEST_MODEL,
        GEN_AI_RESPONSE_MODEL,
        ERROR_TYPE,
        USER_ID,
        USER_EMAIL,
        TOKENSCALE_TENANT,
    }
)

#: Schema of the conventions these names follow.
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.41.0"
