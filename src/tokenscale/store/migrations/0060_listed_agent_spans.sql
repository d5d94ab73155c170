-- Spans of agent, tool and workflow operations (source 'gen_ai.agent_span') are stored as listed
-- rows: never counted (they aggregate requests counted elsewhere), but listed by the AI metrics API
-- as operation types AGENT and TOOL_CALL. The listing reads them as the second branch of a
-- UNION ALL beside the counted rows (tokenscale.api.ai_metrics); this index is that branch's
-- read path, as usage_events_read_time is the counted rows' (same key and included columns, so
-- ordered pages merge the two index orders and stay index-only).
CREATE INDEX usage_events_read_listed ON tokenscale.usage_events (tenant, time DESC, dedupe_key DESC)
    INCLUDE (tool, operation) WHERE source = 'gen_ai.agent_span' AND NOT counted;
