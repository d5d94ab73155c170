-- Daily AI tool metrics in DX's record shape, from both sources: derived from OTLP
-- (source = 'otlp') and pushed through aiToolMetrics.push / pushAll (source = 'push').
CREATE VIEW tokenscale.ai_tool_daily_metrics AS
SELECT * FROM tokenscale.ai_tool_daily_metrics_otlp
UNION ALL
SELECT * FROM tokenscale.ai_tool_daily_metrics_pushed;
