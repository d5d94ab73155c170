"""The receiver's Python per item, stage by stage, this tree beside a baseline revision, in one run.

No transport and no database: for each signal of the ingest benchmark's workloads (GenAI spans with
20 attributes and 8 resource attributes, Claude-Code-style log events, Claude-Code-style delta
metrics), each tree (``--baseline REV``: the ``src/`` of that git revision, extracted with ``git
archive``; and this tree) runs in a process of its own (``PYTHONPATH=<tree>/src``) that takes the
same exports through its own code, one core, CPU time (``time.process_time``) per stage:

1. **decode**: ``Export*ServiceRequest.FromString`` of the request bytes;
2. **map + limits**: the pipeline's mapping as ``tokenscale serve`` composes it
   (``ExportPipeline(UsageWriter(...))``: its options, the writer's needs, the value limits);
3. **encode**: the writer's COPY rows of the events (``_event_rows``: columns, kept attributes, JSON).

Each tree runs ``--repeat`` times (default 3), alternately, and the best round of each stage is
reported: other work on the machine only ever slows a round. The numbers are microseconds per item
(span, log record, metric point) and per stored row.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Final

from benchmarks._common import REPO, BenchOutput, Context, run_in_tree
from benchmarks._servers import DbServer
from benchmarks.bench_ledger import baseline_tree

__all__ = ["NAME", "run"]

NAME: Final = "pipeline"

#: Run by a tree's own code: decode, map, encode the workload's exports; print one JSON line.
_STAGES: Final = r"""
import json, sys, time
signal, quick, rounds, repo = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
sys.path.append(repo)  # benchmarks._workload, after the tree's own src
from benchmarks._workload import build_workload, parse
from tokenscale.pipeline import ExportPipeline
from tokenscale.store import writer

workload = build_workload(signal, quick=quick, seed=20261123)
payloads = [t.instance(1000 + k) for k, t in enumerate(workload.templates)]
items = sum(t.items for t in workload.templates)
pipeline = ExportPipeline(writer.UsageWriter(None))  # no pool: nothing here touches a database
best = {}
for _ in range(rounds):
    t0 = time.process_time()
    requests = [parse(signal, p) for p in payloads]
    t1 = time.process_time()
    results = [pipeline._map(signal, r, "default") for r in requests]
    t2 = time.process_time()
    for r in results:
        writer._event_rows(r.events, [True] * len(r.events))
    t3 = time.process_time()
    for stage, seconds in (("decode", t1 - t0), ("map", t2 - t1), ("encode", t3 - t2)):
        best[stage] = min(best.get(stage, seconds), seconds)
rows = sum(len(r.events) + len(r.activity) for r in results)
print(json.dumps({"items": items, "rows": rows, **best}))
"""

_SIGNALS: Final = ("traces", "logs", "metrics")


def _measure(src: Path, signal: str, quick: bool, rounds: int) -> dict[str, Any]:
    return run_in_tree(src, _STAGES, [signal, "1" if quick else "0", str(rounds), str(REPO)], "pipeline")


def run(ctx: Context, server: DbServer) -> BenchOutput:
    out = BenchOutput()
    rev = ctx.baseline
    rounds = 1 if ctx.quick else 5
    repeat = 1 if ctx.quick else max(3, ctx.repeat)
    best: dict[tuple[str, str], dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path]] = []
        if rev:
            trees.append((f"baseline {rev}", stack.enter_context(baseline_tree(rev)) / "src"))
        trees.append(("this tree", REPO / "src"))
        for signal in _SIGNALS:
            for attempt in range(repeat):
                for label, src in trees:
                    ctx.log(f"[pipeline] {signal}, {label} ({attempt + 1}/{repeat})")
                    r = _measure(src, signal, ctx.quick, rounds)
                    kept = best.setdefault((signal, label), r)
                    for stage in ("decode", "map", "encode"):
                        kept[stage] = min(kept[stage], r[stage])
    for (signal, label), r in best.items():
        total = r["decode"] + r["map"] + r["encode"]
        out.rows.append(
            {
                "signal": signal,
                "tree": label,
                "items": r["items"],
                "rows": r["rows"],
                "decode us/item": round(r["decode"] / r["items"] * 1e6, 2),
                "map + limits us/item": round(r["map"] / r["items"] * 1e6, 2),
                "encode us/item": round(r["encode"] / r["items"] * 1e6, 2),
                "total us/item": round(total / r["items"] * 1e6, 2),
                "total us/row": round(total / r["rows"] * 1e6, 2),
            }
        )
    if rev:
        for signal in _SIGNALS:
            before, after = best[(signal, f"baseline {rev}")], best[(signal, "this tree")]
            b = (before["decode"] + before["map"] + before["encode"]) / before["items"] * 1e6
            a = (after["decode"] + after["map"] + after["encode"]) / after["items"] * 1e6
            out.notes.append(
                f"{signal}: decode + map + limits + encode {b:.1f} -> {a:.1f} us/item (x{a / b:.2f})"
            )
    out.data = {"rounds": rounds, "repeat": repeat, "baseline": rev, "best": [
        {"signal": s, "tree": t, **r} for (s, t), r in best.items()
    ]}  # fmt: skip
    return out
