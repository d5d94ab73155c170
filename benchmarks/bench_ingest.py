"""Ingest ceiling ratio: the OTLP receiver against a raw binary COPY of the same rows, same database.

For each signal (GenAI spans, Claude-Code-style delta metrics, Claude-Code-style log events) and
each transport (gRPC, HTTP/protobuf):

1. **ingest**: a tokenscale receiver runs in its own process (``open_pool`` + ``UsageWriter`` +
   ``ExportPipeline`` + ``Receiver``, as ``tokenscale serve`` composes them) on a fresh, migrated
   database. A separate load-generator process sends pre-serialized exports (see
   :mod:`benchmarks._workload`) over several concurrent streams (one connection each); each export is
   acknowledged only after its rows are committed. Rate = usage rows committed / wall time.
2. **ceiling**: the very same rows (the pure mapping run on the same request bytes, outside the timed
   part) are binary-COPYed straight into ``tokenscale.usage_events`` of another fresh database, one
   transaction per export-sized batch, by 1 and by 2 parallel connections; the best is the ceiling.

The ratio ingest/ceiling is what matters: both are measured minutes apart in one run on one server.
Also reported: items/s (spans, data points, log records), export latency, CPU cores used by the
receiver and PostgreSQL, and peak RSS of the receiver (``bench_soak`` watches RSS over a longer run).
In between, **writer alone** writes the same pre-mapped results through tokenscale's ``UsageWriter``
(no decoding, no mapping, no transport) and the **COPY w/o read idx** ceiling leaves out the indexes
of migration 0013: together they say where the gap between ingest and the ceiling is.
Offline, per-stage costs of the Python pipeline (decode, mapping, row encoding) show what one core
can do at most; ``--profile`` attaches py-spy to the receiver and names the hot functions.

``--workers N`` runs the receiver as N processes sharing both ports with SO_REUSEPORT, as
``tokenscale serve --workers N`` does; the generator reconnects each stream until stream ``s`` reached
worker ``s mod N`` (the kernel picks a worker per connection, so 4 streams over 2 workers would often
be 3 + 1), and the receiver's CPU and RSS are the sums over the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import itertools
import logging
import multiprocessing as mp
import os
import shutil
import signal as signals
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from benchmarks._common import (
    RESULTS_DIR,
    BenchOutput,
    Context,
    cpu_seconds,
    median,
    percentile,
    postgres_cpu_seconds,
    rss_kib,
)
from benchmarks._servers import DbServer, database
from benchmarks._workload import ITEM_NAMES, SIGNALS, WARMUP_BASE, Workload, build_workload, parse
from tokenscale.mapping import MappingResult, map_request
from tokenscale.mapping.model import Signal
from tokenscale.store.writer import RECONCILED

__all__ = [
    "NAME",
    "GenArgs",
    "IngestResult",
    "LoadGenerator",
    "Sizes",
    "base_ns_today",
    "load_generator",
    "measure_ingest",
    "run",
    "serving",
    "sizes_for",
]

NAME: Final = "ingest"
#: With several receiver processes: which process a connection reached (gRPC method, HTTP path).
_PID_METHOD: Final = "/tokenscale.bench.Worker/Pid"
_PID_PATH: Final = "/bench/pid"
TRANSPORTS: Final = ("grpc", "http")
_GRPC_METHODS: Final[dict[Signal, str]] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
#: The origin of binary timestamptz values (the COPY rows' times).
_PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Sizes:
    requests: int
    streams: int
    warmup: int


def sizes_for(ctx: Context) -> Sizes:
    if ctx.quick:
        return Sizes(requests=6, streams=2, warmup=1)
    return Sizes(requests=120, streams=4, warmup=2)


# -- the receiver process --------------------------------------------------------------------------


def _add_pid_service(server: Any) -> None:
    """A gRPC method answering this process's pid (raw bytes in, decimal bytes out)."""
    import grpc  # noqa: PLC0415

    async def pid(request: bytes, context: Any) -> bytes:
        return str(os.getpid()).encode()

    handler = grpc.method_handlers_generic_handler(
        "tokenscale.bench.Worker", {"Pid": grpc.unary_unary_rpc_method_handler(pid)}
    )
    server.add_generic_rpc_handlers((handler,))


