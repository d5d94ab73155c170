"""Receiver memory over a longer run: does RSS stay flat? (``--soak SECONDS``; skipped without it.)

GenAI spans over gRPC, 4 streams, for SECONDS, into a fresh database, exactly as in
:mod:`benchmarks.bench_ingest` but bounded by time instead of by request count. The receiver's RSS is
sampled every second; reported: RSS after 10% of the run, at half time and at the end, the peak, and
the growth over the second half (what a leak would show).
"""

from __future__ import annotations

from typing import Any, Final

from benchmarks._common import BenchOutput, Context
from benchmarks._servers import DbServer
from benchmarks.bench_ingest import IngestResult, base_ns_today, measure_ingest, sizes_for

__all__ = ["NAME", "run", "summarize"]

NAME: Final = "soak"


def summarize(result: IngestResult) -> dict[str, Any]:
    timeline = result.rss_timeline
    n = len(timeline)
    at10 = timeline[n // 10][1] if n else 0.0
    mid = timeline[n // 2][1] if n else 0.0
    end = timeline[-1][1] if n else 0.0
    return {
        "seconds": result.seconds,
        "rows_per_s": result.rows_per_s,
        "rss_at_10pct_mib": at10,
        "rss_mid_mib": mid,
        "rss_end_mib": end,
        "rss_peak_mib": result.receiver_rss_peak_mib,
        "second_half_growth_mib": end - mid,
        "rows_ok": result.rows_in_db == result.rows_expected and result.errors == 0,
        "timeline": timeline,
    }


def run(ctx: Context, server: DbServer) -> BenchOutput:
    if ctx.soak_seconds <= 0:
        return BenchOutput(skipped="pass --soak SECONDS to run it")
    ctx.log(f"[soak/{server.backend}] traces over grpc for {ctx.soak_seconds:.0f} s")
    result = measure_ingest(
        ctx, server, "traces", "grpc", sizes_for(ctx), base_ns_today(), duration=ctx.soak_seconds
    )
    s = summarize(result)
    return BenchOutput(
        rows=[
            {
                "backend": server.backend,
                **({"receiver processes": result.workers} if result.workers > 1 else {}),
                "seconds": round(s["seconds"]),
                "spans/s": s["rows_per_s"],
                "RSS @10% MiB": s["rss_at_10pct_mib"],
                "RSS @50% MiB": s["rss_mid_mib"],
                "RSS end MiB": s["rss_end_mib"],
                "peak MiB": s["rss_peak_mib"],
                "2nd-half growth MiB": s["second_half_growth_mib"],
                "rows ok": s["rows_ok"],
            }
        ],
        data=s,
    )
