"""``tokenscale hook``: reading each assistant's hook input, naming the user, and the output contract."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbservers import Server, fresh_database, server_data_dir
from ground_truth import ground_truth
from hook_service import Service, run_hook
from tokenscale.cli import main as cli_main
from tokenscale.commands.hook import (
    Decision,
    HookEvent,
    Identity,
    decide,
    parse_event,
    render,
    resolve_identity,
)
from tokenscale.instrumentation._budget import BudgetCheck

# Hook inputs as the assistants send them. Claude Code's are verbatim from Claude Code 2.1.332 (run
# against a local stand-in API); Codex's follow codex-rs/hooks/schema/generated/*.input.schema.json;
# Gemini CLI's follow docs/hooks/reference.md.
CLAUDE_PROMPT = {
    "session_id": "7a35cbc6-595c-4344-9b62-050ffe80c2ba",
    "transcript_path": "/home/dev/.claude/projects/-home-dev-work/7a35cbc6.jsonl",
    "cwd": "/home/dev/work",
    "prompt_id": "f5a062e0-6332-4913-b139-a84288a66ec4",
    "permission_mode": "default",
    "hook_event_name": "UserPromptSubmit",
    "prompt": "TOOLTEST: run the command",
}
CLAUDE_TOOL = {
    "session_id": "7a35cbc6-595c-4344-9b62-050ffe80c2ba",
    "transcript_path": "/home/dev/.claude/projects/-home-dev-work/7a35cbc6.jsonl",
    "cwd": "/home/dev/work",
    "prompt_id": "f5a062e0-6332-4913-b139-a84288a66ec4",
    "permission_mode": "default",
    "hook_event_name": "PreToolUse",
    "tool_name": "Bash",
    "tool_input": {"command": "touch marker", "description": "Run the command"},
    "tool_use_id": "toolu_fake0001",
}
CODEX_TOOL = {
    "session_id": "01a205e1-0bfe-7570-b005-d2bd631658ab",
    "turn_id": "1",
    "transcript_path": None,
    "cwd": "/home/dev/work",
    "hook_event_name": "PreToolUse",
    "model": "gpt-5.1-codex",
    "permission_mode": "default",
    "tool_name": "Bash",
    "tool_input": {"command": "echo hi"},
    "tool_use_id": "call-1",
}
CODEX_PROMPT = {
    "session_id": "01a205e1-0bfe-7570-b005-d2bd631658ab",
    "turn_id": "1",
    "transcript_path": None,
    "cwd": "/home/dev/work",
    "hook_event_name": "UserPromptSubmit",
    "model": "gpt-5.1-codex",
    "permission_mode": "default",
    "prompt": "say hi",
}
GEMINI_BASE = {
    "session_id": "s-1",
    "transcript_path": "/home/dev/.gemini/tmp/chats/s-1.json",
    "cwd": "/home/dev/work",
    "timestamp": "2026-11-23T10:00:00.000Z",
}
GEMINI_TOOL = {
    **GEMINI_BASE,
    "hook_event_name": "BeforeTool",
    "tool_name": "run_shell_command",
    "tool_input": {},
}
GEMINI_AGENT = {**GEMINI_BASE, "hook_event_name": "BeforeAgent", "prompt": "say hi"}
GEMINI_MODEL = {
    **GEMINI_BASE,
    "hook_event_name": "BeforeModel",
    "llm_request": {"model": "gemini-3.8-flash", "messages": [], "config": {}},
}

WINDOW_DAY: dict[str, Any] = {
    "budgetId": "b-day",
    "scope": "user",
    "scopeValue": "alice@example.com",
    "unit": "tokens",
    "limit": 100000,
    "used": 123456,
    "remaining": 0,
    "fraction": 1.23456,
    "windowSeconds": 86400,
    "windowStart": "2026-12-02T12:00:00Z",
    "windowEnd": "2026-12-03T12:00:00Z",
    "exceeded": True,
}
WINDOW_WEEK_USD: dict[str, Any] = {
    "budgetId": "b-week",
    "scope": "team",
    "scopeValue": "platform",
    "unit": "usd",
    "limit": 50.0,
    "used": 42.5,
    "remaining": 7.5,
    "fraction": 0.85,
    "windowSeconds": 7 * 86400,
    "windowStart": "2026-11-26T12:00:00Z",
    "windowEnd": "2026-12-03T12:00:00Z",
    "exceeded": False,
}


@pytest.mark.parametrize(
    ("data", "assistant", "event", "kind", "tool_name", "model"),
    [
        (CLAUDE_PROMPT, "claude", "UserPromptSubmit", "prompt", None, None),
        (CLAUDE_TOOL, "claude", "PreToolUse", "tool", "Bash", None),
        (CODEX_TOOL, "codex", "PreToolUse", "tool", "Bash", "gpt-5.1-codex"),
        (CODEX_PROMPT, "codex", "UserPromptSubmit", "prompt", None, "gpt-5.1-codex"),
        (GEMINI_TOOL, "gemini", "BeforeTool", "tool", "run_shell_command", None),
        (GEMINI_AGENT, "gemini", "BeforeAgent", "prompt", None, None),
        (GEMINI_MODEL, "gemini", "BeforeModel", "model", None, "gemini-3.8-flash"),
        ({**GEMINI_BASE, "hook_event_name": "AfterTool"}, "gemini", "AfterTool", None, None, None),
        ({"hook_event_name": "Stop", "session_id": "x"}, "claude", "Stop", None, None, None),
    ],
)
def test_each_assistant_event_is_read_and_told_apart(
    data: dict[str, Any],
    assistant: str,
    event: str,
    kind: str | None,
    tool_name: str | None,
    model: str | None,
) -> None:
    assert parse_event(json.dumps(data)) == HookEvent(assistant, event, kind, tool_name, model)


def test_an_explicit_assistant_wins_over_detection() -> None:
    assert parse_event(json.dumps(CLAUDE_TOOL), "codex").assistant == "codex"


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"tool_name": "Bash"}'])
def test_unreadable_input_fails_open_with_one_stderr_line(
    text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin(text))
    # A port nobody listens on: were the input read, the check would fail too; it must not be asked.
    assert cli_main(["hook", "--url", "http://127.0.0.1:9"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("tokenscale hook: ") and "fail-open" in err


def test_a_bad_command_line_or_setting_exits_1_never_2_which_would_block(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin(json.dumps(CLAUDE_TOOL)))
    with pytest.raises(SystemExit) as exited:
        cli_main(["hook", "--warn-at", "-1"])
    assert exited.value.code == 1
    assert "tokenscale hook: error: argument --warn-at: -1 is not above 0" in capsys.readouterr().err
    monkeypatch.setenv("TOKENSCALE_HOOK_TIMEOUT", "soon")
    assert cli_main(["hook"]) == 1
    assert capsys.readouterr() == ("", "tokenscale hook: $TOKENSCALE_HOOK_TIMEOUT: 'soon' is not a number\n")


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text


# --- the user -------------------------------------------------------------------------------------


def _claude_home(tmp_path: Path, **config: Any) -> Path:
    (tmp_path / ".claude.json").write_text(json.dumps(config))
    return tmp_path


CLAUDE_USER_ID = "7a4a7fc2c893baf8c6493658be214dbc9bd16a6422f29936d4d4cc77e0ffb193"


def test_claude_user_is_its_install_id_or_the_logins_email(tmp_path: Path) -> None:
    hook = parse_event(json.dumps(CLAUDE_TOOL))
    home = _claude_home(tmp_path, userID=CLAUDE_USER_ID)
    assert resolve_identity(hook, {}, home=home) == Identity(
        user=CLAUDE_USER_ID, tool="claude_code", user_source=f"{home / '.claude.json'} userID"
    )
    _claude_home(tmp_path, userID=CLAUDE_USER_ID, oauthAccount={"emailAddress": "alice@example.com"})
    assert resolve_identity(hook, {}, home=home).user == "alice@example.com"
    # CLAUDE_CONFIG_DIR moves the file, as it moves everything of Claude Code's.
    other = tmp_path / "cfg"
    other.mkdir()
    (other / ".claude.json").write_text(json.dumps({"userID": "f" * 64}))
    assert resolve_identity(hook, {"CLAUDE_CONFIG_DIR": str(other)}, home=home).user == "f" * 64


def test_override_order_user_env_resource_attributes_then_the_assistant(tmp_path: Path) -> None:
    hook = parse_event(json.dumps(CLAUDE_PROMPT))
    home = _claude_home(tmp_path, userID=CLAUDE_USER_ID)
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": "department=eng,team.id=platform,user.email=bob%40example.com",
        "TOKENSCALE_HOOK_USER": "carol@example.com",
    }
    assert resolve_identity(hook, env, home=home, user="dave@example.com").user == "dave@example.com"
    assert resolve_identity(hook, env, home=home).user == "carol@example.com"
    del env["TOKENSCALE_HOOK_USER"]
    identity = resolve_identity(hook, env, home=home)
    assert identity == Identity(
        user="bob@example.com",
        team="platform",
        tool="claude_code",
        user_source="OTEL_RESOURCE_ATTRIBUTES user.email",
    )
    assert identity.query() == {"user": "bob@example.com", "team": "platform", "tool": "claude_code"}
    assert resolve_identity(hook, env, home=home, team_attribute="department").team == "eng"
    assert resolve_identity(hook, {**env, "TOKENSCALE_HOOK_TEAM": "core"}, home=home).team == "core"


def test_gemini_user_is_the_google_account_or_the_installation_id(tmp_path: Path) -> None:
    hook = parse_event(json.dumps(GEMINI_MODEL))
    gemini = tmp_path / ".gemini"
    gemini.mkdir()
    (gemini / "installation_id").write_text("1e6b8553-c533-4be9-bfc8-110af1d36820\n")
    identity = resolve_identity(hook, {}, home=tmp_path)
    assert identity.query() == {
        "user": "1e6b8553-c533-4be9-bfc8-110af1d36820",
        "tool": "gemini_cli",
        "model": "gemini-3.8-flash",
    }
    (gemini / "google_accounts.json").write_text(json.dumps({"active": "erin@example.com", "old": []}))
    assert resolve_identity(hook, {}, home=tmp_path).user == "erin@example.com"


def test_codex_user_is_the_chatgpt_logins_email_and_none_with_an_api_key(tmp_path: Path) -> None:
    hook = parse_event(json.dumps(CODEX_TOOL))
    codex = tmp_path / ".codex"
    codex.mkdir()
    (codex / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": "sk-test", "tokens": None}))
    assert resolve_identity(hook, {}, home=tmp_path).query() == {"tool": "codex", "model": "gpt-5.1-codex"}
    claims = base64.urlsafe_b64encode(json.dumps({"email": "frank@example.com"}).encode()).rstrip(b"=")
    token = f"eyJhbGciOiJub25lIn0.{claims.decode()}.c2ln"
    (codex / "auth.json").write_text(json.dumps({"tokens": {"id_token": token}}))
    assert resolve_identity(hook, {}, home=tmp_path).user == "frank@example.com"


# --- decision and output ----------------------------------------------------------------------------


def _check(allowed: bool, *windows: dict[str, Any]) -> BudgetCheck:
    return BudgetCheck.from_json(
        {"allowed": allowed, "checkedAt": "2026-12-03T12:00:00Z", "windows": list(windows)}
    )


def test_a_spent_window_blocks_naming_the_budget_and_its_window() -> None:
    check = _check(False, WINDOW_DAY, WINDOW_WEEK_USD)
    assert decide(check) == Decision(
        "block",
        "tokenscale: budget spent: user alice@example.com: 123456 of 100000 tokens in the last 24 h "
        "(budget b-day). Ask your tokenscale admin to raise it, or wait until older usage leaves the "
        "window.",
        check.windows[:1],
    )
    both = _check(False, WINDOW_DAY, {**WINDOW_WEEK_USD, "exceeded": True, "fraction": 1.0})
    assert "; and 1 more window exceeded." in decide(both).message


def test_above_the_warn_fraction_warns_and_below_allows() -> None:
    check = _check(True, WINDOW_WEEK_USD)
    assert decide(check) == Decision(
        "warn",
        "tokenscale: 85% of a budget used: team platform: $42.50 of $50.00 in the last 7 days "
        "(budget b-week).",
        check.windows,
    )
    assert decide(check, warn_at=0.9) == Decision("allow", "", check.windows)
    assert decide(_check(True)) == Decision("allow")


BLOCK = Decision("block", "spent")
WARN = Decision("warn", "nearly spent")


@pytest.mark.parametrize(
    ("data", "decision", "stdout"),
    [
        (
            CLAUDE_TOOL,
            BLOCK,
            {
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": "spent",
                },
                "systemMessage": "spent",
            },
        ),
        (CLAUDE_PROMPT, BLOCK, {"decision": "block", "reason": "spent"}),
        (
            CODEX_TOOL,
            BLOCK,
            {
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": "spent",
                },
                "systemMessage": "spent",
            },
        ),
        (CODEX_PROMPT, BLOCK, {"decision": "block", "reason": "spent"}),
        (GEMINI_TOOL, BLOCK, {"decision": "deny", "reason": "spent", "systemMessage": "spent"}),
        (GEMINI_AGENT, BLOCK, {"decision": "deny", "reason": "spent", "systemMessage": "spent"}),
        (GEMINI_MODEL, BLOCK, {"decision": "deny", "reason": "spent", "systemMessage": "spent"}),
        (CLAUDE_TOOL, WARN, {"systemMessage": "nearly spent"}),
        (CODEX_PROMPT, WARN, {"systemMessage": "nearly spent"}),
        (GEMINI_MODEL, WARN, {"systemMessage": "nearly spent"}),
        (CLAUDE_TOOL, Decision("allow"), None),
        (CODEX_TOOL, Decision("allow"), None),
        (GEMINI_TOOL, Decision("allow"), {}),
    ],
)
def test_each_assistant_gets_its_documented_output(
    data: dict[str, Any], decision: Decision, stdout: dict[str, Any] | None
) -> None:
    code, out, err = render(parse_event(json.dumps(data)), decision)
    assert (code, err) == (0, "")
    assert (json.loads(out) if out else None) == stdout


# --- against a real service --------------------------------------------------------------------------

TENANT = "acme"
#: Who the captured runs are, as their telemetry says (and so as tokenscale stores them).
CLAUDE_CAPTURE_USER = "b9003eb9b3f07c6794b39bae802c39db8d09f29c7bf9135ed4c4e10cc7ab4683"
GEMINI_CAPTURE_USER = "1e6b8553-c533-4be9-bfc8-110af1d36820"
CAPTURE_TEAM = "otlp-test"
MONTH = 30 * 86400


def _tokens(label: str) -> int:
    """Every token of a captured run as budgets count them (input, cache read and write, output)."""
    kinds = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
    return sum(row[kind] for row in ground_truth(label).values() for kind in kinds)


@dataclass
class Served:
    service: Service
    reader: str
    admin: str


@pytest.fixture(scope="module")
def served(pg_server: Server) -> Iterator[Served]:
    """``tokenscale serve`` holding the captured Claude Code, Gemini CLI and Codex runs of tenant acme."""
    with fresh_database(pg_server) as url, server_data_dir() as data_dir:
        service = Service(url, data_dir).start()
        try:
            reader = service.key(TENANT)
            admin = service.key(TENANT, ("read", "admin"))
            for label in ("claude-grpc", "gemini-grpc", "codex-grpc"):
                service.replay(label, reader)
            yield Served(service, reader, admin)
        finally:
            service.stop()


@pytest.fixture
def budgets(served: Served) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create budgets of tenant acme for one test; they are deleted after it."""
    created: list[str] = []

    def make(scope: str, value: str | None, limit: int, seconds: int = MONTH) -> dict[str, Any]:
        body = {"scope": scope, "windows": [{"unit": "tokens", "limit": limit, "windowSeconds": seconds}]}
        if value is not None:
            body["scopeValue"] = value
        budget = served.service.create_budget(served.admin, body)
        created.append(budget["id"])
        return budget

    yield make
    for budget_id in created:
        served.service.delete_budget(served.admin, budget_id, missing_ok=True)