def _receiver_main(
    url: str, log_file: str, grpc_port: int, http_port: int, reuse_port: bool, control: Connection
) -> None:
    """Serve OTLP into ``url`` the way ``tokenscale serve`` does, until told to stop.

    ``reuse_port``: bind with SO_REUSEPORT as a worker of ``tokenscale serve --workers N`` does, and
    answer :data:`_PID_METHOD` / :data:`_PID_PATH` so that the generator can spread its streams."""
    logging.basicConfig(
        filename=log_file, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from tokenscale.mapping import MappingOptions  # noqa: PLC0415
    from tokenscale.pipeline import ExportPipeline  # noqa: PLC0415
    from tokenscale.receiver.server import Receiver  # noqa: PLC0415
    from tokenscale.store.writer import UsageWriter, open_pool  # noqa: PLC0415

    pool = open_pool(url)
    pool.wait(timeout=30)
    pipeline = ExportPipeline(UsageWriter(pool), MappingOptions())

    async def serve() -> None:
        receiver = Receiver(
            pipeline,
            "127.0.0.1",
            grpc_port=grpc_port,
            http_port=http_port,
            reuse_port=reuse_port,
            grpc_services=[_add_pid_service] if reuse_port else (),
        )
        if reuse_port:
            from starlette.requests import Request  # noqa: PLC0415
            from starlette.responses import PlainTextResponse, Response  # noqa: PLC0415
            from starlette.routing import Route  # noqa: PLC0415

            async def pid(request: Request) -> Response:
                return PlainTextResponse(str(os.getpid()))

            receiver.http_app.router.routes.append(Route(_PID_PATH, pid, methods=["GET"]))
        await receiver.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wait_for_stop() -> None:
            with contextlib.suppress(EOFError):
                control.recv()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_stop, daemon=True).start()
        control.send(("ports", receiver.grpc_port, receiver.http_port))
        await stop.wait()
        await receiver.stop()

    try:
        asyncio.run(serve())
    finally:
        pool.close()
    control.send(("stopped",))


# -- the load-generator process --------------------------------------------------------------------


@dataclass(frozen=True)
class GenArgs:
    signal: Signal
    transport: str
    port: int
    streams: int
    requests: int
    warmup: int
    quick: bool
    base_ns: int
    #: > 0: send until this many seconds have passed instead of ``requests`` requests.
    duration: float = 0.0
    #: > 0: at most this many exports per second over all streams (export j is not sent before
    #: start + j / rate; a stream that falls behind sends at once). 0: as fast as acknowledged.
    rate: float = 0.0
    #: Added to every request counter (warm-up ones too): runs against one database with different
    #: offsets send distinct records (the same counter is the same record, which dedupe drops).
    first_counter: int = 0
    #: The pids of several receiver processes sharing the port: stream s is reconnected until its
    #: connection reached ``worker_pids[s % len(worker_pids)]``. Empty: one receiver.
    worker_pids: tuple[int, ...] = ()


class _Sender:
    """One stream: its own gRPC channel or HTTP keep-alive connection."""

    def __init__(self, args: GenArgs) -> None:
        self.args = args
        self._channel: Any = None
        self._http: http.client.HTTPConnection | None = None
        if args.transport == "grpc":
            import grpc  # noqa: PLC0415

            self._grpc = grpc
            self._channel = grpc.insecure_channel(
                f"127.0.0.1:{args.port}",
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.use_local_subchannel_pool", 1),  # a connection per stream
                ],
            )
            # No serializers: the request is already bytes, the response is returned as bytes.
            self._call = self._channel.unary_unary(_GRPC_METHODS[args.signal])
        else:
            self._http = http.client.HTTPConnection("127.0.0.1", args.port, timeout=120)

    def send(self, payload: bytes) -> str | None:
        """Send one export; None on success, else what went wrong."""
        if self._http is None:
            try:
                response = self._call(payload, timeout=120)
            except self._grpc.RpcError as exc:
                return f"gRPC {exc.code().name}: {exc.details()}"
            return _partial_failure(self.args.signal, response)
        self._http.request(
            "POST",
            f"/v1/{self.args.signal}",
            body=payload,
            headers={"Content-Type": "application/x-protobuf"},
        )
        reply = self._http.getresponse()
        body = reply.read()
        if reply.status != 200:
            return f"HTTP {reply.status}: {body[:200]!r}"
        return _partial_failure(self.args.signal, body)

    def worker_pid(self) -> int:
        """The pid of the receiver process this stream's connection reached (see ``reuse_port``)."""
        if self._http is None:
            return int(self._channel.unary_unary(_PID_METHOD)(b"", timeout=30))
        self._http.request("GET", _PID_PATH)
        return int(self._http.getresponse().read())

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._http is not None:
            self._http.close()


def _open_stream(args: GenArgs, s: int) -> _Sender:
    """Stream ``s``'s connection; with ``worker_pids``, reconnected until it reached worker ``s mod N``."""
    sender = _Sender(args)
    if not args.worker_pids:
        return sender
    want = args.worker_pids[s % len(args.worker_pids)]
    for _ in range(200):
        if sender.worker_pid() == want:
            return sender
        sender.close()
        sender = _Sender(args)
    raise RuntimeError(f"no connection reached the receiver process {want} in 200 tries")


def _partial_failure(signal: Signal, response: bytes) -> str | None:
    if not response:
        return None
    from tokenscale.otlp import REJECTED_FIELDS, RESPONSE_TYPES  # noqa: PLC0415

    message = RESPONSE_TYPES[signal].FromString(response)
    rejected = getattr(message.partial_success, REJECTED_FIELDS[signal])
    if rejected or message.partial_success.error_message:
        return f"partial success: {rejected} rejected ({message.partial_success.error_message})"
    return None


