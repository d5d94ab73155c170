"""``tokenscale hook``: a coding assistant's hook that asks the budget check and blocks or warns.

Claude Code (``PreToolUse``, ``UserPromptSubmit``), Codex CLI (the same two events, Claude's output
shapes) and Gemini CLI (``BeforeTool``, ``BeforeAgent``, ``BeforeModel``) run a command hook with the
event as JSON on stdin and read the decision from its exit status and stdout. This module reads
that event, names the user the assistant's own telemetry names (so that a budget on ``user``
matches the usage tokenscale stores for it), asks ``GET /v1/budgets/check``, and answers:

- a window is exceeded: the documented "block" output of that assistant and event, with a reason
  naming the budget and its window;
- a window is at or above the warn fraction: a warning shown to the user (``systemMessage``);
- otherwise nothing (Gemini CLI: ``{}``).

It FAILS OPEN: when the service is unreachable, slow (past ``--timeout``), refuses the key or
answers something unreadable, the action goes ahead, exit status 0, and one line on stderr says
why. A hook that cannot read its input does the same: a budget hook must never stop work for a
reason other than a spent budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

from tokenscale.instrumentation._budget import BudgetCheck, BudgetWindowStatus, check_budgets

__all__ = [
    "ASSISTANTS",
    "Decision",
    "HookEvent",
    "Identity",
    "build_parser",
    "decide",
    "main",
    "parse_event",
    "render",
    "resolve_identity",
]

#: The assistants whose hook contract the command speaks.
ASSISTANTS: Final = ("claude", "codex", "gemini")

#: The tool each assistant's usage is stored under (``usage_events.tool``, see mapping.rules).
TOOL_OF: Final[Mapping[str, str]] = {"claude": "claude_code", "codex": "codex", "gemini": "gemini_cli"}

#: Events the hook acts on, per assistant: the kind of action each one precedes.
EVENTS: Final[Mapping[str, Mapping[str, str]]] = {
    "claude": {"PreToolUse": "tool", "UserPromptSubmit": "prompt"},
    "codex": {"PreToolUse": "tool", "UserPromptSubmit": "prompt"},
    "gemini": {"BeforeTool": "tool", "BeforeAgent": "prompt", "BeforeModel": "model"},
}

ENV_USER: Final = "TOKENSCALE_HOOK_USER"
ENV_TEAM: Final = "TOKENSCALE_HOOK_TEAM"
ENV_WARN_AT: Final = "TOKENSCALE_HOOK_WARN_AT"
ENV_TIMEOUT: Final = "TOKENSCALE_HOOK_TIMEOUT"
DEFAULT_API_URL: Final = "http://127.0.0.1:4318"
DEFAULT_TIMEOUT_SECONDS: Final = 1.5
DEFAULT_WARN_AT: Final = 0.8
#: The resource attribute that names a team (``OTEL_RESOURCE_ATTRIBUTES``), as budgets on team use.
DEFAULT_TEAM_ATTRIBUTE: Final = "team.id"

NOTE_PREFIX: Final = "tokenscale hook:"


class HookInputError(ValueError):
    """The hook's stdin is not an event this command can read."""


@dataclass(frozen=True, slots=True)
class HookEvent:
    """The part of an assistant's hook input the budget check needs."""

    assistant: str
    event: str
    #: ``tool``, ``prompt`` or ``model``: what the event precedes; None for an event not enforced on.
    kind: str | None
    tool_name: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who and what a check is for; None fields are left out of the check's query."""

    user: str | None = None
    team: str | None = None
    tool: str | None = None
    model: str | None = None
    #: Where ``user`` came from (e.g. ``~/.claude.json userID``): what to look at when a budget misses.
    user_source: str | None = None

    def query(self) -> dict[str, str]:
        """The check's query parameters."""
        pairs = {"user": self.user, "team": self.team, "tool": self.tool, "model": self.model}
        return {key: value for key, value in pairs.items() if value}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the hook answers: block (with a reason), warn (with a message), or nothing."""

    action: str  # "block" | "warn" | "allow"
    message: str = ""
    windows: tuple[BudgetWindowStatus, ...] = field(default=())


# --- reading the event ------------------------------------------------------------------------------


def detect_assistant(data: Mapping[str, Any]) -> str:
    """The assistant that sent ``data``: Gemini CLI's events are its own; Codex adds ``turn_id``."""
    event = data.get("hook_event_name")
    if event in EVENTS["gemini"] or event in ("AfterTool", "AfterAgent", "AfterModel", "BeforeToolSelection"):
        return "gemini"
    if "turn_id" in data:
        return "codex"
    return "claude"


