"""The committed generated gRPC code is what ``scripts/gen-proto`` makes from ``proto/`` today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.api.grpc_service import UsageApiServicer

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "src" / "tokenscale" / "api" / "gen"


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate the proto code")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-proto"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(COMMITTED): p.read_bytes()
        for p in COMMITTED.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    stale = sorted(str(p) for p in fresh.keys() | committed.keys() if fresh.get(p) != committed.get(p))
    assert not stale, f"stale generated code ({', '.join(stale)}): run `.venv/bin/python scripts/gen-proto`"


def test_every_rpc_is_served() -> None:
    rpcs = [m.name for m in pb.DESCRIPTOR.services_by_name["UsageApi"].methods]
    assert len(rpcs) == 11
    assert all(callable(getattr(UsageApiServicer, name, None)) for name in rpcs)
