"""Per-call overhead of tokenscale's openai instrumentation vs none vs the contrib openai-v2 one."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tokenscale.instrumentation import OpenAIInstrumentor

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "instrumentation.json"
FAKE_API_DIR = ROOT / "tests" / "instrumentation"
MODEL = "gpt-5-mini"
MESSAGES = [{"role": "user", "content": "Say hello"}]

# The fake API runs in its own process so that it does not share the client's GIL.
SERVER = f"""
import sys, time
sys.path.insert(0, {str(FAKE_API_DIR)!r})
from fake_llm_api import FakeLLMAPI
api = FakeLLMAPI().start()
print(api.port, flush=True)
sys.stdin.read()
"""


class DiscardingSpanExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the cost measured is the instrumentation's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class Mode:
    """One way of running the calls: with no instrumentation, ours, or openai-v2."""

    def __init__(self, name: str, enable: Callable[[], None], disable: Callable[[], None]) -> None:
        self.name = name
        self.enable = enable
        self.disable = disable
        # Per scenario: wall-clock and client-process CPU nanoseconds of every call.
        self.wall: dict[str, list[int]] = {}
        self.cpu: dict[str, list[int]] = {}
        self.round_medians: dict[str, list[float]] = {}


def make_modes(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> list[Mode]:
    providers = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    ours = OpenAIInstrumentor()
    modes = [
        Mode("uninstrumented", lambda: None, lambda: None),
        Mode("tokenscale", lambda: ours.instrument(**providers), ours.uninstrument),
    ]
    try:
        from opentelemetry.instrumentation.openai_v2 import (  # noqa: PLC0415
            OpenAIInstrumentor as OpenAIV2Instrumentor,
        )
    except Exception as error:  # optional: an incompatible or missing install is reported, not fatal
        print(f"opentelemetry-instrumentation-openai-v2 unavailable ({error}); skipped", file=sys.stderr)
    else:
        v2 = OpenAIV2Instrumentor()
        modes.append(Mode("openai-v2", lambda: v2.instrument(**providers), v2.uninstrument))
    return modes


def scenarios(client: openai.OpenAI) -> dict[str, Callable[[], object]]:
    def chat() -> object:
        return client.chat.completions.create(model=MODEL, messages=MESSAGES)

    def chat_stream() -> object:
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        return list(stream)

    return {"chat": chat, "chat_stream": chat_stream}


def time_calls(call: Callable[[], object], count: int) -> tuple[list[int], list[int]]:
    """Wall-clock and CPU time of each call. CPU time is this process only (the fake API runs in
    another one), so it measures SDK + instrumentation work and is robust to a busy machine."""
    wall, cpu = [], []
    for _ in range(count):
        start_cpu = time.process_time_ns()
        start = time.perf_counter_ns()
        call()
        wall.append(time.perf_counter_ns() - start)
        cpu.append(time.process_time_ns() - start_cpu)
    return wall, cpu


def run(rounds: int, calls: int, warmup: int, seed: int) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingSpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    modes = make_modes(tracer_provider, meter_provider)
    order = random.Random(seed)
    try:
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0
        ) as client:
            calls_by_name = scenarios(client)
            for mode in modes:  # warm up connections, imports and caches once per mode
                mode.enable()
                for call in calls_by_name.values():
                    time_calls(call, warmup)
                mode.disable()
            for _ in range(rounds):
                for scenario, call in calls_by_name.items():
                    shuffled = modes[:]
                    order.shuffle(shuffled)  # interleaved, in a different order each round
                    for mode in shuffled:
                        mode.enable()
                        gc.collect()
                        wall, cpu = time_calls(call, calls)
                        mode.disable()
                        mode.wall.setdefault(scenario, []).extend(wall)
                        mode.cpu.setdefault(scenario, []).extend(cpu)
                        mode.round_medians.setdefault(scenario, []).append(statistics.median(cpu) / 1000)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.terminate()
        server.wait(timeout=10)
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return summarize(modes, rounds, calls, seed)


def _stats(samples: list[int], baseline: float) -> dict[str, float]:
    ordered = sorted(samples)
    median = statistics.median(ordered) / 1000
    return {
        "median_us": round(median, 1),
        "p10_us": round(ordered[len(ordered) // 10] / 1000, 1),
        "p90_us": round(ordered[len(ordered) * 9 // 10] / 1000, 1),
        "overhead_us": round(median - baseline, 1),
        "ratio": round(median / baseline, 4),
    }


def summarize(modes: list[Mode], rounds: int, calls: int, seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario in modes[0].wall:
        wall_baseline = statistics.median(modes[0].wall[scenario]) / 1000
        cpu_baseline = statistics.median(modes[0].cpu[scenario]) / 1000
        results[scenario] = {
            mode.name: {
                "calls": len(mode.wall[scenario]),
                "cpu": _stats(mode.cpu[scenario], cpu_baseline),
                "wall": _stats(mode.wall[scenario], wall_baseline),
                "cpu_round_median_spread_us": round(
                    max(mode.round_medians[scenario]) - min(mode.round_medians[scenario]), 1
                ),
            }
            for mode in modes
        }
    return {
        "benchmark": "instrumentation per-call overhead against the local fake OpenAI API",
        "method": (
            "one process runs every mode against a fake API in another process; interleaved rounds "
            "(mode order shuffled per round); median over all calls; cpu = client process CPU time"
        ),
        "rounds": rounds,
        "calls_per_round": calls,
        "seed": seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
        "versions": {
            name: _version(name)
            for name in ("openai", "opentelemetry-sdk", "opentelemetry-instrumentation-openai-v2")
        },
        "scenarios": results,
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (few rounds and calls)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None, help="calls per mode per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    calls = args.calls or (20 if args.quick else 200)
    warmup = 5 if args.quick else 50
    report = run(rounds, calls, warmup, args.seed)
    report["quick"] = args.quick

    for scenario, rows in report["scenarios"].items():
        print(f"\n{scenario}: median per call ({rounds} rounds x {calls} calls per mode)")
        header = ("mode", "CPU us", "overhead", "ratio", "wall us", "overhead", "ratio")
        print("  {:<15} {:>9} {:>9} {:>7}   {:>9} {:>9} {:>7}".format(*header))
        for name, row in rows.items():
            cpu, wall = row["cpu"], row["wall"]
            print(
                f"  {name:<15} {cpu['median_us']:>9.1f} {cpu['overhead_us']:>9.1f} {cpu['ratio']:>7.3f}"
                f"   {wall['median_us']:>9.1f} {wall['overhead_us']:>9.1f} {wall['ratio']:>7.3f}"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