def _generator_main(args: GenArgs, control: Connection) -> None:
    """Warm up, report ready, wait for go, send, report what happened."""
    workload = build_workload(args.signal, quick=args.quick, base_ns=args.base_ns)
    senders = [_open_stream(args, s) for s in range(args.streams)]
    errors: list[str] = []
    warm_rows = 0
    for s, sender in enumerate(senders):
        for k in range(args.warmup):
            counter = WARMUP_BASE + args.first_counter + s * 1000 + k
            template = workload.templates[counter % len(workload.templates)]
            problem = sender.send(template.instance(counter))
            if problem:
                errors.append(f"warm-up: {problem}")
            else:
                warm_rows += template.rows
    control.send(("ready", warm_rows, errors))
    control.recv()  # go

    counter_iter = itertools.count()
    latencies: list[list[float]] = [[] for _ in senders]
    counts = [[0, 0, 0] for _ in senders]  # requests, items, rows
    stream_errors: list[list[str]] = [[] for _ in senders]
    barrier = threading.Barrier(len(senders) + 1)
    deadline = [0.0]

    def stream(s: int) -> None:
        sender = senders[s]
        barrier.wait()
        while True:
            j = next(counter_iter)
            if args.duration <= 0 and j >= args.requests:
                break
            if args.rate > 0:
                delay = t_start + j / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if args.duration > 0 and time.monotonic() >= deadline[0]:
                break
            counter = args.first_counter + j
            payload = workload.request(counter)
            t0 = time.monotonic()
            problem = sender.send(payload)
            latencies[s].append((time.monotonic() - t0) * 1000)
            if problem:
                stream_errors[s].append(problem)
            else:
                counts[s][0] += 1
                counts[s][1] += workload.items(counter)
                counts[s][2] += workload.rows(counter)

    threads = [threading.Thread(target=stream, args=(s,)) for s in range(len(senders))]
    for thread in threads:
        thread.start()
    cpu0 = time.process_time()
    t_start = time.monotonic()
    deadline[0] = t_start + args.duration
    barrier.wait()
    for thread in threads:
        thread.join()
    t_end = time.monotonic()
    cpu = time.process_time() - cpu0
    for sender in senders:
        sender.close()
    all_errors = [e for errs in stream_errors for e in errs]
    control.send(
        {
            "t_start": t_start,
            "t_end": t_end,
            "requests": sum(c[0] for c in counts),
            "items": sum(c[1] for c in counts),
            "rows": sum(c[2] for c in counts),
            "errors": len(all_errors),
            "error_samples": list(dict.fromkeys(all_errors))[:5],
            "latencies_ms": [x for lat in latencies for x in lat],
            "cpu_seconds": cpu,
        }
    )


# -- one ingest measurement ------------------------------------------------------------------------


@dataclass
class IngestResult:
    backend: str
    signal: Signal
    transport: str
    requests: int
    items: int
    rows: int
    seconds: float
    rows_per_s: float
    items_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    receiver_cores: float
    postgres_cores: float
    generator_cores: float
    receiver_rss_start_mib: float
    receiver_rss_peak_mib: float
    rows_in_db: int
    rows_expected: int
    errors: int
    error_samples: list[str]
    rss_timeline: list[tuple[float, float]]
    profile: dict[str, Any] | None = None
    #: Receiver processes (``--workers``); CPU cores and RSS above are sums over them.
    workers: int = 1
    receiver_cores_each: list[float] | None = None


