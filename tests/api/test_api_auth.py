"""API keys and tenants: hashed storage, scopes, the cache and revocation, anonymous access, the OTLP hook."""

from __future__ import annotations

import argparse
import hashlib
import io
import time

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tokenscale.api.commands import add_subcommands, run_command
from tokenscale.auth import (
    AuthenticationError,
    AuthPolicy,
    KeyCache,
    PermissionDeniedError,
    Principal,
    authenticate,
    bearer_token,
    create_key,
    is_loopback,
    list_keys,
    revoke_key,
)


def test_keys_store_only_a_hash_and_a_display_prefix(api_url: str) -> None:
    with psycopg.connect(api_url) as conn:
        secret = create_key(conn, "acme", ["ingest", "read"], "ci")
        assert secret.startswith("tsk_") and len(secret) > 40
        stored = conn.execute("SELECT * FROM tokenscale.api_keys").fetchall()
        text = repr(stored)
        assert secret not in text and secret[12:] not in text
        [key] = list_keys(conn, "acme")
        assert (key.tenant, key.name, key.scopes, key.prefix, key.revoked_at) == (
            "acme",
            "ci",
            ("ingest", "read"),
            secret[:12],
            None,
        )
        digest = conn.execute("SELECT hash FROM tokenscale.api_keys").fetchone()
        assert digest is not None and bytes(digest[0]) == hashlib.sha256(secret.encode()).digest()
        principal = authenticate(conn, secret, cache=KeyCache())
        assert principal == Principal("acme", frozenset({"ingest", "read"}), key.id)
        assert authenticate(conn, secret + "x", cache=KeyCache()) is None
        assert authenticate(conn, "Bearer nonsense", cache=KeyCache()) is None
        with pytest.raises(ValueError, match="scopes"):
            create_key(conn, "acme", ["write"], "")
        with pytest.raises(ValueError, match="tenant"):
            create_key(conn, "bad tenant", ["read"], "")


def test_revocation_is_honoured_within_the_cache_ttl(api_url: str) -> None:
    with psycopg.connect(api_url, autocommit=True) as conn:
        secret = create_key(conn, "acme", ["read"], "")
        other_process = KeyCache(ttl=0.3)  # another server's cache, which revoke_key cannot clear
        assert authenticate(conn, secret, cache=other_process) is not None
        [key] = list_keys(conn)
        assert revoke_key(conn, key.prefix) is True
        assert revoke_key(conn, key.id) is False  # already revoked
        assert authenticate(conn, secret, cache=other_process) is not None  # still cached
        time.sleep(0.35)
        assert authenticate(conn, secret, cache=other_process) is None
        assert list_keys(conn, include_revoked=False) == []


def test_bearer_token_forms() -> None:
    assert bearer_token({"Authorization": "Bearer tsk_a"}) == "tsk_a"
    assert bearer_token({"authorization": "bearer  tsk_b "}) == "tsk_b"
    assert bearer_token({"authorization": "tsk_c"}) == "tsk_c"
    assert bearer_token({"x-api-key": "tsk_d"}) == "tsk_d"
    assert bearer_token({"authorization": "Basic abc def"}) is None
    assert bearer_token({}) is None


def test_anonymous_access_only_on_loopback_without_required_auth(api_url: str) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    with ConnectionPool(api_url, min_size=1, max_size=2) as pool:
        for host, require, anonymous in [
            ("127.0.0.1", False, True),
            ("::1", False, True),
            ("127.0.0.1", True, False),
            ("0.0.0.0", False, False),
            ("", False, False),
            ("192.0.2.7", False, False),
        ]:
            policy = AuthPolicy.for_bind(pool, host, require_auth=require)
            assert policy.allow_anonymous is anonymous
            if anonymous:
                assert policy.tenant_for({}) == "default"
            else:
                with pytest.raises(AuthenticationError):
                    policy.tenant_for({})
        # Wrong credentials are refused even where anonymous access is allowed.
        with pytest.raises(AuthenticationError):
            AuthPolicy.for_bind(pool, "127.0.0.1", require_auth=False).tenant_for(
                {"authorization": "Bearer tsk_x"}
            )


def test_tenant_for_the_otlp_receiver(api_url: str) -> None:
    with psycopg.connect(api_url, autocommit=True) as conn:
        ingest = create_key(conn, "acme", ["ingest"], "")
        read = create_key(conn, "acme", ["read"], "")
        admin = create_key(conn, "globex", ["admin"], "")
    with ConnectionPool(api_url, min_size=1, max_size=2) as pool:
        policy = AuthPolicy(pool)
        assert policy.tenant_for({"authorization": f"Bearer {ingest}"}) == "acme"  # gRPC metadata
        assert policy.tenant_for({"Authorization": f"Bearer {admin}"}) == "globex"  # HTTP header
        with pytest.raises(PermissionDeniedError):
            policy.tenant_for({"authorization": f"Bearer {read}"})
        with pytest.raises(AuthenticationError):
            policy.tenant_for({"authorization": "Bearer tsk_unknown"})


def test_cli_commands(api_url: str) -> None:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return run_command(parser.parse_args(argv), api_url, out), out.getvalue()

    code, secret = run("keys", "create", "acme", "--scope", "read", "--name", "dash")
    assert code == 0 and secret.startswith("tsk_")
    code, listing = run("keys", "list", "--tenant", "acme")
    assert code == 0 and secret.strip()[:12] in listing and "read" in listing and "live" in listing
    assert run("keys", "revoke", secret.strip()[:12]) == (0, "revoked\n")
    assert run("keys", "revoke", secret.strip()[:12])[0] == 1
    with psycopg.connect(api_url) as conn:
        [(company,)] = conn.execute("SELECT id::text FROM tokenscale.tenants WHERE name = 'acme'").fetchall()
    assert run("budgets", "set", "acme", "--limit", "5000", "--window-days", "7") == (
        0,
        f"acme: 5000 tokens per 7 days (company id {company})\n",
    )
    assert run("budgets", "list", "--json") == (
        0,
        f'[{{"tenant": "acme", "company_id": "{company}", "token_limit": 5000, "window_days": 7}}]\n',
    )
    assert run("budgets", "set", "acme", "--limit", str(2**31), "--window-days", "7") == (
        2,
        "error: token_limit must be between 0 and 2147483647\n",
    )
    assert run("budgets", "set", "acme", "--limit", "5", "--window-days", "0")[0] == 2
