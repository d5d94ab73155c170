"""Run the benchmarks: ``.venv/bin/python -m benchmarks.run [--quick] [--backend ...] [--only NAME]``.

Starts its own database servers (tests/dbservers.py: PostgreSQL 15 and TimescaleDB Apache in the
Debian trixie root), runs each benchmark on each back end, prints a table per benchmark and writes
``benchmarks/results/<name>.json``. Numbers are reported as ratios measured in the same run; nothing
here asserts a timing. ``--quick`` runs everything tiny (CI smoke test, well under a minute).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from benchmarks._common import BenchOutput, Context, format_table, machine_info, write_json
from benchmarks._servers import BACKENDS, BackendName, DbServer, start_server

__all__ = ["BENCHMARKS", "main"]

#: Benchmark name -> module (each has ``NAME`` and ``run(ctx, server) -> BenchOutput``).
BENCHMARKS: dict[str, str] = {
    "ingest": "benchmarks.bench_ingest",
    "reports": "benchmarks.bench_reports",
    "budget": "benchmarks.bench_budget",
    "soak": "benchmarks.bench_soak",
    "writer": "benchmarks.bench_writer",
    "ledger": "benchmarks.bench_ledger",
    "alerts": "benchmarks.bench_alerts",
    "pipeline": "benchmarks.bench_pipeline",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test for CI")
    parser.add_argument(
        "--backend", choices=[*BACKENDS, "both"], default="both", help="which database(s) (default both)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help="run only NAME (repeatable)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="soak: run SECONDS watching the receiver's RSS (skipped without it)",
    )
    parser.add_argument("--profile", action="store_true", help="ingest: py-spy the receiver (GIL samples)")
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="ingest: N paired runs, medians (default 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="ingest and soak: N receiver processes sharing the ports, as `serve --workers N` (default 1)",
    )
    parser.add_argument(
        "--report-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="reports: data set size relative to the full 2,000 users x 1 year (default 1.0)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="ledger, writer: measure the src/ of git revision REV beside this tree (e.g. main)",
    )
    parser.add_argument(
        "--community-url",
        metavar="URL",
        help="ledger: a TimescaleDB community server for compressed sizes "
        "(default: TOKENSCALE_TEST_TIMESCALEDB_URL)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ctx = Context(
        quick=args.quick,
        soak_seconds=args.soak,
        profile=args.profile,
        repeat=max(1, args.repeat),
        report_scale=args.report_scale,
        workers=max(1, args.workers),
        baseline=args.baseline,
        community_url=args.community_url,
    )
    names = args.only or list(BENCHMARKS)
    modules: dict[str, ModuleType] = {name: importlib.import_module(BENCHMARKS[name]) for name in names}
    backends: list[BackendName] = list(BACKENDS) if args.backend == "both" else [args.backend]
    outputs: dict[str, dict[str, BenchOutput]] = {name: {} for name in names}
    servers: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    if load_start > 1.5:
        ctx.log(
            f"note: load average {load_start:.1f} on {os.cpu_count()} cores: other work will skew the numbers"
        )
    for backend in backends:
        ctx.log(f"starting {backend} ...")
        with start_server(backend) as server:
            servers[backend] = _server_info(server)
            ctx.log(f"{backend}: {server.label}")
            for name, module in modules.items():
                t0 = time.monotonic()
                outputs[name][backend] = module.run(ctx, server)
                ctx.log(f"[{name}/{backend}] done in {time.monotonic() - t0:.1f} s")
    machine = machine_info()
    machine["load_average_1m_at_start"] = round(load_start, 2)
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
          f"commit {machine['commit']}; mode {'quick' if ctx.quick else 'full'}; "
          f"total {time.monotonic() - started:.0f} s; load average {load_start:.1f} at start, "
          f"{machine['load_average_1m']:.1f} at end\n")  # fmt: skip
    for name, by_backend in outputs.items():
        rows = [row for out in by_backend.values() for row in out.rows]
        print(format_table(name, rows))
        for backend_name, out in by_backend.items():
            if out.skipped:
                print(f"- {backend_name}: skipped: {out.skipped}")
            for note in out.notes:
                print(f"- {note}")
        print()
        path = write_json(
            name,
            {
                "benchmark": name,
                "mode": "quick" if ctx.quick else "full",
                "machine": machine,
                "servers": servers,
                "options": {
                    "soak": ctx.soak_seconds,
                    "repeat": ctx.repeat,
                    "report_scale": ctx.report_scale,
                    "workers": ctx.workers,
                },
                "results": {
                    b: {"rows": out.rows, "notes": out.notes, "skipped": out.skipped, "data": out.data}
                    for b, out in by_backend.items()
                },
            },
        )
        print(f"(written to {path})\n")
    return 0


def _server_info(server: DbServer) -> dict[str, Any]:
    return {"label": server.label, "version": server.version, "timescaledb": server.timescaledb}


if __name__ == "__main__":
    sys.exit(main())
