"""``tokenscale hook`` stops a real Gemini CLI run once its user's budget is spent, and only then.

Gemini CLI (installed from npm, see tests/run.sh) runs ``gemini -p`` against a local stand-in for
the Gemini API (tests/fake_gemini.py), exports its telemetry over OTLP/gRPC to a real ``tokenscale
serve``, and runs ``tokenscale hook`` as its ``BeforeAgent`` and ``BeforeTool`` hooks, configured as
docs/deployment.md shows: the URL and the key file on the command line, as Gemini CLI documents a
sanitised environment for hooks. The user budget is on the ``installation.id`` Gemini CLI sends, which the
hook reads from the same ``~/.gemini/installation_id``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbservers import Server, fresh_database, server_data_dir
from fake_gemini import TOKENS_PER_CALL, TOOL_PROMPT_MARKER, FakeGemini
from hook_service import HOOK_COMMAND, Service

NPM_PREFIX = Path("/var/cache/tokenscale/npm")
TENANT = "acme"
DAY = 86400
#: The installation id Gemini CLI finds in ~/.gemini/installation_id and sends as installation.id.
INSTALLATION_ID = "0b5e7a52-41c9-4d1e-9a57-3c1f0e2d6b84"


def _gemini() -> str:
    found = shutil.which("gemini") or str(NPM_PREFIX / "node_modules" / ".bin" / "gemini")
    if not os.access(found, os.X_OK) or shutil.which("node") is None:
        pytest.skip(
            "Gemini CLI is not installed (npm install --prefix /var/cache/tokenscale/npm "
            "@google/gemini-cli, as tests/run.sh does; it needs Node.js)"
        )
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout
    major = int(version.strip().lstrip("v").split(".")[0] or 0) if version.strip() else 0
    if major < 20:
        pytest.skip(f"Gemini CLI needs Node.js 20 or later; this machine has {version.strip() or 'none'}")
    return found


class GeminiCli:
    """``gemini -p`` in a home and working directory of its own, hooks and telemetry configured."""

    def __init__(self, binary: str, root: Path, api: FakeGemini, service: Service, key: str) -> None:
        self.binary = binary
        self.home = root / "home"
        self.work = root / "work"
        (self.home / ".gemini").mkdir(parents=True)
        self.work.mkdir()
        (self.home / ".gemini" / "installation_id").write_text(INSTALLATION_ID)
        key_file = self.home / ".tokenscale-key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        self.api = api
        self.service = service
        self.key = key
        hook = shlex.join(
            [*HOOK_COMMAND, "--assistant", "gemini", "--url", service.url, "--api-key-file", str(key_file)]
        )
        handler = [{"type": "command", "command": hook, "timeout": 30000}]
        settings = {
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "hooks": {
                "BeforeAgent": [{"hooks": handler}],
                "BeforeTool": [{"matcher": "*", "hooks": handler}],
            },
        }
        (self.home / ".gemini" / "settings.json").write_text(json.dumps(settings))

    def run(self, prompt: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "GEMINI_API_KEY": "AIza-test-000",
            "GOOGLE_GEMINI_BASE_URL": self.api.url,
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "GEMINI_TELEMETRY_ENABLED": "true",
            "GEMINI_TELEMETRY_TARGET": "local",
            "GEMINI_TELEMETRY_OTLP_PROTOCOL": "grpc",
            "GEMINI_TELEMETRY_OTLP_ENDPOINT": f"http://127.0.0.1:{self.service.grpc_port}",
            "GEMINI_TELEMETRY_LOG_PROMPTS": "false",
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{self.key}",
        }
        return subprocess.run(
            [self.binary, "-p", prompt, "--yolo"],
            cwd=self.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def tool_prompt(self, marker: str) -> str:
        self.api.command = f"touch {self.work / marker}"
        return f"{TOOL_PROMPT_MARKER}: create the file {marker}"


@pytest.fixture
def api() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def service(pg_server: Server) -> Iterator[Service]:
    with fresh_database(pg_server) as url, server_data_dir() as data_dir:
        running = Service(url, data_dir).start()
        try:
            yield running
        finally:
            running.stop()


def test_gemini_cli_runs_until_its_users_budget_is_spent_then_is_blocked_and_fails_open(
    api: FakeGemini, service: Service, tmp_path: Path
) -> None:
    key = service.key(TENANT)
    admin = service.key(TENANT, ("read", "admin"))
    gemini = GeminiCli(_gemini(), tmp_path, api, service, key)
    budget = service.create_budget(
        admin,
        {
            "scope": "user",
            "scopeValue": INSTALLATION_ID,
            "windows": [{"unit": "tokens", "limit": 1_000_000, "windowSeconds": DAY}],
        },
    )

    # 1. Budget left: the turn and its shell command go through.
    first = gemini.run(gemini.tool_prompt("first"))
    assert (first.returncode, first.stdout.strip()) == (0, "Done."), first.stderr
    assert (gemini.work / "first").exists()
    calls = api.snapshot()
    assert [call.answered_tool_call for call in calls] == [False, True, False]  # routing, turn, reply
    assert [r["name"] for r in calls[2].function_responses] == ["run_shell_command"]
    # Its usage arrives over OTLP under the installation.id the hook also reads, exactly.
    service.wait_for_usage(key, INSTALLATION_ID, api.tokens)
    assert api.tokens == 3 * TOKENS_PER_CALL

    # 2. Spent (used == limit): the next prompt is denied before any API call.
    service.delete_budget(admin, budget["id"])
    spent = api.tokens
    budget = service.create_budget(
        admin,
        {
            "scope": "user",
            "scopeValue": INSTALLATION_ID,
            "windows": [{"unit": "tokens", "limit": spent, "windowSeconds": DAY}],
        },
    )
    reason = (
        f"tokenscale: budget spent: user {INSTALLATION_ID}: {spent} of {spent} tokens in the last 24 h "
        f"(budget {budget['id']}). Ask your tokenscale admin to raise it, or wait until older usage "
        "leaves the window."
    )
    blocked = gemini.run(gemini.tool_prompt("second"))
    assert (blocked.returncode, blocked.stdout) == (0, ""), blocked.stderr
    assert f"Hook system message: {reason}\n" in blocked.stderr
    assert f"[WARNING] Agent execution blocked: {reason}\n" in blocked.stderr
    assert len(api.snapshot()) == 3  # no new API call
    assert not (gemini.work / "second").exists()

    # 3. The service down: the same run goes through.
    service.stop()
    through = gemini.run(gemini.tool_prompt("third"))
    assert (through.returncode, through.stdout.strip()) == (0, "Done."), through.stderr
    assert (gemini.work / "third").exists()
    assert len(api.snapshot()) == 6