def _wait(conn: Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer from the {what} within {timeout:.0f} s")
    return conn.recv()


@contextlib.contextmanager
def _process(target: Any, *args: Any) -> Iterator[tuple[mp.process.BaseProcess, Connection]]:
    """A spawned process running ``target(*args, child_end)``; killed if still alive at exit."""
    spawn = mp.get_context("spawn")
    parent_end, child_end = spawn.Pipe()
    proc = spawn.Process(target=target, args=(*args, child_end), daemon=True)
    proc.start()
    child_end.close()
    try:
        yield proc, parent_end
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent_end.close()


@contextlib.contextmanager
def serving(url: str, log_file: Path) -> Iterator[tuple[int, int, int]]:
    """A receiver process on ``url`` (composed as ``tokenscale serve`` does): (pid, gRPC port, HTTP port).

    Stopped, its rows committed, when the block ends."""
    with _process(_receiver_main, url, str(log_file), 0, 0, False) as (proc, control):
        answer = _wait(control, 60, "receiver")
        assert proc.pid is not None
        yield proc.pid, answer[1], answer[2]
        control.send("stop")
        _wait(control, 60, "receiver (stopping)")


@contextlib.contextmanager
def _receivers(
    url: str, log_file: Path, workers: int
) -> Iterator[tuple[list[mp.process.BaseProcess], int, int]]:
    """``workers`` receiver processes on one pair of ports: (processes, gRPC port, HTTP port).

    One binds as ``tokenscale serve`` does; several bind with SO_REUSEPORT as the workers of
    ``tokenscale serve --workers N`` do (the first picks free ports, the others join them).
    Stopped, their rows committed, when the block ends."""
    with contextlib.ExitStack() as stack:
        reuse = workers > 1
        first, control = stack.enter_context(_process(_receiver_main, url, str(log_file), 0, 0, reuse))
        answer = _wait(control, 60, "receiver")
        grpc_port, http_port = answer[1], answer[2]
        started = [(first, control)]
        for _ in range(workers - 1):
            started.append(
                stack.enter_context(_process(_receiver_main, url, str(log_file), grpc_port, http_port, True))
            )
            _wait(started[-1][1], 60, "receiver")
        yield [proc for proc, _ in started], grpc_port, http_port
        for _, control in started:
            control.send("stop")
        for _, control in started:
            _wait(control, 60, "receiver (stopping)")


class LoadGenerator:
    """A load-generator process (:func:`_generator_main`), warmed up: :meth:`go`, then :meth:`result`."""

    def __init__(self, proc: mp.process.BaseProcess, control: Connection, ready: Any) -> None:
        assert proc.pid is not None
        self.pid: int = proc.pid
        self.warm_rows: int = ready[1]
        self.warm_errors: list[str] = ready[2]
        self._proc = proc
        self._control = control

    def go(self) -> None:
        self._control.send("go")

    def result(self, timeout: float) -> dict[str, Any]:
        """What :func:`_generator_main` reports when done (``t_start``, ``requests``, ``rows``, ...)."""
        deadline = time.monotonic() + timeout
        while not self._control.poll(1.0):
            if not self._proc.is_alive():
                raise RuntimeError("the load generator died")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the load generator did not finish within {timeout:.0f} s")
        answer: dict[str, Any] = self._control.recv()
        return answer


@contextlib.contextmanager
def load_generator(args: GenArgs) -> Iterator[LoadGenerator]:
    """A load generator for ``args``, started and warmed up (its warm-up exports already sent)."""
    with _process(_generator_main, args) as (proc, control):
        yield LoadGenerator(proc, control, _wait(control, 300, "load generator"))


def _count_rows(url: str) -> int:
    """Rows stored from what was sent: usage_events (not the ledger's own residual rows) plus
    activity_events (where that table exists)."""
    total = 0
    with psycopg.connect(url) as conn:
        for table, where in (("usage_events", f" WHERE source <> '{RECONCILED}'"), ("activity_events", "")):
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"tokenscale.{table}",)).fetchone()
            if exists and exists[0]:
                row = conn.execute(f"SELECT count(*) FROM tokenscale.{table}{where}").fetchone()
                total += int(row[0]) if row else 0
    return total


def measure_ingest(
    ctx: Context,
    server: DbServer,
    signal: Signal,
    transport: str,
    sizes: Sizes,
    base_ns: int,
    *,
    duration: float = 0.0,
    profile: bool = False,
) -> IngestResult:
    """Run the receiver and the generator once; rows/s over the generator's timed window."""
    label = f"{server.backend}-{signal}-{transport}"
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"receiver-{label}.log"
    log_file.unlink(missing_ok=True)
    workers = max(1, ctx.workers)
    with database(server, f"ingest_{signal}_{transport}") as url:
        with _receivers(url, log_file, workers) as (rprocs, grpc_port, http_port):
            pids: list[int] = [p.pid for p in rprocs if p.pid is not None]
            args = GenArgs(
                signal=signal,
                transport=transport,
                port=grpc_port if transport == "grpc" else http_port,
                streams=sizes.streams,
                requests=sizes.requests,
                warmup=sizes.warmup,
                quick=ctx.quick,
                base_ns=base_ns,
                duration=duration,
                worker_pids=tuple(pids) if workers > 1 else (),
            )

            def rss() -> tuple[int, int]:
                each = [rss_kib(pid) for pid in pids]
                return sum(r[0] for r in each), sum(r[1] for r in each)

            with _process(_generator_main, args) as (gproc, gctl):
                ready = _wait(gctl, 300, "load generator")
                warm_rows, warm_errors = ready[1], ready[2]
                assert gproc.pid is not None
                spy = _start_py_spy(pids[0], label) if profile else None
                rss_start, _ = rss()
                cpu_r0, cpu_g0 = [cpu_seconds(pid) for pid in pids], cpu_seconds(gproc.pid)
                cpu_p0 = postgres_cpu_seconds(server.postmaster_pid)
                t0 = time.monotonic()
                gctl.send("go")
                timeline: list[tuple[float, float]] = []
                sample_every = 1.0 if duration else 0.25
                while not gctl.poll(sample_every):
                    if not gproc.is_alive():
                        raise RuntimeError("the load generator died")
                    timeline.append((round(time.monotonic() - t0, 2), rss()[0] / 1024))
                gen = gctl.recv()
                cpu_r1, cpu_g1 = [cpu_seconds(pid) for pid in pids], cpu_seconds(gproc.pid)
                cpu_p1 = postgres_cpu_seconds(server.postmaster_pid)
                rss_now, rss_peak = rss()
                timeline.append((round(time.monotonic() - t0, 2), rss_now / 1024))
                prof = _stop_py_spy(spy, gen["t_end"] - gen["t_start"]) if spy else None
        rows_in_db = _count_rows(url)
    seconds = gen["t_end"] - gen["t_start"]
    lat = gen["latencies_ms"]
    return IngestResult(
        backend=server.backend,
        signal=signal,
        transport=transport,
        requests=gen["requests"],
        items=gen["items"],
        rows=gen["rows"],
        seconds=seconds,
        rows_per_s=gen["rows"] / seconds,
        items_per_s=gen["items"] / seconds,
        latency_p50_ms=percentile(lat, 50),
        latency_p95_ms=percentile(lat, 95),
        receiver_cores=(sum(cpu_r1) - sum(cpu_r0)) / seconds,
        postgres_cores=(cpu_p1 - cpu_p0) / seconds,
        generator_cores=(cpu_g1 - cpu_g0) / seconds,
        receiver_rss_start_mib=rss_start / 1024,
        receiver_rss_peak_mib=rss_peak / 1024,
        rows_in_db=rows_in_db,
        rows_expected=gen["rows"] + warm_rows,
        errors=gen["errors"] + len(warm_errors),
        error_samples=gen["error_samples"]
        + warm_errors[:3]
        + ([f"receiver log: {log_file}"] if log_file.exists() and log_file.stat().st_size else []),
        rss_timeline=timeline,
        profile=prof,
        workers=workers,
        receiver_cores_each=[(b - a) / seconds for a, b in zip(cpu_r0, cpu_r1, strict=True)],
    )


