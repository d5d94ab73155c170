"""``tokenscale hook`` stops a real Claude Code run once its user's budget is spent, and only then.

Claude Code (installed from npm, see tests/run.sh) runs ``claude -p`` against a local stand-in for
Anthropic's API (tests/fake_anthropic.py), exports its telemetry over OTLP/gRPC to a real
``tokenscale serve`` (TimescaleDB, keys required), and runs ``tokenscale hook`` as its
``UserPromptSubmit`` and ``PreToolUse`` hooks. The user budget is on the ``user.id`` Claude Code
sends, which the hook reads from the same ``.claude.json``; the usage that spends it is the run's
own, arriving over OTLP.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbservers import Server, fresh_database, server_data_dir
from fake_anthropic import TOKENS_PER_CALL, TOOL_PROMPT_MARKER, FakeAnthropic
from hook_service import HOOK_COMMAND, Service

#: Where tests/run.sh installs Claude Code (npm --prefix); ``claude`` on PATH is used first.
NPM_PREFIX = Path("/var/cache/tokenscale/npm")
TENANT = "acme"
MODEL = "claude-opus-4-8"
DAY = 86400
#: The install id Claude Code finds in its .claude.json and sends as ``user.id``.
USER_ID = "5e1f" * 16


def _claude() -> str:
    found = shutil.which("claude") or str(NPM_PREFIX / "node_modules" / ".bin" / "claude")
    if not os.access(found, os.X_OK):
        pytest.skip(
            "Claude Code is not installed (npm install --prefix /var/cache/tokenscale/npm "
            "@anthropic-ai/claude-code, as tests/run.sh does)"
        )
    return found


class ClaudeCode:
    """``claude -p`` in a home and working directory of its own, hooks and telemetry configured."""

    def __init__(self, binary: str, root: Path, api: FakeAnthropic) -> None:
        self.binary = binary
        self.home = root / "home"
        self.work = root / "work"
        (self.home / ".claude").mkdir(parents=True)
        self.work.mkdir()
        # An existing install: Claude Code keeps this id and sends it as user.id.
        (self.home / ".claude.json").write_text(json.dumps({"userID": USER_ID}))
        self.api = api

    def hooks(self, *events: str) -> None:
        """Run ``tokenscale hook`` on these events (UserPromptSubmit, PreToolUse) from now on."""
        command = shlex.join([*HOOK_COMMAND, "--assistant", "claude"])
        handler = [{"type": "command", "command": command, "timeout": 30}]
        hooks: dict[str, Any] = {}
        for event in events:
            hooks[event] = [
                {"matcher": "*", "hooks": handler} if event == "PreToolUse" else {"hooks": handler}
            ]
        (self.home / ".claude" / "settings.json").write_text(json.dumps({"hooks": hooks}))

    def run(self, prompt: str, service: Service, key: str) -> ClaudeRun:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "ANTHROPIC_BASE_URL": self.api.url,
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{service.grpc_port}",
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{key}",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_LOGS_EXPORT_INTERVAL": "1000",
            # What the hook needs, as the settings' "env" object would give it.
            "TOKENSCALE_API_URL": service.url,
            "TOKENSCALE_API_KEY": key,
        }
        # stream-json with hook events: what each hook answered and what Claude Code made of it.
        command = [self.binary, "-p", prompt, "--model", MODEL, "--allowedTools", "Bash"]
        command += ["--output-format", "stream-json", "--verbose", "--include-hook-events"]
        done = subprocess.run(
            command, cwd=self.work, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stderr
        return ClaudeRun([json.loads(line) for line in done.stdout.splitlines() if line.strip()])

    def tool_prompt(self, marker: str) -> str:
        """A prompt the stand-in answers with ``touch <marker>`` in Bash."""
        self.api.command = f"touch {self.work / marker}"
        return f"{TOOL_PROMPT_MARKER}: create the file {marker}"


class ClaudeRun:
    """The events of one ``claude -p --output-format stream-json --verbose --include-hook-events``."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    @property
    def result(self) -> dict[str, Any]:
        return next(e for e in self.events if e.get("type") == "result")

    def hook_responses(self, event: str) -> list[dict[str, Any]]:
        """What ``tokenscale hook`` answered on ``event``: its exit code, stdout and stderr."""
        return [
            {key: e[key] for key in ("exit_code", "stdout", "stderr")}
            for e in self.events
            if e.get("subtype") == "hook_response" and e.get("hook_event") == event
        ]

    def notices(self) -> list[str]:
        """The messages Claude Code shows the user (a hook's systemMessage, a blocked prompt)."""
        return [str(e["content"]) for e in self.events if e.get("subtype") == "informational"]

    def blocked_prompt(self) -> dict[str, Any] | None:
        return next((e["prompt_submit_outcome"] for e in self.events if "prompt_submit_outcome" in e), None)


@pytest.fixture
def api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def service(tsdb_server: Server) -> Iterator[Service]:
    with fresh_database(tsdb_server) as url, server_data_dir() as data_dir:
        running = Service(url, data_dir).start()
        try:
            yield running
        finally:
            running.stop()


