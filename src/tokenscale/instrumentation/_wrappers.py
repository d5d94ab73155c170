"""Call wrappers and stream proxies that feed an :class:`Invocation` without changing what callers see."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from tokenscale.instrumentation._telemetry import Invocation, Request, Telemetry

__all__ = [
    "AsyncStreamProxy",
    "Extractor",
    "Observer",
    "Patches",
    "SyncStreamProxy",
    "Wrapper",
    "async_call_wrapper",
    "deferred_async_stream",
    "deferred_sync_stream",
    "parsed_result",
    "sync_call_wrapper",
]

_LOG = logging.getLogger(__name__)

# wrapt's stubs make ObjectProxy generic; at runtime wrapt 1.x cannot be subscripted.
if TYPE_CHECKING:
    _ObjectProxy = wrapt.ObjectProxy[Any]
else:
    _ObjectProxy = wrapt.ObjectProxy

#: ``wrapt`` wrapper signature: (wrapped, instance, args, kwargs) -> result.
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
Observer = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Extractor:
    """How to read one SDK method: its request, its response, and the items of its stream."""

    describe: Callable[[Any, Mapping[str, Any]], Request]
    on_response: Callable[[Invocation, Any], None]
    new_observer: Callable[[Invocation], Observer]
    is_stream: Callable[[Any], bool]


def parsed_result(result: object) -> object:
    """The model inside a raw-response wrapper (``with_raw_response``) whose body is already read.

    A body that is still unread (streamed raw responses) is left alone: reading it here would
    change what the caller sees. Anything else is returned as is.
    """
    # Look on the class first: a miss on a pydantic model instance is an exception, i.e. slow.
    if not callable(getattr(type(result), "parse", None)):
        return result
    http_response = getattr(result, "http_response", None)
    if http_response is None:
        return result
    if not getattr(http_response, "is_closed", False):
        return None
    return result.parse()  # type: ignore[attr-defined]  # cached: the caller's parse() gets the same


def _model_of(kwargs: Mapping[str, Any]) -> str | None:
    """The model a call asks for (its budget check includes that model's budgets)."""
    model = kwargs.get("model")
    return model if isinstance(model, str) and model else None


def _start(
    telemetry: Telemetry, extractor: Extractor, instance: Any, kwargs: Mapping[str, Any]
) -> Invocation | None:
    try:
        return telemetry.start(extractor.describe(instance, kwargs))
    except Exception:
        _LOG.debug("could not start GenAI span; calling uninstrumented", exc_info=True)
        return None


def _complete(invocation: Invocation, extractor: Extractor, result: Any, *, is_async: bool) -> Any:
    try:
        if extractor.is_stream(result):
            observer = extractor.new_observer(invocation)
            if is_async:
                return AsyncStreamProxy(result, invocation, observer)
            return SyncStreamProxy(result, invocation, observer)
        extractor.on_response(invocation, parsed_result(result))
    except Exception:
        _LOG.debug("could not read GenAI response", exc_info=True)
    invocation.finish()
    return result


def sync_call_wrapper(telemetry: Telemetry, extractor: Extractor) -> Wrapper:
    """A ``wrapt`` wrapper for a synchronous SDK method."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not (telemetry.active and is_instrumentation_enabled()):
            return wrapped(*args, **kwargs)
        invocation = _start(telemetry, extractor, instance, kwargs)
        if invocation is None:
            return wrapped(*args, **kwargs)
        token = otel_context.attach(trace.set_span_in_context(invocation.span))
        try:
            if telemetry.budget_guard is not None:
                telemetry.budget_guard.check(model=_model_of(kwargs))
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            invocation.fail(error)
            raise
        finally:
            otel_context.detach(token)
        return _complete(invocation, extractor, result, is_async=False)

    return wrapper


def async_call_wrapper(telemetry: Telemetry, extractor: Extractor) -> Wrapper:
    """A ``wrapt`` wrapper for a coroutine SDK method."""

    async def wrapper(
        wrapped: Callable[..., Awaitable[Any]], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not (telemetry.active and is_instrumentation_enabled()):
            return await wrapped(*args, **kwargs)
        invocation = _start(telemetry, extractor, instance, kwargs)
        if invocation is None:
            return await wrapped(*args, **kwargs)
        token = otel_context.attach(trace.set_span_in_context(invocation.span))
        try:
            if telemetry.budget_guard is not None:
                await telemetry.budget_guard.check_async(model=_model_of(kwargs))
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            invocation.fail(error)
            raise
        finally:
            otel_context.detach(token)
        return _complete(invocation, extractor, result, is_async=True)

    return wrapper


def deferred_sync_stream(
    telemetry: Telemetry, extractor: Extractor, request: Request, api_request: Callable[[], Any]
) -> Callable[[], Any]:
    """Instrument a stream helper's deferred request (sent when its manager is entered)."""

    def run() -> Any:
        if not (telemetry.active and is_instrumentation_enabled()):
            return api_request()
        invocation = telemetry.start(request)
        token = otel_context.attach(trace.set_span_in_context(invocation.span))
        try:
            if telemetry.budget_guard is not None:
                telemetry.budget_guard.check(model=request.model)
            stream = api_request()
        except BaseException as error:
            invocation.fail(error)
            raise
        finally:
            otel_context.detach(token)
        return SyncStreamProxy(stream, invocation, extractor.new_observer(invocation))

    return run


async def deferred_async_stream(
    telemetry: Telemetry, extractor: Extractor, request: Request, api_request: Awaitable[Any]
) -> Any:
    """Instrument an async stream helper's pending request (awaited when its manager is entered)."""
    if not (telemetry.active and is_instrumentation_enabled()):
        return await api_request
    invocation = telemetry.start(request)
    token = otel_context.attach(trace.set_span_in_context(invocation.span))
    try:
        if telemetry.budget_guard is not None:
            await telemetry.budget_guard.check_async(model=request.model)
        stream = await api_request
    except BaseException as error:
        invocation.fail(error)
        raise
    finally:
        otel_context.detach(token)
    return AsyncStreamProxy(stream, invocation, extractor.new_observer(invocation))


def _observe(invocation: Invocation, observer: Observer, item: object) -> None:
    invocation.chunk_received()
    try:
        observer(item)
    except Exception:
        _LOG.debug("could not read GenAI stream item", exc_info=True)


class SyncStreamProxy(_ObjectProxy):
    """Transparent proxy of an SDK ``Stream``: yields the very same items and ends the span.

    The span ends when the stream is exhausted, fails, is closed (``close()``/``with``), or when
    the consumer stops iterating and the iterator is dropped.
    """

    def __init__(self, stream: Any, invocation: Invocation, observer: Observer) -> None:
        super().__init__(stream)
        self._self_invocation = invocation
        self._self_observer = observer

    def __iter__(self) -> Iterator[Any]:
        invocation = self._self_invocation
        observer = self._self_observer
        try:
            for item in self.__wrapped__:
                _observe(invocation, observer, item)
                yield item
        except GeneratorExit:
            invocation.finish()
            raise
        except BaseException as error:
            invocation.fail(error)
            raise
        invocation.finish()

    def __next__(self) -> Any:
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            self._self_invocation.finish()
            raise
        except BaseException as error:
            self._self_invocation.fail(error)
            raise
        _observe(self._self_invocation, self._self_observer, item)
        return item

    def __enter__(self) -> SyncStreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_invocation.finish()

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            self._self_invocation.finish()


class AsyncStreamProxy(_ObjectProxy):
    """Transparent proxy of an SDK ``AsyncStream`` (see :class:`SyncStreamProxy`)."""

    def __init__(self, stream: Any, invocation: Invocation, observer: Observer) -> None:
        super().__init__(stream)
        self._self_invocation = invocation
        self._self_observer = observer

    async def __aiter__(self) -> AsyncIterator[Any]:
        invocation = self._self_invocation
        observer = self._self_observer
        try:
            async for item in self.__wrapped__:
                _observe(invocation, observer, item)
                yield item
        except GeneratorExit:
            invocation.finish()
            raise
        except BaseException as error:
            invocation.fail(error)
            raise
        invocation.finish()

    async def __anext__(self) -> Any:
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_invocation.finish()
            raise
        except BaseException as error:
            self._self_invocation.fail(error)
            raise
        _observe(self._self_invocation, self._self_observer, item)
        return item

    async def __aenter__(self) -> AsyncStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_invocation.finish()

    async def close(self) -> Any:
        try:
            return await self.__wrapped__.close()
        finally:
            self._self_invocation.finish()


class Patches:
    """The methods one instrumentor wrapped, so that uninstrumenting restores the very originals."""

    def __init__(self) -> None:
        self._applied: list[tuple[type, str, object, object]] = []

    def wrap(self, owner: type, name: str, wrapper: Wrapper) -> bool:
        """Wrap ``owner.name`` (a function defined on that class) with ``wrapper``."""
        original = owner.__dict__.get(name)
        if original is None:
            _LOG.debug("%s.%s not found; not instrumented", owner.__qualname__, name)
            return False
        wrapt.wrap_function_wrapper(owner, name, wrapper)
        self._applied.append((owner, name, original, owner.__dict__[name]))
        return True

    def restore(self) -> None:
        """Put every original back (unless someone else wrapped on top of ours since)."""
        while self._applied:
            owner, name, original, ours = self._applied.pop()
            if owner.__dict__.get(name) is ours:
                setattr(owner, name, original)
            else:
                _LOG.warning("%s.%s was re-wrapped by someone else; left as is", owner.__qualname__, name)

    def __len__(self) -> int:
        return len(self._applied)