# -- the raw COPY ceiling --------------------------------------------------------------------------

Rows = list[tuple[Any, ...]]
#: One export's rows: (usage_events rows, activity_events rows).
Batch = tuple[Rows, Rows]


def map_requests(workload: Workload, counters: range) -> list[MappingResult]:
    """The pure mapping of requests ``counters``, exactly as the receiver maps them."""
    return [
        map_request(workload.signal, parse(workload.signal, workload.request(j)), "default") for j in counters
    ]


def ceiling_batches(mapped: list[MappingResult]) -> list[Batch]:
    """The table rows of mapped requests, encoded as the receiver's writer encodes them, ready for a
    raw COPY (every row counted: one carrier per stream in these workloads)."""
    from tokenscale.store import writer  # noqa: PLC0415

    return [
        (writer._event_rows(r.events, [True] * len(r.events)), writer._activity_rows(r.activity))
        for r in mapped
    ]


_BATCHES: list[Batch] = []  # handed to forked COPY workers without pickling


def _copy_worker(url: str, worker: int, workers: int, barrier: Any, done: Any, release: Any) -> None:
    from tokenscale.store import writer  # noqa: PLC0415

    with psycopg.connect(url) as conn:
        barrier.wait()
        for i in range(worker, len(_BATCHES), workers):
            usage, activity = _BATCHES[i]
            writer._copy(conn, writer._COPY_EVENTS, writer._EVENT_TYPES, usage)
            if activity:
                writer._copy(conn, writer._COPY_ACTIVITY, writer._ACTIVITY_TYPES, activity)
            conn.commit()
        done.put(time.monotonic())
        release.wait()  # keep the session (and its CPU time) alive until the parent has read it


def _prepare_days(url: str, batches: list[Batch]) -> None:
    """Create the partitions the rows need (plain PostgreSQL; the receiver does it too)."""
    days = sorted(
        {(_PG_EPOCH + dt.timedelta(microseconds=row[0])).date() for usage, _ in batches for row in usage}
    )
    with psycopg.connect(url) as conn:
        has = conn.execute("SELECT to_regproc('tokenscale.ensure_partitions') IS NOT NULL").fetchone()
        if has and has[0]:
            conn.execute("SELECT tokenscale.ensure_partitions(%s::date[])", (days,))


#: Indexes of migrations 0013 and 0081 (the query APIs' read paths), left out by the ``no read
#: indexes`` ceiling.
READ_PATH_INDEXES: Final = (
    "usage_events_read_time",
    "usage_events_read_request",
    "usage_events_read_conversation",
    "usage_events_read_attributes",
    "usage_events_read_trace",
)


def measure_ceiling(
    server: DbServer,
    signal: Signal,
    batches: list[Batch],
    warm: Batch,
    workers: int,
    drop_indexes: tuple[str, ...] = (),
) -> tuple[float, float]:
    """Rows/s of ``workers`` parallel binary COPYs of ``batches`` (one commit per batch), and the CPU
    cores PostgreSQL used meanwhile."""
    global _BATCHES  # noqa: PLW0603 - shared with forked workers
    rows = sum(len(u) + len(a) for u, a in batches)
    with database(server, f"ceiling_{signal}") as url:
        _prepare_days(url, [*batches, warm])
        if drop_indexes:
            with psycopg.connect(url, autocommit=True) as conn:
                for name in drop_indexes:
                    conn.execute(sql.SQL("DROP INDEX IF EXISTS tokenscale.{}").format(sql.Identifier(name)))
        _BATCHES = [warm]
        _copy_worker(url, 0, 1, _NoBarrier(), _Sink(), _NoBarrier())  # warm-up: one batch, same path
        _BATCHES = batches
        fork = mp.get_context("fork")
        barrier = fork.Barrier(workers + 1)
        release = fork.Event()
        done = fork.Queue()
        procs = [
            fork.Process(target=_copy_worker, args=(url, w, workers, barrier, done, release))
            for w in range(workers)
        ]
        for proc in procs:
            proc.start()
        barrier.wait()
        t0 = time.monotonic()
        cpu_db0 = postgres_cpu_seconds(server.postmaster_pid)
        ends = [done.get(timeout=600) for _ in procs]
        cpu_db1 = postgres_cpu_seconds(server.postmaster_pid)
        release.set()
        for proc in procs:
            proc.join()
        _BATCHES = []
        if any(proc.exitcode for proc in procs):
            raise RuntimeError("a COPY worker failed")
        stored = _count_rows(url)
    expected = rows + len(warm[0]) + len(warm[1])
    if stored != expected:
        raise RuntimeError(f"ceiling COPY stored {stored} rows, expected {expected}")
    seconds = float(max(ends)) - t0
    return rows / seconds, (cpu_db1 - cpu_db0) / seconds


