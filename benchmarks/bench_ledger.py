"""Bytes per stored request and CPU per span, this tree beside a baseline tree, in one run.

For each tree (``--baseline REV``: the ``src/`` of that git revision, extracted to a temporary
directory; then this tree), on a fresh database migrated by that tree's own code:

1. a receiver of that tree runs in its own process (``open_pool`` + ``UsageWriter`` +
   ``ExportPipeline`` + ``Receiver``, as ``tokenscale serve`` composes them, with that tree's
   defaults) and the ingest benchmark's load generator sends it GenAI spans over gRPC (20 attributes
   and 8 resource attributes each, 4 streams, 120 exports of ~770 spans after 2 warm-up exports per
   stream);
2. **CPU per span**: the receiver's and PostgreSQL's CPU seconds over the timed window (from
   ``/proc/<pid>/stat`` utime + stime: the receiver process, and the postmaster with its live and
   reaped children), divided by the spans sent in it; and spans/s;
3. **bytes per request**: once the receiver stopped, the sizes of ``usage_events`` (its partitions or
   chunks) and, where present, the resource dimension (``usage_resources``): heap
   (``pg_relation_size``), TOAST and indexes (``pg_indexes_size``), and the total
   (``pg_total_relation_size``), divided by the rows stored;
4. with ``--community-url`` (default: ``TOKENSCALE_TEST_TIMESCALEDB_URL``, a TimescaleDB community
   server), the same spans are sent to a receiver on a fresh database there, every chunk is then
   compressed and the columnstore's size read (``hypertable_columnstore_stats`` / chunk sizes):
   compressed bytes per request. Its CPU is not measured (the server's processes are not ours).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from benchmarks._common import REPO, RESULTS_DIR, BenchOutput, Context, cpu_seconds, postgres_cpu_seconds
from benchmarks._servers import DbServer, database
from benchmarks.bench_ingest import (
    GenArgs,
    _profile_note,
    _start_py_spy,
    _stop_py_spy,
    base_ns_today,
    load_generator,
    sizes_for,
)

__all__ = ["NAME", "LedgerResult", "measure_tree", "run"]

NAME: Final = "ledger"

#: The receiver, run by a tree's own code (``PYTHONPATH=<tree>/src``): migrate, serve on ephemeral
#: ports, print them, stop when stdin closes or says so.
_RECEIVER: Final = r"""
import asyncio, logging, sys, threading
logging.basicConfig(filename=sys.argv[2], level=logging.WARNING)
from tokenscale.store import migrate
from tokenscale.mapping import MappingOptions
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store.writer import UsageWriter, open_pool

url = sys.argv[1]
migrate(url)
pool = open_pool(url)
pool.wait(timeout=30)
pipeline = ExportPipeline(UsageWriter(pool), MappingOptions())

async def serve():
    receiver = Receiver(pipeline, "127.0.0.1", grpc_port=0, http_port=0)
    await receiver.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    def wait():
        sys.stdin.readline()
        loop.call_soon_threadsafe(stop.set)
    threading.Thread(target=wait, daemon=True).start()
    print(receiver.grpc_port, flush=True)
    await stop.wait()
    await receiver.stop()

asyncio.run(serve())
pool.close()
print("stopped", flush=True)
"""

#: Per-table sizes of usage_events (its partitions or chunks, or itself when it holds the rows) and
#: of the resource dimension where the tree has one.
_SIZES: Final = """
WITH parts AS (
    SELECT c.oid, c.reltoastrelid FROM pg_class c
    WHERE c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'tokenscale.usage_events'::regclass)
       OR (c.oid = 'tokenscale.usage_events'::regclass AND c.relkind = 'r')
       OR (c.oid = to_regclass('tokenscale.usage_resources'))
)
SELECT coalesce(sum(pg_relation_size(oid)), 0)::bigint,
       coalesce(sum(CASE WHEN reltoastrelid <> 0
                         THEN pg_total_relation_size(reltoastrelid) ELSE 0 END), 0)::bigint,
       coalesce(sum(pg_indexes_size(oid)), 0)::bigint,
       coalesce(sum(pg_total_relation_size(oid)), 0)::bigint