def parse_event(text: str, assistant: str | None = None) -> HookEvent:
    """The hook input ``text`` (JSON on stdin) as a :class:`HookEvent`; :class:`HookInputError`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise HookInputError(f"stdin is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HookInputError("stdin is not a JSON object")
    event = data.get("hook_event_name")
    if not isinstance(event, str) or not event:
        raise HookInputError("stdin has no hook_event_name")
    who = assistant or detect_assistant(data)
    kind = EVENTS[who].get(event)
    tool_name = data.get("tool_name") if isinstance(data.get("tool_name"), str) else None
    model = data.get("model") if isinstance(data.get("model"), str) else None  # Codex sends it
    request = data.get("llm_request")
    if model is None and isinstance(request, dict) and isinstance(request.get("model"), str):
        model = request["model"]  # Gemini CLI's BeforeModel
    return HookEvent(who, event, kind, tool_name, model or None)


# --- who the user is ---------------------------------------------------------------------------------


def resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` as a dict (the W3C-baggage-like ``k=v,k=v`` with %-encoding)."""
    from urllib.parse import unquote  # noqa: PLC0415

    found: dict[str, str] = {}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            found[key.strip()] = unquote(value.strip())
    return found


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _claude_user(env: Mapping[str, str], home: Path) -> tuple[str | None, str | None]:
    """Claude Code's ``user.email`` (with a login) else ``user.id``: both from its ``.claude.json``.

    Claude Code keeps the file in ``$CLAUDE_CONFIG_DIR`` when set, else in the home directory.
    ``userID`` is the 64-hex install id its telemetry sends as ``user.id``; a login adds
    ``oauthAccount.emailAddress``, sent as ``user.email``."""
    config_dir = env.get("CLAUDE_CONFIG_DIR")
    path = Path(config_dir) / ".claude.json" if config_dir else home / ".claude.json"
    data = _read_json(path)
    account = data.get("oauthAccount")
    email = _text(account.get("emailAddress")) if isinstance(account, dict) else None
    if email:
        return email, f"{path} oauthAccount.emailAddress"
    user_id = _text(data.get("userID"))
    return (user_id, f"{path} userID") if user_id else (None, None)


def _gemini_user(env: Mapping[str, str], home: Path) -> tuple[str | None, str | None]:
    """Gemini CLI's ``user.email`` (signed in with Google) else ``installation.id``."""
    base = Path(env["GEMINI_CLI_HOME"]) / ".gemini" if env.get("GEMINI_CLI_HOME") else home / ".gemini"
    accounts = base / "google_accounts.json"
    email = _text(_read_json(accounts).get("active"))
    if email:
        return email, f"{accounts} active"
    path = base / "installation_id"
    try:
        installation = _text(path.read_text(encoding="utf-8"))
    except OSError:
        installation = None
    return (installation, str(path)) if installation else (None, None)


def _codex_user(env: Mapping[str, str], home: Path) -> tuple[str | None, str | None]:
    """Codex CLI's ``user.email`` with a ChatGPT login: the ``email`` claim of its stored id token.

    With an API key Codex's telemetry names no user at all (only ``conversation.id``), so neither
    can the hook: pass ``--user`` and send the same identity as a resource attribute."""
    import base64  # noqa: PLC0415

    base = Path(env["CODEX_HOME"]) if env.get("CODEX_HOME") else home / ".codex"
    path = base / "auth.json"
    tokens = _read_json(path).get("tokens")
    token = tokens.get("id_token") if isinstance(tokens, dict) else None
    if not isinstance(token, str) or token.count(".") != 2:
        return None, None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None, None
    email = _text(claims.get("email")) if isinstance(claims, dict) else None
    return (email, f"{path} id_token email") if email else (None, None)


_USER_READERS: Final[Mapping[str, Callable[[Mapping[str, str], Path], tuple[str | None, str | None]]]] = {
    "claude": _claude_user,
    "gemini": _gemini_user,
    "codex": _codex_user,
}


