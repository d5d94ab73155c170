"""The usage context: who and what an AI call is for, carried in a contextvar."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry.util.types import AttributeValue

from tokenscale.instrumentation import _semconv as sc

__all__ = ["UsageContext", "UsageScope", "bind_context", "current_usage_context", "usage_context"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_EMPTY_META: Mapping[str, AttributeValue] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class UsageContext:
    """Who an AI call is for (user, tenant), which conversation, and free-form metadata.

    Immutable; nested scopes build a new one with :meth:`merged`. The span and metric attributes
    are computed once, at construction, because every instrumented call reads them.
    """

    user: str | None = None
    tenant: str | None = None
    conversation_id: str | None = None
    meta: Mapping[str, AttributeValue] = field(default_factory=lambda: _EMPTY_META)
    span_attributes: Mapping[str, AttributeValue] = field(init=False, repr=False, compare=False)
    metric_attributes: Mapping[str, AttributeValue] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metric: dict[str, AttributeValue] = {}
        if self.user is not None:
            metric[sc.USER_ID] = self.user
            if "@" in self.user:
                metric[sc.USER_EMAIL] = self.user
        if self.tenant is not None:
            metric[sc.TOKENSCALE_TENANT] = self.tenant
        span: dict[str, AttributeValue] = dict(metric)
        if self.conversation_id is not None:
            span[sc.GEN_AI_CONVERSATION_ID] = self.conversation_id
        for key, value in self.meta.items():
            span[sc.TOKENSCALE_META_PREFIX + key] = value
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        object.__setattr__(self, "span_attributes", MappingProxyType(span))
        object.__setattr__(self, "metric_attributes", MappingProxyType(metric))

    def merged(self, inner: UsageContext) -> UsageContext:
        """This context with ``inner`` laid over it: inner values win, metadata keys are merged."""
        if self is _EMPTY:
            return inner
        return UsageContext(
            user=inner.user if inner.user is not None else self.user,
            tenant=inner.tenant if inner.tenant is not None else self.tenant,
            conversation_id=inner.conversation_id
            if inner.conversation_id is not None
            else self.conversation_id,
            meta={**self.meta, **inner.meta},
        )


_EMPTY = UsageContext()
_CURRENT: ContextVar[UsageContext] = ContextVar("tokenscale_usage_context", default=_EMPTY)


def current_usage_context() -> UsageContext:
    """The usage context in force here (empty when no scope is open)."""
    return _CURRENT.get()


def _attribute_value(value: object) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


class UsageScope:
    """A context manager (sync and async) and decorator that opens a usage context.

    One instance may be entered more than once (nested or in sequence); as a decorator each call
    opens its own scope, so decorated functions are safe to run concurrently.
    """

    __slots__ = ("_layer", "_tokens")

    def __init__(self, layer: UsageContext) -> None:
        self._layer = layer
        self._tokens: list[Token[UsageContext]] = []

    @property
    def layer(self) -> UsageContext:
        """What this scope adds to the enclosing context."""
        return self._layer

    def __enter__(self) -> UsageContext:
        merged = _CURRENT.get().merged(self._layer)
        self._tokens.append(_CURRENT.set(merged))
        return merged

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _CURRENT.reset(self._tokens.pop())

    async def __aenter__(self) -> UsageContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        layer = self._layer
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with UsageScope(layer):
                    return await func(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with UsageScope(layer):
                return func(*args, **kwargs)

        return cast(F, run)


def usage_context(
    user: str | None = None,
    tenant: str | None = None,
    conversation_id: str | None = None,
    **meta: object,
) -> UsageScope:
    """Attribute the AI calls made inside to ``user``/``tenant``/``conversation_id`` and ``meta``.

    Metadata is given as keyword arguments or as a mapping, ``usage_context(meta={"bot_id": "faq"})``
    (keyword arguments win on the same key).

    Use as ``with usage_context(user="ana@example.com", tenant="acme", bot_id="faq"):``, as
    ``async with``, or as a decorator on sync and async functions. Scopes nest: inner values win
    and metadata keys are merged. The context lives in a :class:`contextvars.ContextVar`, so it
    flows into asyncio tasks created inside; for threads see :func:`bind_context`.

    Every instrumented call records ``user.id`` (plus ``user.email`` when the user contains '@'),
    ``tokenscale.tenant``, ``gen_ai.conversation.id`` and ``tokenscale.meta.<key>`` on its span;
    metric points carry only the user and tenant (metadata may be high-cardinality).
    """
    nested = meta.pop("meta", None)
    if isinstance(nested, Mapping):  # usage_context(meta={...}): the same as keyword arguments
        meta = {**{str(k): v for k, v in nested.items()}, **meta}
    elif nested is not None:
        meta["meta"] = nested
    clean = {key: _attribute_value(value) for key, value in meta.items() if value is not None}
    return UsageScope(UsageContext(user=user, tenant=tenant, conversation_id=conversation_id, meta=clean))


def bind_context(func: Callable[P, R]) -> Callable[P, R]:
    """``func`` bound to a copy of the current context (usage context and OpenTelemetry context).

    Threads do not inherit contextvars; pass ``bind_context(work)`` to ``Thread(target=...)`` or
    ``executor.submit(...)``. Each call runs in its own copy of the captured context, so the
    bound function may run in several threads at once. Equivalent to
    ``contextvars.copy_context().run(func, ...)`` for a single call.
    """
    captured = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(func, *args, **kwargs)

    return run