FROM parts
"""


@dataclass
class LedgerResult:
    tree: str
    backend: str
    spans: int
    seconds: float
    spans_per_s: float
    receiver_us_per_span: float
    postgres_us_per_span: float
    rows: int
    heap_bytes: int
    toast_bytes: int
    index_bytes: int
    total_bytes: int
    compressed_bytes: int | None = None
    compressed_rows: int | None = None
    #: Exports refused (e.g. by admission control: the generator does not retry); not in ``spans``.
    errors: int = 0
    error_samples: tuple[str, ...] = ()
    #: With ``--profile``: where the receiver's GIL-holding samples went (py-spy).
    profile: dict[str, Any] | None = None

    @property
    def cpu_us_per_span(self) -> float:
        return self.receiver_us_per_span + self.postgres_us_per_span

    def per_row(self, value: int | None) -> float | None:
        return None if value is None or not self.rows else value / self.rows


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    """``src/`` of git revision ``rev``, extracted to a temporary directory (no worktree)."""
    with tempfile.TemporaryDirectory(prefix="tokenscale-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


@contextlib.contextmanager
def _receiver(tree: Path, url: str, log_file: Path) -> Iterator[tuple[int, int]]:
    """A receiver of ``tree`` on ``url``: (pid, gRPC port). Stopped (rows committed) at the end."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, url, str(log_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # not the repository: PYTHONPATH alone says which tree is imported
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the receiver of {tree} did not start (log: {log_file})")
        yield proc.pid, int(line)
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "stopped":
            raise RuntimeError(f"the receiver of {tree} did not stop cleanly (log: {log_file})")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _community_database(url: str, prefix: str) -> Iterator[str]:
    name = f"bench_{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _sizes(url: str) -> tuple[int, tuple[int, int, int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone()
        sizes = conn.execute(_SIZES).fetchone()
    assert rows is not None and sizes is not None
    return int(rows[0]), (int(sizes[0]), int(sizes[1]), int(sizes[2]), int(sizes[3]))