def resolve_identity(
    hook: HookEvent,
    env: Mapping[str, str],
    *,
    home: Path | None = None,
    user: str | None = None,
    team: str | None = None,
    tool: str | None = None,
    model: str | None = None,
    team_attribute: str = DEFAULT_TEAM_ATTRIBUTE,
) -> Identity:
    """Who the check is for, first found wins:

    - user: ``--user``, ``$TOKENSCALE_HOOK_USER``, ``user.email`` then ``user.id`` of
      ``OTEL_RESOURCE_ATTRIBUTES`` (tokenscale stores a resource's identity as the point's when the
      point has none), then the identity the assistant itself puts on its telemetry (see the
      ``_*_user`` readers: an e-mail when logged in, else its install id);
    - team: ``--team``, ``$TOKENSCALE_HOOK_TEAM``, ``team_attribute`` of ``OTEL_RESOURCE_ATTRIBUTES``;
    - tool: ``--tool``, else the assistant's tool as tokenscale stores it;
    - model: ``--model``, else the model the event names (Codex, Gemini CLI's ``BeforeModel``).
    """
    attributes = resource_attributes(env)
    source: str | None = None
    chosen = user or None
    if chosen:
        source = "--user"
    elif env.get(ENV_USER):
        chosen, source = env[ENV_USER], f"${ENV_USER}"
    else:
        for key in ("user.email", "user.id"):
            if attributes.get(key):
                chosen, source = attributes[key], f"OTEL_RESOURCE_ATTRIBUTES {key}"
                break
        else:
            chosen, source = _USER_READERS[hook.assistant](env, home if home is not None else Path.home())
    team_value = team or env.get(ENV_TEAM) or attributes.get(team_attribute) or None
    return Identity(
        user=chosen,
        team=team_value,
        tool=tool or TOOL_OF[hook.assistant],
        model=model or hook.model,
        user_source=source,
    )


# --- the decision ------------------------------------------------------------------------------------


def _window_text(window: BudgetWindowStatus) -> str:
    """``user alice@example.com: 1200 of 1000 tokens in the last 24 h (budget <id>)``."""
    return f"{window.describe()} (budget {window.budget_id})"


def decide(check: BudgetCheck, *, warn_at: float = DEFAULT_WARN_AT) -> Decision:
    """Block, warn or allow from the check's answer (its windows come tightest first)."""
    exceeded = check.exceeded
    if not check.allowed or exceeded:
        more = len(exceeded) - 1
        detail = _window_text(exceeded[0]) if exceeded else "a budget window is exceeded"
        message = (
            f"tokenscale: budget spent: {detail}"
            + (f"; and {more} more window{'s' if more != 1 else ''} exceeded" if more > 0 else "")
            + ". Ask your tokenscale admin to raise it, or wait until older usage leaves the window."
        )
        return Decision("block", message, exceeded)
    warned = tuple(w for w in check.windows if w.fraction >= warn_at)
    if warned:
        first = warned[0]
        message = f"tokenscale: {int(first.fraction * 100)}% of a budget used: {_window_text(first)}."
        return Decision("warn", message, warned)
    return Decision("allow", "", check.windows)


def render(hook: HookEvent, decision: Decision) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) that ``hook.assistant`` reads as ``decision`` for ``hook.event``.

    Every answer is JSON on exit status 0, as each assistant documents it:

    - Claude Code / Codex ``PreToolUse``: ``hookSpecificOutput.permissionDecision = "deny"`` with
      ``permissionDecisionReason`` (told to the model; Codex refuses the call and shows it);
    - Claude Code / Codex ``UserPromptSubmit``: ``decision = "block"`` with ``reason`` (the prompt is
      not processed; the reason is shown to the user);
    - Gemini CLI ``BeforeTool`` / ``BeforeAgent`` / ``BeforeModel``: ``decision = "deny"`` with
      ``reason``;
    - a warning: ``systemMessage`` (shown to the user by all three); a block carries it too.
    """
    gemini = hook.assistant == "gemini"
    if decision.action == "allow" or hook.kind is None:
        return 0, "{}\n" if gemini else "", ""
    if decision.action == "warn":
        return 0, json.dumps({"systemMessage": decision.message}) + "\n", ""
    payload: dict[str, Any]
    if gemini:
        payload = {"decision": "deny", "reason": decision.message, "systemMessage": decision.message}
    elif hook.event == "PreToolUse":
        payload = {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": decision.message,
            },
            "systemMessage": decision.message,
        }
    else:
        payload = {"decision": "block", "reason": decision.message}
    return 0, json.dumps(payload) + "\n", ""


# --- the check ---------------------------------------------------------------------------------------


class CheckUnavailableError(Exception):
    """The budget check gave no usable answer (fail open)."""


def ask_check(base_url: str, api_key: str | None, identity: Identity, timeout: float) -> BudgetCheck:
    """The budget check's answer for ``identity``; :class:`CheckUnavailableError` on any failure."""
    import urllib.error  # noqa: PLC0415

    try:
        return check_budgets(
            base_url,
            api_key=api_key or "",
            user=identity.user,
            team=identity.team,
            tool=identity.tool,
            model=identity.model,
            timeout=timeout,
        )
    except urllib.error.HTTPError as exc:
        raise CheckUnavailableError(f"HTTP {exc.code} from {base_url}") from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckUnavailableError(f"{base_url} did not answer ({reason})") from None
    except ValueError as exc:
        raise CheckUnavailableError(f"{base_url} answered no budget check ({exc})") from None


