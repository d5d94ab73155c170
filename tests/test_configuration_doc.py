"""docs/configuration.md matches ``Settings``: names, variables, types, defaults and meanings."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tokenscale.config import ConfigError, Settings, load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}
_CODE = re.compile(r"`([^`]*)`")


def doc_rows() -> list[dict[str, str]]:
    """The rows of the table under "## Settings"."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["setting", "environment variable", "type", "default", "meaning"]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def field_comments() -> dict[str, str]:
    """Each field's ``#:`` comment, as one line with Markdown code spans."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(Settings).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"^([a-z_][a-z0-9_]*)\s*:", stripped)
        if match and pending:
            comments[match[1]] = " ".join(pending).replace("``", "`")
        pending = []
    return comments


def rendered_default(value: Any) -> str:
    """A default as the table writes it (the cell's first code span)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def factory_defaults(field: dataclasses.Field[Any], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """A default_factory's results for a user and for root, with and without $XDG_DATA_HOME, written
    as the doc does (``~`` for the home directory, ``$XDG_DATA_HOME`` for its value)."""
    factory = field.default_factory
    assert callable(factory)
    home = str(Path.home())
    results = set()
    monkeypatch.delenv(Settings.env_var(field.name), raising=False)
    for xdg in ("/xdg-test", None):
        for euid in (0, 1000):
            if xdg is None:
                monkeypatch.delenv("XDG_DATA_HOME", raising=False)
            else:
                monkeypatch.setenv("XDG_DATA_HOME", xdg)
            monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
            value = str(factory())
            value = value.replace("/xdg-test", "$XDG_DATA_HOME")
            if value == home or value.startswith(home + "/"):
                value = "~" + value[len(home) :]
            results.add(value)
    return results


def test_the_table_lists_every_setting_in_order() -> None:
    assert [r["setting"] for r in doc_rows()] == [f"`{name}`" for name in Settings.names()]


def test_each_row_matches_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {r["setting"].strip("`"): r for r in doc_rows()}
    comments = field_comments()
    for field in dataclasses.fields(Settings):
        row = rows[field.name]
        assert row["environment variable"] == f"`{Settings.env_var(field.name)}`", field.name
        assert row["type"] == TYPES[str(field.type)], field.name
        spans = _CODE.findall(row["default"])
        if field.default is not dataclasses.MISSING:
            assert spans and spans[0] == rendered_default(field.default), field.name
        else:
            missing = factory_defaults(field, monkeypatch) - set(spans)
            assert not missing, f"{field.name}: the default cell does not name {sorted(missing)}"
        assert field.name in comments, f"{field.name} has no #: comment in Settings"
        assert row["meaning"] == comments[field.name], field.name


def test_the_documented_file_format_and_precedence(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", text, re.S)
    assert example is not None
    path = tmp_path / "tokenscale.toml"
    path.write_text(example[1], encoding="utf-8")
    settings = load_settings(environ={}, config_file=path)
    assert settings.database_url == tomllib.loads(example[1])["tokenscale"]["database_url"]
    assert settings.max_body_bytes == 16777216

    # Only the [tokenscale] table is read when there is one; flags > environment > file.
    path.write_text("http_port = 1\n[tokenscale]\ngrpc_port = 2\n", encoding="utf-8")
    assert load_settings(environ={}, config_file=path).http_port == 4318
    assert load_settings(environ={}, config_file=path).grpc_port == 2
    environ = {"TOKENSCALE_GRPC_PORT": "3", "TOKENSCALE_CONFIG": str(path)}
    assert load_settings(environ=environ).grpc_port == 3
    assert load_settings({"grpc_port": 4}, environ=environ).grpc_port == 4
    assert load_settings(environ={"TOKENSCALE_CAPTURE_CONTENT": "Yes"}).capture_content is True

    path.write_text("[tokenscale]\ngrpc-port = 4317\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'grpc-port'"):
        load_settings(environ={}, config_file=path)
    assert "unknown setting 'grpc-port'" in text
    with pytest.raises(ConfigError, match="setting 'grpc_port': 'abc' is not a valid int"):
        load_settings(environ={"TOKENSCALE_GRPC_PORT": "abc"})
    assert "setting 'grpc_port': 'abc' is not a valid int" in text