def _compressed(url: str) -> tuple[int, int]:
    """Compress every chunk of usage_events; (bytes of the compressed chunks incl. indexes and
    TOAST, plus the resource dimension where there is one; rows compressed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        enabled = conn.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = 'tokenscale' AND hypertable_name = 'usage_events'"
        ).fetchone()
        if enabled != (True,):
            conn.execute(
                "ALTER TABLE tokenscale.usage_events SET (timescaledb.enable_columnstore = true, "
                "timescaledb.segmentby = 'tenant', timescaledb.orderby = 'time DESC')"
            )
        conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('tokenscale.usage_events') c"
        )
        stats = conn.execute(
            "SELECT coalesce(sum(after_compression_total_bytes), 0)::bigint FROM "
            "chunk_compression_stats('tokenscale.usage_events')"
        ).fetchone()
        rows = conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone()
        dim = conn.execute(
            "SELECT coalesce(pg_total_relation_size(to_regclass('tokenscale.usage_resources')), 0)::bigint"
        ).fetchone()
    assert stats is not None and rows is not None and dim is not None
    return int(stats[0]) + int(dim[0]), int(rows[0])


def _send(
    ctx: Context,
    tree: Path,
    url: str,
    label: str,
    base_ns: int,
    postmaster_pid: int | None,
    profile: bool = False,
) -> tuple[dict[str, Any], float, float, dict[str, Any] | None]:
    """Spans from the load generator to a receiver of ``tree``: (the generator's report, the
    receiver's and PostgreSQL's CPU seconds over the timed window, and with ``profile`` py-spy's
    summary of the receiver's GIL-holding samples in it)."""
    sizes = sizes_for(ctx)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"ledger-{label}.log"
    log_file.unlink(missing_ok=True)
    with _receiver(tree, url, log_file) as (pid, port):
        args = GenArgs(
            signal="traces",
            transport="grpc",
            port=port,
            streams=sizes.streams,
            requests=sizes.requests,
            warmup=sizes.warmup,
            quick=ctx.quick,
            base_ns=base_ns,
        )
        with load_generator(args) as gen:
            spy = _start_py_spy(pid, f"ledger-{label}") if profile else None
            r0, p0 = cpu_seconds(pid), postgres_cpu_seconds(postmaster_pid) if postmaster_pid else 0.0
            gen.go()
            report = gen.result(timeout=1800)
            r1, p1 = cpu_seconds(pid), postgres_cpu_seconds(postmaster_pid) if postmaster_pid else 0.0
            summary = _stop_py_spy(spy, report["t_end"] - report["t_start"]) if spy else None
    return report, r1 - r0, p1 - p0, summary


def measure_tree(
    ctx: Context, server: DbServer, tree: Path, label: str, community_url: str | None
) -> LedgerResult:
    base_ns = base_ns_today()
    with database(server, f"ledger_{label}", migrate=False) as url:
        report, receiver_cpu, postgres_cpu, profile = _send(
            ctx, tree, url, f"{server.backend}-{label}", base_ns, server.postmaster_pid, ctx.profile
        )
        rows, (heap, toast, index, total) = _sizes(url)
    seconds = report["t_end"] - report["t_start"]
    spans = report["items"]
    result = LedgerResult(
        tree=label,
        backend=server.backend,
        spans=spans,
        seconds=seconds,
        spans_per_s=spans / seconds,
        receiver_us_per_span=1e6 * receiver_cpu / spans,
        postgres_us_per_span=1e6 * postgres_cpu / spans,
        rows=rows,
        heap_bytes=heap,
        toast_bytes=toast,
        index_bytes=index,
        total_bytes=total,
        errors=report["errors"],
        error_samples=tuple(report["error_samples"]),
        profile=profile,
    )
    if community_url:
        with _community_database(community_url, f"ledger_{label}") as curl:
            _send(ctx, tree, curl, f"community-{label}", base_ns, None)
            result.compressed_bytes, result.compressed_rows = _compressed(curl)
    return result


def run(ctx: Context, server: DbServer) -> BenchOutput:
    out = BenchOutput()
    community_url = ctx.community_url or os.environ.get("TOKENSCALE_TEST_TIMESCALEDB_URL") or None
    results: list[LedgerResult] = []
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path]] = []
        if ctx.baseline:
            trees.append((f"baseline {ctx.baseline}", stack.enter_context(baseline_tree(ctx.baseline))))
        trees.append(("this tree", REPO))
        for label, tree in trees:
            ctx.log(f"[ledger/{server.backend}] {label}: spans over gRPC")
            results.append(measure_tree(ctx, server, tree, label.split()[0], community_url))
    for res, (label, _) in zip(results, trees, strict=True):
        out.rows.append(
            {
                "backend": server.backend,
                "tree": label,
                "spans/s": res.spans_per_s,
                "receiver us/span": res.receiver_us_per_span,
                "PostgreSQL us/span": res.postgres_us_per_span,
                "CPU us/span": res.cpu_us_per_span,
                "rows": res.rows,
                "heap B/row": res.per_row(res.heap_bytes),
                "TOAST B/row": res.per_row(res.toast_bytes),
                "index B/row": res.per_row(res.index_bytes),
                "total B/row": res.per_row(res.total_bytes),
                "compressed B/row (community)": (
                    None
                    if res.compressed_bytes is None or not res.compressed_rows
                    else res.compressed_bytes / res.compressed_rows
                ),
            }
        )
    for res in results:
        if res.profile and res.profile.get("samples"):
            out.notes.append(_profile_note(f"{server.backend} {res.tree} receiver", res.profile))
        if res.errors:
            out.notes.append(
                f"{server.backend} {res.tree}: {res.errors} export(s) refused and not counted in the "
                f"spans sent: {list(res.error_samples)}"
            )
    if len(results) == 2:
        before, after = results
        out.notes.append(
            f"{server.backend}: bytes per request {before.per_row(before.total_bytes):,.0f} -> "
            f"{after.per_row(after.total_bytes):,.0f}; CPU per span {before.cpu_us_per_span:.0f} -> "
            f"{after.cpu_us_per_span:.0f} us (receiver {before.receiver_us_per_span:.0f} -> "
            f"{after.receiver_us_per_span:.0f}, PostgreSQL {before.postgres_us_per_span:.0f} -> "
            f"{after.postgres_us_per_span:.0f}); spans/s {before.spans_per_s:,.0f} -> "
            f"{after.spans_per_s:,.0f}"
        )
    out.data = {"results": [asdict(r) for r in results], "community_url_used": bool(community_url)}
    return out