def _env(served: Served, home: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TOKENSCALE_API_URL": served.service.url,
        "TOKENSCALE_API_KEY": served.reader,
        **extra,
    }


def test_nothing_defined_allows_silently(served: Served, tmp_path: Path) -> None:
    env = _env(served, _claude_home(tmp_path, userID=CLAUDE_CAPTURE_USER))
    for payload, stdout in ((CLAUDE_TOOL, ""), (CODEX_PROMPT, ""), (GEMINI_MODEL, "{}\n")):
        result = run_hook(payload, env=env)
        assert (result.returncode, result.stdout, result.stderr) == (0, stdout, "")


def test_claude_user_budget_spent_blocks_prompt_and_tool(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    used = _tokens("claude-grpc")
    # Spent exactly: the captured run's usage equals the limit.
    budget = budgets("user", CLAUDE_CAPTURE_USER, used)
    env = _env(served, _claude_home(tmp_path, userID=CLAUDE_CAPTURE_USER))
    reason = (
        f"tokenscale: budget spent: user {CLAUDE_CAPTURE_USER}: {used} of {used} tokens in the last 30 "
        f"days (budget {budget['id']}). Ask your tokenscale admin to raise it, or wait until older "
        "usage leaves the window."
    )
    tool = run_hook(CLAUDE_TOOL, "--assistant", "claude", env=env)
    assert (tool.returncode, tool.stderr) == (0, "")
    assert json.loads(tool.stdout) == {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        },
        "systemMessage": reason,
    }
    prompt = run_hook(CLAUDE_PROMPT, env=env)
    assert (prompt.returncode, prompt.stderr, json.loads(prompt.stdout)) == (
        0,
        "",
        {"decision": "block", "reason": reason},
    )
    # Another user of the same tenant is not touched by it.
    other = run_hook(CLAUDE_PROMPT, "--user", "someone-else@example.com", env=env)
    assert (other.returncode, other.stdout, other.stderr) == (0, "", "")