def measure_writer(
    server: DbServer, signal: Signal, mapped: list[MappingResult], warm: MappingResult, streams: int
) -> tuple[float, float, float]:
    """Rows/s of tokenscale's own writer alone: pre-mapped results written by ``streams`` threads
    through one ``open_pool`` + ``UsageWriter`` (staging COPY, ON CONFLICT insert, streams, rollup).

    Returns (rows/s, CPU cores used by this Python process, CPU cores used by PostgreSQL)."""
    from tokenscale.store.writer import UsageWriter, open_pool  # noqa: PLC0415

    rows = sum(len(r.events) + len(getattr(r, "activity", ())) for r in mapped)
    warm_rows = len(warm.events) + len(getattr(warm, "activity", ()))
    with database(server, f"writer_{signal}") as url:
        pool = open_pool(url)
        try:
            pool.wait(timeout=30)
            writer = UsageWriter(pool)
            writer.write(warm)
            next_index = itertools.count()
            barrier = threading.Barrier(streams + 1)

            def stream() -> None:
                barrier.wait()
                while (i := next(next_index)) < len(mapped):
                    writer.write(mapped[i])

            threads = [threading.Thread(target=stream) for _ in range(streams)]
            for thread in threads:
                thread.start()
            barrier.wait()
            cpu_py0, cpu_db0 = cpu_seconds(os.getpid()), postgres_cpu_seconds(server.postmaster_pid)
            t0 = time.monotonic()
            for thread in threads:
                thread.join()
            seconds = time.monotonic() - t0
            cpu_py1, cpu_db1 = cpu_seconds(os.getpid()), postgres_cpu_seconds(server.postmaster_pid)
        finally:
            pool.close()
        stored = _count_rows(url)
    if stored != rows + warm_rows:
        raise RuntimeError(f"the writer stored {stored} rows, expected {rows + warm_rows}")
    return rows / seconds, (cpu_py1 - cpu_py0) / seconds, (cpu_db1 - cpu_db0) / seconds


class _NoBarrier:
    def wait(self) -> None:
        return None


class _Sink:
    def put(self, item: Any) -> None:
        return None


# -- offline stage costs ----------------------------------------------------------------------------


def stage_costs(workload: Workload, repeat: int) -> dict[str, float]:
    """Microseconds per stored row of each pure-Python stage of the receiver, on one core (the
    mapping as the receiver composes it: the writer's carried attributes, the value limits)."""
    from tokenscale.pipeline import ExportPipeline  # noqa: PLC0415
    from tokenscale.store import writer  # noqa: PLC0415

    pipeline = ExportPipeline(writer.UsageWriter(None))  # type: ignore[arg-type]  # no pool: no I/O

    payloads = [t.instance(WARMUP_BASE + k) for k, t in enumerate(workload.templates)]
    n_rows = sum(t.rows for t in workload.templates) * repeat
    n_items = sum(t.items for t in workload.templates) * repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        parsed = [parse(workload.signal, p) for p in payloads]
    t1 = time.perf_counter()
    for _ in range(repeat):
        results = [pipeline._map(workload.signal, m, "default") for m in parsed]
    t2 = time.perf_counter()
    for _ in range(repeat):
        for r in results:
            writer._event_rows(r.events, [True] * len(r.events))
    t3 = time.perf_counter()
    out = {
        "decode_us_per_row": (t1 - t0) / n_rows * 1e6,
        "map_us_per_row": (t2 - t1) / n_rows * 1e6,
        "encode_us_per_row": (t3 - t2) / n_rows * 1e6,
        "rows_per_item": n_rows / n_items,
    }
    out["python_us_per_row"] = out["decode_us_per_row"] + out["map_us_per_row"] + out["encode_us_per_row"]
    out["one_core_rows_per_s"] = 1e6 / out["python_us_per_row"]
    return out


# -- py-spy -----------------------------------------------------------------------------------------