def test_claude_code_runs_until_its_users_budget_is_spent_then_is_blocked(
    api: FakeAnthropic, service: Service, tmp_path: Path
) -> None:
    claude = ClaudeCode(_claude(), tmp_path, api)
    key = service.key(TENANT)
    admin = service.key(TENANT, ("read", "admin"))
    budget = service.create_budget(
        admin,
        {
            "scope": "user",
            "scopeValue": USER_ID,
            "windows": [{"unit": "tokens", "limit": 1_000_000, "windowSeconds": DAY}],
        },
    )
    claude.hooks("UserPromptSubmit", "PreToolUse")

    # 1. Budget left: the prompt and the Bash call go through; both hooks answer nothing.
    first = claude.run(claude.tool_prompt("first"), service, key)
    assert first.result["result"] == "Done."
    assert (claude.work / "first").exists()
    silent = [{"exit_code": 0, "stdout": "", "stderr": ""}]
    assert first.hook_responses("UserPromptSubmit") == silent
    assert first.hook_responses("PreToolUse") == silent
    calls = api.snapshot()
    assert [call.answered_tool_use for call in calls] == [True, False]
    assert calls[1].tool_results == ["(Bash completed with no output)"]
    # Its usage arrives over OTLP, under the user.id the hook also reads: exactly what the API reported.
    service.wait_for_usage(key, USER_ID, api.tokens)
    assert api.tokens == 2 * TOKENS_PER_CALL

    # 2. One token left: a plain prompt still goes through, with a warning, and spends the budget.
    service.delete_budget(admin, budget["id"])
    limit = api.tokens + 1
    budget = service.create_budget(
        admin,
        {
            "scope": "user",
            "scopeValue": USER_ID,
            "windows": [{"unit": "tokens", "limit": limit, "windowSeconds": DAY}],
        },
    )
    used = api.tokens
    second = claude.run("say hi", service, key)
    assert second.result["result"] == "Done."
    assert second.notices() == [
        f"UserPromptSubmit says: tokenscale: 99% of a budget used: user {USER_ID}: {used} of {limit} "
        f"tokens in the last 24 h (budget {budget['id']})."
    ]
    service.wait_for_usage(key, USER_ID, api.tokens)
    spent = api.tokens
    assert spent == 3 * TOKENS_PER_CALL
    assert service.check(key, user=USER_ID).allowed is False
    reason = (
        f"tokenscale: budget spent: user {USER_ID}: {spent} of {limit} tokens in the last 24 h "
        f"(budget {budget['id']}). Ask your tokenscale admin to raise it, or wait until older usage "
        "leaves the window."
    )

    # 3. Spent: the next prompt is blocked before it reaches the API, with the reason.
    blocked = claude.run(claude.tool_prompt("third"), service, key)
    assert blocked.blocked_prompt() == {"kind": "blocked_by_hook", "prompt_kept": False, "reason": reason}
    assert blocked.result["num_turns"] == 0
    assert len(api.snapshot()) == 3  # no new API call
    assert not (claude.work / "third").exists()

    # 4. With only the PreToolUse hook, the model is asked but its Bash call is refused: Claude Code
    # tells the model why and reports the denial.
    claude.hooks("PreToolUse")
    refused = claude.run(claude.tool_prompt("fourth"), service, key)
    assert not (claude.work / "fourth").exists()
    assert [denial["tool_name"] for denial in refused.result["permission_denials"]] == ["Bash"]
    calls = api.snapshot()[3:]
    assert [call.answered_tool_use for call in calls] == [True, False]
    assert len(calls[1].tool_results) == 1 and reason in calls[1].tool_results[0]


def test_claude_code_runs_when_the_service_is_down(
    api: FakeAnthropic, service: Service, tmp_path: Path
) -> None:
    claude = ClaudeCode(_claude(), tmp_path, api)
    key = service.key(TENANT)
    admin = service.key(TENANT, ("read", "admin"))
    # A tenant budget of 0 tokens: while the service answers, nothing is allowed.
    service.create_budget(
        admin, {"scope": "tenant", "windows": [{"unit": "tokens", "limit": 0, "windowSeconds": DAY}]}
    )
    claude.hooks("UserPromptSubmit", "PreToolUse")
    blocked = claude.run(claude.tool_prompt("before"), service, key)
    outcome = blocked.blocked_prompt()
    assert outcome is not None
    assert outcome["reason"].startswith("tokenscale: budget spent: tenant: 0 of 0 tokens in the last 24 h")
    assert api.snapshot() == []

    url = service.url
    service.stop()
    through = claude.run(claude.tool_prompt("after"), service, key)
    assert through.result["result"] == "Done."
    assert (claude.work / "after").exists()
    assert [call.answered_tool_use for call in api.snapshot()] == [True, False]
    # Each hook let its action through with its one-line note.
    note = (
        f"tokenscale hook: budget check unavailable: {url} did not answer ([Errno 111] Connection "
        "refused); allowing (fail-open)\n"
    )
    fail_open = [{"exit_code": 0, "stdout": "", "stderr": note}]
    assert through.hook_responses("UserPromptSubmit") == fail_open
    assert through.hook_responses("PreToolUse") == fail_open