def test_claude_warns_from_the_warn_fraction(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    used = _tokens("claude-grpc")
    limit = used * 10 // 9  # 90 % used
    budget = budgets("user", CLAUDE_CAPTURE_USER, limit)
    env = _env(served, _claude_home(tmp_path, userID=CLAUDE_CAPTURE_USER))
    result = run_hook(CLAUDE_PROMPT, env=env)
    percent = int(used / limit * 100)
    assert percent == 90
    assert (result.returncode, result.stderr, json.loads(result.stdout)) == (
        0,
        "",
        {
            "systemMessage": f"tokenscale: 90% of a budget used: user {CLAUDE_CAPTURE_USER}: {used} of "
            f"{limit} tokens in the last 30 days (budget {budget['id']})."
        },
    )
    quiet = run_hook(CLAUDE_PROMPT, "--warn-at", "0.95", env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    from_env = run_hook(CLAUDE_PROMPT, env={**env, "TOKENSCALE_HOOK_WARN_AT": "0.95"})
    assert (from_env.returncode, from_env.stdout, from_env.stderr) == (0, "", "")


def test_gemini_user_budget_spent_denies_agent_model_and_tool(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    used = _tokens("gemini-grpc")
    budget = budgets("user", GEMINI_CAPTURE_USER, used - 1)
    (tmp_path / ".gemini").mkdir()
    (tmp_path / ".gemini" / "installation_id").write_text(GEMINI_CAPTURE_USER)
    env = _env(served, tmp_path)
    reason = (
        f"tokenscale: budget spent: user {GEMINI_CAPTURE_USER}: {used} of {used - 1} tokens in the last 30 "
        f"days (budget {budget['id']}). Ask your tokenscale admin to raise it, or wait until older "
        "usage leaves the window."
    )
    for payload in (GEMINI_AGENT, GEMINI_MODEL, GEMINI_TOOL):
        result = run_hook(payload, env=env)
        assert (result.returncode, result.stderr) == (0, "")
        assert json.loads(result.stdout) == {"decision": "deny", "reason": reason, "systemMessage": reason}


def test_codex_tool_budget_and_a_team_budget_from_resource_attributes(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    codex = _tokens("codex-grpc")
    tool_budget = budgets("tool", "codex", codex)
    env = _env(served, tmp_path)
    result = run_hook(CODEX_PROMPT, env=env)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {
        "decision": "block",
        "reason": f"tokenscale: budget spent: tool codex: {codex} of {codex} tokens in the last 30 days "
        f"(budget {tool_budget['id']}). Ask your tokenscale admin to raise it, or wait until older usage "
        "leaves the window.",
    }
    served.service.delete_budget(served.admin, tool_budget["id"])
    # Every captured run carries team.id=otlp-test: the team's budget counts all three.
    team_used = _tokens("claude-grpc") + _tokens("gemini-grpc") + codex
    team_budget = budgets("team", CAPTURE_TEAM, team_used + 1)
    team_env = {**env, "OTEL_RESOURCE_ATTRIBUTES": f"department=capture,team.id={CAPTURE_TEAM}"}
    assert run_hook(CODEX_TOOL, env=team_env).stdout.startswith('{"systemMessage": "tokenscale: 99% of a')
    served.service.delete_budget(served.admin, team_budget["id"])
    team_budget = budgets("team", CAPTURE_TEAM, team_used)
    blocked = run_hook(CODEX_TOOL, env=team_env)
    assert json.loads(blocked.stdout)["hookSpecificOutput"]["permissionDecisionReason"] == (
        f"tokenscale: budget spent: team {CAPTURE_TEAM}: {team_used} of {team_used} tokens in the last "
        f"30 days (budget {team_budget['id']}). Ask your tokenscale admin to raise it, or wait until "
        "older usage leaves the window."
    )
    # Without the team attribute the team's budget does not apply.
    assert run_hook(CODEX_TOOL, env=env).stdout == ""


def test_the_key_from_a_file_for_a_bare_environment(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """Gemini CLI starts hooks with a sanitised environment: URL and key come from the command line."""
    budget = budgets("tenant", None, 0)
    key_file = tmp_path / "key"
    key_file.write_text(served.reader + "\n")
    bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = run_hook(GEMINI_AGENT, "--url", served.service.url, "--api-key-file", str(key_file), env=bare)
    assert (result.returncode, result.stderr) == (0, "")
    used = sum(_tokens(label) for label in ("claude-grpc", "gemini-grpc", "codex-grpc"))
    assert used == 41905
    assert json.loads(result.stdout)["reason"] == (
        f"tokenscale: budget spent: tenant: {used} of 0 tokens in the last 30 days (budget "
        f"{budget['id']}). Ask your tokenscale admin to raise it, or wait until older usage leaves the "
        "window."
    )


def test_fail_open_unreachable_slow_or_refused(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    budgets("tenant", None, 0)  # spent for everyone: only a failing check lets anything through
    env = _env(served, _claude_home(tmp_path, userID=CLAUDE_CAPTURE_USER))
    assert json.loads(run_hook(CLAUDE_PROMPT, env=env).stdout)["decision"] == "block"

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cases = [
            ({"TOKENSCALE_API_URL": unreachable}, "did not answer"),
            (
                {"API_KEY_FILE": str(tmp_path / "missing")},
                f"cannot read --api-key-file {tmp_path / 'missing'} (No such file or directory)",
            ),
            ({"TOKENSCALE_API_URL": slow, "TOKENSCALE_HOOK_TIMEOUT": "0.5"}, "did not answer (timed out)"),
            ({"TOKENSCALE_API_KEY": "tsk_not-a-key"}, f"HTTP 401 from {served.service.url}"),
        ]
        for change, why in cases:
            for payload, stdout in ((CLAUDE_PROMPT, ""), (CODEX_TOOL, ""), (GEMINI_TOOL, "{}\n")):
                started = time.monotonic()
                options = ["--api-key-file", change["API_KEY_FILE"]] if "API_KEY_FILE" in change else []
                result = run_hook(payload, *options, env={**env, **change})
                elapsed = time.monotonic() - started
                assert (result.returncode, result.stdout) == (0, stdout), result.stderr
                assert result.stderr.startswith("tokenscale hook: ")
                assert why in result.stderr and result.stderr.endswith("; allowing (fail-open)\n")
                assert result.stderr.count("\n") == 1
                assert elapsed < 10, elapsed


def test_the_hook_runs_in_an_instrumentation_only_install(
    served: Served, budgets: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """A developer's machine may have only the instrumentation: the hook needs none of the server."""
    budget = budgets("tool", "claude_code", 1)
    code = (
        "import sys\n"
        "for name in ('psycopg', 'psycopg_pool', 'grpc', 'starlette', 'uvicorn', 'genai_prices'):\n"
        "    sys.modules[name] = None\n"
        "from tokenscale.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "hook"],
        input=json.dumps(CLAUDE_PROMPT),
        env=_env(served, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    used = _tokens("claude-grpc")
    assert json.loads(done.stdout) == {
        "decision": "block",
        "reason": f"tokenscale: budget spent: tool claude_code: {used} of 1 tokens in the last 30 days "
        f"(budget {budget['id']}). Ask your tokenscale admin to raise it, or wait until older usage "
        "leaves the window.",
    }