@dataclass
class _Spy:
    proc: subprocess.Popen[bytes]
    output: Path


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _start_py_spy(pid: int, label: str) -> _Spy | None:
    exe = _py_spy()
    if exe is None:
        print("py-spy not found: `.venv/bin/pip install py-spy` to profile", file=sys.stderr)
        return None
    out_dir = RESULTS_DIR / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{label}.txt"
    cmd = [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--gil", "--nolineno"]
    proc = subprocess.Popen(
        [*cmd, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(0.5)  # let it attach
    return _Spy(proc, output)


#: Where GIL-holding samples go, by the first matching frame (innermost first).
_BUCKETS: Final = (
    (
        "protobuf decode",
        (
            "_parse (tokenscale/receiver/grpc_server.py)",
            "deserialize (tokenscale/receiver/grpc_server.py)",
            "decode_request (",
        ),
    ),
    ("row encoding + JSON (writer._rows)", ("_rows (tokenscale/store/writer.py)",)),
    ("COPY write_row (psycopg)", ("write_row (psycopg",)),
    ("other psycopg / SQL round trips", ("(psycopg/", "(psycopg_pool/")),
    ("writer: other Python", ("(tokenscale/store/",)),
    ("limits", ("(tokenscale/mapping/limits.py)",)),
    ("mapping: attribute dicts", ("(tokenscale/mapping/_values.py)",)),
    ("mapping: other", ("(tokenscale/mapping/",)),
    ("HTTP server (uvicorn/h11/starlette)", ("(uvicorn/", "(h11/", "(starlette/")),
    ("gRPC server + asyncio", ("(grpc/", "(asyncio/")),
)


def _stop_py_spy(spy: _Spy, seconds: float) -> dict[str, Any] | None:
    spy.proc.send_signal(signals.SIGINT)
    try:
        spy.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.proc.kill()
        spy.proc.wait()
    if not spy.output.exists():
        err = spy.proc.stderr.read().decode(errors="replace") if spy.proc.stderr else ""
        print(f"py-spy wrote no profile: {err[-500:]}", file=sys.stderr)
        return None
    return summarize_profile(spy.output, seconds, rate=100)


def summarize_profile(path: Path, seconds: float, rate: int) -> dict[str, Any]:
    """Shares of GIL-holding samples: by bucket, by function (self and inclusive), and GIL busy %."""
    total = 0
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for text_line in path.read_text().splitlines():
        stack, _, count_text = text_line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
        for name, needles in _BUCKETS:
            if any(needle in frame for frame in reversed(frames) for needle in needles):
                buckets[name] += count
                break
        else:
            buckets["other"] += count
    if total == 0:
        return {"samples": 0}

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "gil_busy_pct": round(100 * total / (seconds * rate), 1),
        "buckets_pct": share(buckets, 20),
        "top_self_pct": share(self_counts, 15),
        "top_inclusive_pct": share(incl_counts, 25),
        "raw": str(path),
    }


# -- the benchmark ----------------------------------------------------------------------------------


def base_ns_today() -> int:
    day = int(time.time()) // 86_400 * 86_400
    return (day + 10 * 3600) * 1_000_000_000


def run(ctx: Context, server: DbServer) -> BenchOutput:
    sizes = sizes_for(ctx)
    base_ns = base_ns_today()
    out = BenchOutput()
    ingests: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, Any]] = {}
    stages: dict[str, dict[str, float]] = {}
    for signal in SIGNALS:
        workload = build_workload(signal, quick=ctx.quick, base_ns=base_ns)
        stages[signal] = stage_costs(workload, repeat=1 if ctx.quick else 3)
        # The ceiling: the same rows the receiver stores (same mapping, same requests), COPYed straight in.
        mapped = map_requests(workload, range(sizes.requests))
        warm_mapped = map_requests(workload, range(WARMUP_BASE, WARMUP_BASE + 1))[0]
        batches = ceiling_batches(mapped)
        warm = ceiling_batches([warm_mapped])[0]
        rates: dict[int, list[float]] = {}
        ceiling_db_cores: dict[int, list[float]] = {}
        no_read: list[float] = []
        writer_rates: list[float] = []
        tag = f"[ingest/{server.backend}] {signal}"
        writer_cpu: list[tuple[float, float]] = []
        for _ in range(ctx.repeat):
            for workers in (1,) if ctx.quick else (1, 2):
                ctx.log(f"{tag}: ceiling, raw COPY with {workers} connection(s)")
                rate, db_cores = measure_ceiling(server, signal, batches, warm, workers)
                rates.setdefault(workers, []).append(rate)
                ceiling_db_cores.setdefault(workers, []).append(db_cores)
            if not ctx.quick:
                best = max(rates, key=lambda w: median(rates[w]))
                ctx.log(f"{tag}: raw COPY without the read-path indexes ({best} connection(s))")
                no_read.append(measure_ceiling(server, signal, batches, warm, best, READ_PATH_INDEXES)[0])
            ctx.log(f"{tag}: tokenscale's writer alone (pre-mapped, {sizes.streams} threads)")
            rate, py_cores, db_cores = measure_writer(server, signal, mapped, warm_mapped, sizes.streams)
            writer_rates.append(rate)
            writer_cpu.append((py_cores, db_cores))
        best_workers = max(rates, key=lambda w: median(rates[w]))
        ceilings[signal] = {
            "rows_per_s": median(rates[best_workers]),
            "by_connections": {w: round(median(r)) for w, r in rates.items()},
            "best_connections": best_workers,
            "db_cores": median(ceiling_db_cores[best_workers]),
            "no_read_indexes_rows_per_s": median(no_read),
            "writer_only_rows_per_s": median(writer_rates),
            "writer_only_python_cores": median([c[0] for c in writer_cpu]),
            "writer_only_db_cores": median([c[1] for c in writer_cpu]),
            "rows": sum(len(u) + len(a) for u, a in batches),
        }
        del batches, mapped
        c = ceilings[signal]
        out.notes.append(
            f"{server.backend} {signal}: raw COPY {c['by_connections']} rows/s by connections "
            f"({c['db_cores']:.2f} PostgreSQL cores); without the "
            f"read-path indexes {c['no_read_indexes_rows_per_s']:,.0f} rows/s; writer alone "
            f"{c['writer_only_rows_per_s']:,.0f} rows/s using {c['writer_only_python_cores']:.2f} Python + "
            f"{c['writer_only_db_cores']:.2f} PostgreSQL cores; PostgreSQL CPU per row: raw COPY "
            f"{1e6 * c['db_cores'] / c['rows_per_s']:.0f} us, writer "
            f"{1e6 * c['writer_only_db_cores'] / c['writer_only_rows_per_s']:.0f} us"
        )
        for transport in TRANSPORTS:
            runs: list[IngestResult] = []
            for rep in range(ctx.repeat):
                ctx.log(f"[ingest/{server.backend}] {signal} over {transport} (run {rep + 1}/{ctx.repeat})")
                profile = ctx.profile and rep == 0
                runs.append(measure_ingest(ctx, server, signal, transport, sizes, base_ns, profile=profile))
            mid = sorted(runs, key=lambda r: r.rows_per_s)[len(runs) // 2]
            record = asdict(mid)
            record["rows_per_s_runs"] = [r.rows_per_s for r in runs]
            record["ratio"] = mid.rows_per_s / ceilings[signal]["rows_per_s"]
            ingests.append(record)
            item = ITEM_NAMES[signal]
            ok = mid.rows_in_db == mid.rows_expected and mid.errors == 0
            workers_cell = {"receiver processes": mid.workers} if mid.workers > 1 else {}
            out.rows.append(
                {
                    "backend": server.backend,
                    "signal (items)": f"{signal} ({item})",
                    "transport": transport,
                    **workers_cell,
                    "items/export": round(mid.items / max(mid.requests, 1)),
                    "ingest items/s": mid.items_per_s,
                    "ingest rows/s": mid.rows_per_s,
                    "COPY ceiling rows/s": ceilings[signal]["rows_per_s"],
                    "ratio": record["ratio"],
                    "writer-only rows/s": ceilings[signal]["writer_only_rows_per_s"],
                    "COPY w/o read idx rows/s": ceilings[signal]["no_read_indexes_rows_per_s"],
                    "p50 ms": mid.latency_p50_ms,
                    "p95 ms": mid.latency_p95_ms,
                    "receiver cores": mid.receiver_cores,
                    "db cores": mid.postgres_cores,
                    "peak RSS MiB": mid.receiver_rss_peak_mib,
                    "rows ok": ok,
                }
            )
            if not ok:
                out.notes.append(
                    f"{server.backend} {signal}/{transport}: {mid.rows_in_db} rows stored, "
                    f"{mid.rows_expected} expected, {mid.errors} errors {mid.error_samples}"
                )
            if mid.workers > 1:
                each = ", ".join(f"{c:.2f}" for c in mid.receiver_cores_each or [])
                out.notes.append(
                    f"{server.backend} {signal}/{transport}: {mid.workers} receiver processes sharing the "
                    f"ports (SO_REUSEPORT), the {sizes.streams} streams spread over them round-robin; "
                    f"receiver cores per process {each} (sum {mid.receiver_cores:.2f}); RSS is the sum"
                )
            if mid.profile and mid.profile.get("samples"):
                label = f"{server.backend} {signal}/{transport}" + (" (worker 1)" if mid.workers > 1 else "")
                out.notes.append(_profile_note(label, mid.profile))
    for stage_signal, costs in stages.items():
        out.notes.append(
            f"{server.backend} {stage_signal} one-core Python cost per row: "
            f"decode {costs['decode_us_per_row']:.1f} us"
            f" + map {costs['map_us_per_row']:.1f} us + encode {costs['encode_us_per_row']:.1f} us"
            f" = {costs['python_us_per_row']:.1f} us -> at most {costs['one_core_rows_per_s']:,.0f} rows/s"
        )
    out.data = {
        "sizes": asdict(sizes),
        "receiver_processes": max(1, ctx.workers),
        "ceilings": ceilings,
        "ingest": ingests,
        "stages": stages,
    }
    return out


def _profile_note(label: str, profile: dict[str, Any]) -> str:
    buckets = ", ".join(f"{name} {pct}%" for name, pct in profile["buckets_pct"])
    top = ", ".join(f"{name} {pct}%" for name, pct in profile["top_self_pct"][:8])
    return f"{label} py-spy (GIL held {profile['gil_busy_pct']}% of the time): {buckets}. Top self: {top}"


if __name__ == "__main__":  # pragma: no cover
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.run", "--only", NAME, *sys.argv[1:]])
