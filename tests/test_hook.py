"""``tokenscale hook``: reading each assistant's hook input, naming the user, and the output contract."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

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


def test_a_spent_window_blocks_naming_the_budget_and_its_window() -> None:
    decision = decide({"allowed": False, "windows": [WINDOW_DAY, WINDOW_WEEK_USD]})
    assert decision == Decision(
        "block",
        "tokenscale: the user budget of alice@example.com (id b-day) is spent: 123,456 of 100,000 "
        "tokens used in its rolling 1 day. Ask your tokenscale admin to raise it, or wait until "
        "older usage leaves the window.",
        (WINDOW_DAY,),
    )


def test_above_the_warn_fraction_warns_and_below_allows() -> None:
    answer = {"allowed": True, "windows": [WINDOW_WEEK_USD]}
    assert decide(answer) == Decision(
        "warn",
        "tokenscale: 85% of the team budget of platform (id b-week) used: $42.50 of $50.00 in its "
        "rolling 7 days.",
        (WINDOW_WEEK_USD,),
    )
    assert decide(answer, warn_at=0.9).action == "allow"
    assert decide({"allowed": True, "windows": []}).action == "allow"


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
