-- Read paths of the query APIs over usage_events (counted rows only): keyset pagination in time
-- order, lookups by request and conversation, metadata filters, and the classifications the
-- AI metrics API filters and reports by (tokenscale.api.ai_metrics).

-- Pages in time order, ties broken by dedupe_key: page boundaries are found by an index-only scan
-- (tool and operation are included so the default coding-assistant exclusion needs no heap fetch).
CREATE INDEX usage_events_read_time ON tokenscale.usage_events (tenant, time DESC, dedupe_key DESC)
    INCLUDE (tool, operation) WHERE counted;
-- transactionId / messageId lookups.
CREATE INDEX usage_events_read_request ON tokenscale.usage_events (tenant, request_id)
    WHERE counted AND request_id IS NOT NULL;
-- conversationId filters and the daily count of new conversations.
CREATE INDEX usage_events_read_conversation ON tokenscale.usage_events (tenant, conversation_id, time)
    WHERE counted AND conversation_id IS NOT NULL;
-- Metadata filters (meta[key]=value, botId, traceId, ...) as containment: attributes @> '{"k": "v"}'.
CREATE INDEX usage_events_read_attributes ON tokenscale.usage_events USING gin (attributes jsonb_path_ops)
    WHERE counted;

-- The modality of a usage event, from its GenAI operation name.
CREATE FUNCTION tokenscale.ai_metric_type(operation text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN operation IN ('audio', 'speech', 'text_to_speech', 'transcription', 'translation',
                           'audio.speech', 'audio.transcription', 'audio.translation') THEN 'AUDIO'
        WHEN operation IN ('image', 'images', 'image_generation', 'generate_image', 'image.generate',
                           'image.edit', 'image.variation') THEN 'IMAGE'
        WHEN operation IN ('video', 'video_generation', 'generate_video') THEN 'VIDEO'
        ELSE 'COMPLETION'
    END
$$;

-- The operation type of a usage event, from its GenAI operation name.
CREATE FUNCTION tokenscale.ai_operation_type(operation text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN operation IS NULL OR operation = 'chat' THEN 'CHAT'
        WHEN operation IN ('text_completion', 'generate_content') THEN 'GENERATE'
        WHEN operation = 'embeddings' THEN 'EMBED'
        WHEN operation = 'execute_tool' THEN 'TOOL_CALL'
        WHEN operation IN ('invoke_agent', 'create_agent') THEN 'AGENT'
        WHEN tokenscale.ai_metric_type(operation) <> 'COMPLETION' THEN tokenscale.ai_metric_type(operation)
        ELSE 'OTHER'
    END
$$;

-- Whether a tool is a coding assistant (excluded from AI metrics unless asked for).
CREATE FUNCTION tokenscale.is_coding_assistant(tool text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT tool IN ('claude_code', 'gemini_cli', 'codex', 'copilot', 'cursor')
$$;
