"""The writer alone, this tree beside a baseline revision, per signal, in one run.

What the counting model (per-request identity, the ledger of aggregate carriers) costs the writer,
without the receiver's decoding and mapping around it: for each signal of the ingest benchmark's
workloads (GenAI spans, Claude-Code-style log events, Claude-Code-style delta metrics), each tree
(``--baseline REV``: the ``src/`` of that git revision, extracted with ``git archive``; and this
tree) runs in a process of its own (``PYTHONPATH=<tree>/src``) that

1. migrates a fresh database with its own code,
2. maps the workload's exports with its own mapping (outside the timed part),
3. writes two warm-up exports, then the measured ones, one after the other, through its own
   ``UsageWriter`` on one connection (the writer's cost per row, not its concurrency),

and reports rows/s and CPU per row: the process's own (psycopg's encoding, the writer's Python)
and its PostgreSQL backend's (``/proc/<pid>/stat``). The trees run alternately, ``--repeat`` times
each (default 2), and the best of each is reported: other work on the machine only ever slows a run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Final

from benchmarks._common import REPO, BenchOutput, Context, run_in_tree
from benchmarks._servers import DbServer, database
from benchmarks.bench_ledger import baseline_tree

__all__ = ["NAME", "run"]

NAME: Final = "writer"

#: Run by a tree's own code: migrate, map, write; print one JSON line.
_WRITER: Final = r"""
import json, os, sys, time
url, signal, exports, repo = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.append(repo)  # benchmarks._workload, after the tree's own src
from benchmarks._workload import build_workload, parse
from tokenscale.mapping import map_request
from tokenscale.store.migrate import migrate
from tokenscale.store.writer import UsageWriter, open_pool

migrate(url)
workload = build_workload(signal, quick=False, seed=20261123)
results = [map_request(signal, parse(signal, workload.request(j)), "default") for j in range(exports + 2)]
pool = open_pool(url, min_size=1, max_size=1)
writer = UsageWriter(pool)
for r in results[:2]:
    writer.write(r)
with pool.connection() as conn:
    backend = conn.info.backend_pid
def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
rows = sum(len(r.events) for r in results[2:])
server0, client0, wall0 = cpu(backend), time.process_time(), time.perf_counter()
for r in results[2:]:
    writer.write(r)
wall = time.perf_counter() - wall0
client, server = time.process_time() - client0, cpu(backend) - server0
pool.close()
print(json.dumps({"rows": rows, "wall": wall, "client": client, "server": server}))
"""


def _measure(src: Path, url: str, signal: str, exports: int) -> dict[str, Any]:
    return run_in_tree(src, _WRITER, [url, signal, str(exports), str(REPO)], "writer")


def run(ctx: Context, server: DbServer) -> BenchOutput:
    out = BenchOutput()
    rev = ctx.baseline
    exports = 4 if ctx.quick else 20
    repeat = 1 if ctx.quick else max(2, ctx.repeat)
    best: dict[tuple[str, str], dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path]] = []
        if rev:
            trees.append((f"baseline {rev}", stack.enter_context(baseline_tree(rev)) / "src"))
        trees.append(("this tree", REPO / "src"))
        for signal in ("traces", "logs", "metrics"):
            for attempt in range(repeat):
                for label, src in trees:
                    ctx.log(f"[writer/{server.backend}] {signal}, {label} ({attempt + 1}/{repeat})")
                    with database(server, "writer", migrate=False) as url:
                        r = _measure(src, url, signal, exports)
                    r["us_per_row"] = (r["client"] + r["server"]) / r["rows"] * 1e6
                    key = (signal, label)
                    if key not in best or r["us_per_row"] < best[key]["us_per_row"]:
                        best[key] = r
    for (signal, label), r in best.items():
        out.rows.append(
            {
                "backend": server.backend,
                "signal": signal,
                "tree": label,
                "rows": r["rows"],
                "rows/s": round(r["rows"] / r["wall"]),
                "client us/row": round(r["client"] / r["rows"] * 1e6, 1),
                "PostgreSQL us/row": round(r["server"] / r["rows"] * 1e6, 1),
                "CPU us/row": round(r["us_per_row"], 1),
            }
        )
    if rev:
        for signal in ("traces", "logs", "metrics"):
            before, after = best[(signal, f"baseline {rev}")], best[(signal, "this tree")]
            out.notes.append(
                f"{server.backend} {signal}: CPU per row {before['us_per_row']:.0f} -> "
                f"{after['us_per_row']:.0f} us (x{after['us_per_row'] / before['us_per_row']:.2f}); "
                f"rows/s {before['rows'] / before['wall']:,.0f} -> {after['rows'] / after['wall']:,.0f}"
            )
    out.data = {"exports": exports, "repeat": repeat, "baseline": rev, "best": [
        {"signal": s, "tree": t, **r} for (s, t), r in best.items()
    ]}  # fmt: skip
    return out
