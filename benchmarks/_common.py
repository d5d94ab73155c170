"""What every benchmark shares: the run context, result tables, JSON output, /proc readings."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "RESULTS_DIR",
    "BenchOutput",
    "Context",
    "Row",
    "cpu_seconds",
    "format_table",
    "machine_info",
    "median",
    "percentile",
    "postgres_cpu_seconds",
    "proc_stat",
    "rss_kib",
    "run_in_tree",
    "write_json",
]

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")

Row = dict[str, Any]


@dataclass
class Context:
    """Options of one ``benchmarks.run`` invocation."""

    quick: bool = False
    soak_seconds: float = 0.0
    profile: bool = False
    repeat: int = 1
    #: Scale factor for the reports data set (1.0 = the documented full size).
    report_scale: float = 1.0
    #: Receiver processes in the ingest and soak benchmarks (``tokenscale serve --workers N``).
    workers: int = 1
    #: ledger, writer: a git revision whose ``src/`` is measured beside this tree's (None: this tree only).
    baseline: str | None = None
    #: ledger: a TimescaleDB community server for the compressed sizes (None: its test variable).
    community_url: str | None = None
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


@dataclass
class BenchOutput:
    """What one benchmark produced on one back end: table rows, notes and raw data for the JSON."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def format_table(title: str, rows: Iterable[Row], columns: Sequence[str] | None = None) -> str:
    """A Markdown table (readable in a terminal too) of ``rows``, in ``columns`` order."""
    rows = list(rows)
    if not rows:
        return f"### {title}\n\n(no rows)\n"
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [f"### {title}", "", line(cols), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def machine_info() -> dict[str, Any]:
    """Facts about the machine and checkout a result was measured on."""
    cpu = "?"
    try:
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                cpu = text_line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for text_line in Path("/proc/meminfo").read_text().splitlines():
            if text_line.startswith("MemTotal:"):
                mem_kib = int(text_line.split()[1])
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit + ("+dirty" if dirty else ""),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n")
    return path


# -- /proc readings ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (plus its reaped children's with ``children``)."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def postgres_cpu_seconds(postmaster_pid: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live children, and reaped ones."""
    total = cpu_seconds(postmaster_pid, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is not None and int(fields[1]) == postmaster_pid:
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of ``pid`` in KiB, from /proc/PID/status; (0, 0) when gone."""
    rss = hwm = 0
    try:
        for text_line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if text_line.startswith("VmRSS:"):
                rss = int(text_line.split()[1])
            elif text_line.startswith("VmHWM:"):
                hwm = int(text_line.split()[1])
    except OSError:
        pass
    return rss, hwm


def run_in_tree(src: Path, script: str, args: Sequence[str], what: str) -> dict[str, Any]:
    """Run ``script`` (``python -c``) with ``src`` alone on ``PYTHONPATH`` (a tree's ``src/``: this
    one's or a baseline's) and return the JSON object its last line of output prints."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd=tempfile.gettempdir(),  # not the repository: PYTHONPATH alone says which tree is imported
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {what} of {src} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