# --- the command -------------------------------------------------------------------------------------

_DESCRIPTION = """\
Run by a coding assistant as a hook: reads the hook event (JSON) on stdin, asks tokenscale's
budget check (GET /v1/budgets/check) for the user, team, tool and model, and blocks the prompt,
model call or tool call when a budget window is spent, or warns at --warn-at of a window.
Fails open: with the service unreachable, slow (past --timeout) or refusing the key, the action
goes ahead (exit 0) and one line on stderr says why.
"""

_EPILOG = """\
settings (see docs/deployment.md, "Budgets in coding assistants"):

  Claude Code, ~/.claude/settings.json (or managed settings):
    {"env": {"TOKENSCALE_API_URL": "https://tokenscale.example.internal",
             "TOKENSCALE_API_KEY": "tsk_..."},
     "hooks": {
       "UserPromptSubmit": [{"hooks": [{"type": "command",
                                         "command": "tokenscale hook --assistant claude",
                                         "timeout": 10}]}],
       "PreToolUse": [{"matcher": "*", "hooks": [{"type": "command",
                                                   "command": "tokenscale hook --assistant claude",
                                                   "timeout": 10}]}]}}

  Gemini CLI, ~/.gemini/settings.json (hooks get a bare environment: URL and key as options):
    {"hooks": {
       "BeforeAgent": [{"hooks": [{"type": "command", "timeout": 10000, "command":
         "tokenscale hook --assistant gemini --url https://ts.example --api-key-file ~/.ts-key"}]}],
       "BeforeTool": [{"matcher": "*", "hooks": [{"type": "command", "timeout": 10000, "command":
         "tokenscale hook --assistant gemini --url https://ts.example --api-key-file ~/.ts-key"}]}]}}

  Codex CLI, ~/.codex/config.toml:
    [[hooks.UserPromptSubmit]]
    [[hooks.UserPromptSubmit.hooks]]
    type = "command"
    command = "tokenscale hook --assistant codex"
    timeout = 10
    [[hooks.PreToolUse]]
    matcher = "*"
    [[hooks.PreToolUse.hooks]]
    type = "command"
    command = "tokenscale hook --assistant codex"
    timeout = 10

the user: --user, else $TOKENSCALE_HOOK_USER, else user.email / user.id of
OTEL_RESOURCE_ATTRIBUTES, else what the assistant's own telemetry sends (Claude Code: the
login's e-mail, else userID of ~/.claude.json; Gemini CLI: the Google account, else
~/.gemini/installation_id; Codex: the ChatGPT login's e-mail, else none).
exit status: 0 (the decision is in the JSON on stdout); 1 for a bad command line or setting
(assistants show it as a failed hook and go on; 2 would block).
"""


