"""A real ``tokenscale serve`` for the hook tests: a subprocess on free loopback ports, keys required."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import requests

from ground_truth import capture_bodies
from tokenscale.auth import create_key
from tokenscale.instrumentation._budget import BudgetCheck, check_budgets

__all__ = ["HOOK_COMMAND", "Service", "run_hook"]

#: ``tokenscale hook`` as an assistant's settings would name it (this interpreter's install).
HOOK_COMMAND = [sys.executable, "-m", "tokenscale.cli", "hook"]


class Service:
    """``tokenscale serve --require-auth`` on ``db_url``: OTLP on gRPC and HTTP, the API, budgets."""

    def __init__(self, db_url: str, data_dir: Path) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.process: subprocess.Popen[str] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.log: list[str] = []

    def start(self) -> Service:
        self.process = subprocess.Popen(
            [
                *HOOK_COMMAND[:-1],
                "serve",
                "--database-url",
                self.db_url,
                "--data-dir",
                str(self.data_dir),
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--require-auth",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            self.log.append(line)
            if "ready" in line or self.process.poll() is not None:
                break
        ports = re.search(r"gRPC port (\d+), HTTP port (\d+)", "".join(self.log))
        assert ports, "".join(self.log)
        self.grpc_port, self.http_port = int(ports[1]), int(ports[2])
        # Keep reading its log, so that a full pipe never blocks the service.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def stop(self) -> None:
        """Stop the service (a second call does nothing)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.process = None

    @property
    def url(self) -> str:
        """The HTTP base URL (OTLP/HTTP, the API and the budget check share it)."""
        return f"http://127.0.0.1:{self.http_port}"

    def key(self, tenant: str, scopes: tuple[str, ...] = ("ingest", "read")) -> str:
        with psycopg.connect(self.db_url) as conn:
            return create_key(conn, tenant, scopes, "hook test")

    def create_budget(self, admin_key: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/v1/budgets", json=body, headers={"authorization": f"Bearer {admin_key}"}, timeout=30
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def delete_budget(self, admin_key: str, budget_id: str, *, missing_ok: bool = False) -> None:
        response = requests.delete(
            f"{self.url}/v1/budgets/{budget_id}", headers={"authorization": f"Bearer {admin_key}"}, timeout=30
        )
        assert response.status_code == 200 or (missing_ok and response.status_code == 404), response.text

    def check(self, key: str, **identity: str) -> BudgetCheck:
        return check_budgets(self.url, api_key=key, timeout=30, **identity)

    def wait_for_usage(self, key: str, user: str, tokens: int) -> None:
        """Until ``user``'s usage in the check is exactly ``tokens`` (the run's export has arrived)."""
        deadline = time.monotonic() + 60
        used = -1.0
        while time.monotonic() < deadline:
            windows = self.check(key, user=user).windows
            used = windows[0].used if windows else -1.0
            if used == tokens:
                return
            assert used < tokens, f"the check counts {used} tokens, the API reported {tokens}"
            time.sleep(0.25)
        raise AssertionError(f"the check counts {used} tokens after 60 s, the API reported {tokens}")

    def replay(self, label: str, key: str) -> None:
        """Send every export of a captured run to ``/v1/<signal>`` over OTLP/HTTP, as it was sent."""
        for signal_name, raw, meta in capture_bodies(label):
            content_type = str(meta.get("content_type") or "application/x-protobuf")
            response = requests.post(
                f"{self.url}/v1/{signal_name}",
                data=raw.read_bytes(),
                headers={"content-type": content_type, "authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text


def run_hook(
    payload: dict[str, Any] | str, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``tokenscale hook ARGS`` as an assistant runs it: the event as JSON on stdin."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return subprocess.run(
        [*HOOK_COMMAND, *args],
        input=text,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
