"""Typed clients built from the seed documents' DTOs, as a client of each original service reads answers.

They are strict where the originals are typed: a field of the wrong type, an integer outside its
declared width, a UUID that does not parse or a link that leads nowhere fails the test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests

__all__ = [
    "AiChatUsageResponse",
    "CursorWalker",
    "HalPageReader",
    "ServiceStackClient",
    "parse_jsv",
]

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)


# --- ServiceStack (Bookmore) -------------------------------------------------------------------------


def parse_jsv(text: str) -> Any:
    """ServiceStack JSV text as Python values (strings stay strings: the DTO gives the types)."""
    value, end = _jsv_value(text, 0)
    if text[end:].strip():
        raise ValueError(f"trailing JSV text: {text[end:]!r}")
    return value


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _jsv_value(text: str, i: int) -> tuple[Any, int]:
    i = _skip(text, i)
    if text[i] == "{":
        out: dict[str, Any] = {}
        i = _skip(text, i + 1)
        while text[i] != "}":
            colon = text.index(":", i)
            key = text[i:colon].strip()
            out[key], i = _jsv_value(text, colon + 1)
            i = _skip(text, i)
            if text[i] == ",":
                i = _skip(text, i + 1)
        return out, i + 1
    if text[i] == "[":
        items: list[Any] = []
        i = _skip(text, i + 1)
        while text[i] != "]":
            item, i = _jsv_value(text, i)
            items.append(item)
            i = _skip(text, i)
            if text[i] == ",":
                i = _skip(text, i + 1)
        return items, i + 1
    if text[i] == '"':
        j = i + 1
        chars: list[str] = []
        while True:
            if text[j] == '"':
                if j + 1 < len(text) and text[j + 1] == '"':
                    chars.append('"')
                    j += 2
                    continue
                return "".join(chars), j + 1
            chars.append(text[j])
            j += 1
    j = i
    while j < len(text) and text[j] not in ",}]":
        j += 1
    return text[i:j].strip(), j


def _typed_int(value: Any, name: str, bounds: tuple[int, int], jsv: bool) -> int | None:
    if value is None:
        return None
    if jsv and isinstance(value, str):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: {value!r} is not an integer")
    if not bounds[0] <= value <= bounds[1]:
        raise OverflowError(f"{name}: {value} does not fit its declared type")
    return value


def _typed_bool(value: Any, name: str, jsv: bool) -> bool | None:
    if value is None:
        return None
    if jsv and value in ("True", "False", "true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {value!r} is not a Boolean")
    return value


@dataclass(frozen=True)
class AiChatUsageResponse:
    """Bookmore's ``AiChatUsageResponse``: ``CompanyId:UUID?``, ``TokenLimit:Int?``, ``WindowDays:Int?``..."""

    CompanyId: uuid.UUID | None
    TokensUsed: int | None
    TokenLimit: int | None
    TokensRemaining: int | None
    IsWithinBudget: bool | None
    WindowDays: int | None
    ResponseStatus: Mapping[str, Any] | None

    @classmethod
    def read(cls, data: Mapping[str, Any], *, jsv: bool = False) -> AiChatUsageResponse:
        company = data.get("CompanyId")
        return cls(
            CompanyId=None if company is None else uuid.UUID(company),
            TokensUsed=_typed_int(data.get("TokensUsed"), "TokensUsed", LONG_RANGE, jsv),
            TokenLimit=_typed_int(data.get("TokenLimit"), "TokenLimit", INT_RANGE, jsv),
            TokensRemaining=_typed_int(data.get("TokensRemaining"), "TokensRemaining", LONG_RANGE, jsv),
            IsWithinBudget=_typed_bool(data.get("IsWithinBudget"), "IsWithinBudget", jsv),
            WindowDays=_typed_int(data.get("WindowDays"), "WindowDays", INT_RANGE, jsv),
            ResponseStatus=data.get("ResponseStatus"),
        )


class ServiceStackClient:
    """A ServiceStack ``JsonServiceClient``/``JsvServiceClient``: POSTs a DTO, reads the typed answer.

    ``route`` is the DTO's custom route, or ServiceStack's predefined ``/{format}/reply/{Request}``
    when ``predefined``; errors come back as the answer's ``ResponseStatus`` with the HTTP status.
    """

    def __init__(self, base: str, key: str | None, *, fmt: str = "json", predefined: bool = False) -> None:
        self.base = base
        self.key = key
        self.fmt = fmt
        self.predefined = predefined
        self.session = requests.Session()

    def post(self, request_name: str, route: str, dto: Mapping[str, Any]) -> tuple[int, AiChatUsageResponse]:
        media = "application/json" if self.fmt == "json" else "text/jsv"
        headers = {"Accept": media, "Content-Type": media}
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        body: str | bytes
        if self.fmt == "json":
            body = json.dumps({k: v for k, v in dto.items() if v is not None})
        else:
            body = "{" + ",".join(f"{k}:{v}" for k, v in dto.items() if v is not None) + "}"
        path = f"/{self.fmt}/reply/{request_name}" if self.predefined else route
        response = self.session.post(self.base + path, data=body, headers=headers, timeout=30)
        content_type = response.headers["content-type"].split(";")[0]
        assert content_type == media, content_type
        data = response.json() if self.fmt == "json" else parse_jsv(response.text)
        return response.status_code, AiChatUsageResponse.read(data, jsv=self.fmt == "jsv")


# --- Spring HATEOAS (Revenium) -----------------------------------------------------------------------


class HalPageReader:
    """Reads a Spring HATEOAS ``PagedModel`` listing by following ``_links.next`` from the first page."""

    def __init__(self, session: requests.Session, headers: Mapping[str, str]) -> None:
        self.session = session
        self.headers = dict(headers)

    def pages(self, url: str) -> Iterator[dict[str, Any]]:
        expected = 0
        while True:
            response = self.session.get(url, headers=self.headers, timeout=30)
            assert response.status_code == 200, response.text
            page = response.json()
            meta = page["page"]
            assert set(meta) == {"size", "totalElements", "totalPages", "number"}
            assert all(isinstance(meta[k], int) for k in meta)
            assert meta["number"] == expected
            assert page["_links"]["self"]["href"]
            yield page
            following = page["_links"].get("next")
            if following is None:
                assert meta["number"] >= meta["totalPages"] - 1
                return
            url = following["href"]
            expected += 1

    def items(self, url: str, collection: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self.pages(url):
            found.extend(page.get("_embedded", {}).get(collection, []))
        return found


# --- ChatBotKit -------------------------------------------------------------------------------------


class CursorWalker:
    """Walks a ChatBotKit listing by its ``cursor`` until an answer carries none."""

    def __init__(self, session: requests.Session, headers: Mapping[str, str]) -> None:
        self.session = session
        self.headers = dict(headers)

    def items(self, url: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        query = dict(params or {})
        while True:
            response = self.session.get(url, params=query, headers=self.headers, timeout=30)
            assert response.status_code == 200, response.text
            page = response.json()
            for item in page["items"]:
                assert isinstance(item["id"], str) and isinstance(item["type"], str)
                assert isinstance(item["count"], int) and not isinstance(item["count"], bool)
                assert isinstance(item["createdAt"], int) and isinstance(item["updatedAt"], int)
                assert isinstance(item["meta"], dict)
            found.extend(page["items"])
            if "cursor" not in page:
                return found
            query["cursor"] = page["cursor"]
