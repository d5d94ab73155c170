-- The refresh policies of usage_daily and usage_hourly span the default late-data horizon (31 days,
-- plus the day it starts in) instead of 3 days, and stop an hour short of now. `tokenscale serve`
-- sets them again from its settings (late_data_days); `migrate` materializes the history older than
-- the window (tokenscale.store.refresh.materialize_history), and the service's refresher refreshes
-- the buckets its exports touch. The policies first run a schedule interval after they are set
-- (migrate has just materialized everything stored), not at once.
SELECT remove_continuous_aggregate_policy('tokenscale.usage_daily', if_exists => true);
SELECT add_continuous_aggregate_policy('tokenscale.usage_daily',
    start_offset      => INTERVAL '32 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes',
    initial_start     => now() + INTERVAL '15 minutes');

SELECT remove_continuous_aggregate_policy('tokenscale.usage_hourly', if_exists => true);
SELECT add_continuous_aggregate_policy('tokenscale.usage_hourly',
    start_offset      => INTERVAL '32 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes',
    initial_start     => now() + INTERVAL '15 minutes');