#: The exit status of a bad command line or setting. Not 2: every assistant reads 2 as "block", and
#: a misconfigured hook must not stop work; 1 is shown to the user as a failed hook and ignored.
USAGE_ERROR_STATUS: Final = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR_STATUS, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "tokenscale hook") -> argparse.ArgumentParser:
    """The ``tokenscale hook`` argument parser (a bad command line exits with status 1, not 2)."""
    parser = _Parser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--assistant",
        choices=ASSISTANTS,
        help="the assistant running the hook (default: told apart by the event: Gemini CLI's events "
        "are its own, Codex sends turn_id, else Claude Code)",
    )
    parser.add_argument(
        "--url", help=f"tokenscale's HTTP base URL (env TOKENSCALE_API_URL; default {DEFAULT_API_URL})"
    )
    parser.add_argument("--api-key", help="API key with the read scope (env TOKENSCALE_API_KEY)")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="read the API key from FILE (for assistants that start hooks with a bare environment, "
        "and to keep the key off the command line)",
    )
    parser.add_argument("--user", help=f"the user to check (env {ENV_USER}; default: see below)")
    parser.add_argument(
        "--team",
        help=f"the team to check (env {ENV_TEAM}; default: --team-attribute of OTEL_RESOURCE_ATTRIBUTES)",
    )
    parser.add_argument(
        "--team-attribute",
        default=DEFAULT_TEAM_ATTRIBUTE,
        help=f"resource attribute naming the team, as the service's budget_team_attribute "
        f"(default {DEFAULT_TEAM_ATTRIBUTE})",
    )
    parser.add_argument("--tool", help="the tool to check (default: the assistant's, e.g. claude_code)")
    parser.add_argument("--model", help="the model to check (default: the one the event names, if any)")
    parser.add_argument(
        "--warn-at",
        type=_fraction,
        help=f"warn from this fraction of a window (env {ENV_WARN_AT}; default {DEFAULT_WARN_AT}; "
        "1 or more: never)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        help=f"seconds to wait for the check before failing open (env {ENV_TIMEOUT}; "
        f"default {DEFAULT_TIMEOUT_SECONDS})",
    )
    return parser


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def _seconds(text: str) -> float:
    value = _fraction(text)
    if value > 60:
        raise argparse.ArgumentTypeError(f"{text} s is longer than a hook should wait (60 s at most)")
    return value


def _setting(
    given: float | None, env: Mapping[str, str], name: str, default: float, check: Callable[[str], float]
) -> float:
    if given is not None:
        return given
    text = env.get(name)
    if not text:
        return default
    try:
        return check(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"${name}: {exc}") from None


def _fail_open(hook: HookEvent, why: str, stdout: TextIO, stderr: TextIO) -> int:
    """Let the action through, saying why on one stderr line."""
    code, out, _ = render(hook, Decision("allow"))
    stdout.write(out)
    print(f"{NOTE_PREFIX} {why}; allowing (fail-open)", file=stderr)
    return code


def run(
    args: argparse.Namespace,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run a parsed ``tokenscale hook``; the exit status."""
    environ = os.environ if env is None else env
    try:
        warn_at = _setting(args.warn_at, environ, ENV_WARN_AT, DEFAULT_WARN_AT, _fraction)
        timeout = _setting(args.timeout, environ, ENV_TIMEOUT, DEFAULT_TIMEOUT_SECONDS, _seconds)
    except argparse.ArgumentTypeError as exc:
        print(f"{NOTE_PREFIX} {exc}", file=stderr)
        return USAGE_ERROR_STATUS
    try:
        hook = parse_event(stdin.read(), args.assistant)
    except HookInputError as exc:
        unknown = HookEvent(args.assistant or "claude", "", None)
        return _fail_open(unknown, str(exc), stdout, stderr)
    if hook.kind is None:
        code, out, _ = render(hook, Decision("allow"))
        stdout.write(out)
        print(f"{NOTE_PREFIX} {hook.event} is not an event it checks budgets on; nothing done", file=stderr)
        return code
    identity = resolve_identity(
        hook,
        environ,
        user=args.user,
        team=args.team,
        tool=args.tool,
        model=args.model,
        team_attribute=args.team_attribute,
    )
    url = args.url or environ.get("TOKENSCALE_API_URL") or DEFAULT_API_URL
    key = args.api_key or environ.get("TOKENSCALE_API_KEY") or None
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.expanduser().read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            why = f"cannot read --api-key-file {args.api_key_file} ({exc.strerror or exc})"
            return _fail_open(hook, why, stdout, stderr)
    try:
        answer = ask_check(url, key, identity, timeout)
    except CheckUnavailableError as exc:
        return _fail_open(hook, f"budget check unavailable: {exc}", stdout, stderr)
    code, out, err = render(hook, decide(answer, warn_at=warn_at))
    stdout.write(out)
    if err:
        stderr.write(err)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``tokenscale hook [OPTIONS]``: parse, run on the process's stdin/stdout; the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    return run(args, sys.stdin, sys.stdout, sys.stderr)
