"""Reconciling aggregate carriers with per-request records (pure, no I/O).

A client reports a request up to five times. Per-request carriers (log events, spans) of one
request share its identity and make ONE record, counted from the best of them. Aggregate carriers
(metric increments, and per-request carriers that share no identity with their client's primary
carrier) cannot be matched to requests: each is a *view* of the usage of its *stream* (the client's
resource). Every view is a lower bound of the stream's usage (a sampled trace or a client that sends
only some signals sees less, never more), so the ledger counts, per *subkey* (model, user, session)
of the stream, the records plus the **residual**: what the best view shows beyond what the records
already account for. Residuals are stored as rows of their own, one per subkey and UTC hour, so the
daily and hourly rollups add them like any other usage, and they move as views and records arrive in
any order:

* a view's subkey may leave a dimension open (``None``: a metric without a user or session); it is
  then compared with every record (and more specific residual) of matching values;
* the prompt (input + cache reads + cache writes), output, reasoning (part of output) and requests
  are compared as totals, so views that do not split cache reads out still compare correctly;
* a residual that grows is placed in the hour of the carrier that made it grow; one that shrinks
  (records arrived after the metrics) is taken back from that hour first, then from the latest
  hours, never below zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = [
    "VEC_FIELDS",
    "SubKey",
    "Vec",
    "add",
    "compatible",
    "reconcile",
    "zero",
]

#: The sums a ledger vector holds, in order; ``cost_usd`` is the reported cost (views that report
#: one) or the stored cost (records).
VEC_FIELDS: Final = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
)
_REQ, _IN, _CR, _CW, _OUT, _REASON, _COST = range(7)

#: ``(model, user, session)``; ``None`` where the carrier does not say.
SubKey = tuple[str | None, str | None, str | None]
#: Six integer sums and a cost.
Vec = list[int | Decimal]


def zero() -> Vec:
    return [0, 0, 0, 0, 0, 0, Decimal(0)]


def add(into: Vec, other: Iterable[int | Decimal], sign: int = 1) -> None:
    for i, v in enumerate(other):
        into[i] += sign * v


def compatible(a: SubKey, b: SubKey) -> bool:
    """Whether two subkeys may describe the same usage: equal wherever both say something."""
    return all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def _specificity(key: SubKey) -> int:
    return sum(1 for part in key if part is None)


def _residual(view: Vec, covered: Vec, reported: bool) -> Vec:
    """What ``view`` shows beyond ``covered``, as disjoint parts (never negative)."""
    prompt = max(0, int(view[_IN] + view[_CR] + view[_CW]) - int(covered[_IN] + covered[_CR] + covered[_CW]))
    cache_read = min(prompt, max(0, int(view[_CR] - covered[_CR])))
    cache_write = min(prompt - cache_read, max(0, int(view[_CW] - covered[_CW])))
    output = max(0, int(view[_OUT] - covered[_OUT]))
    reasoning = min(output, max(0, int(view[_REASON] - covered[_REASON])))
    requests = max(0, int(view[_REQ] - covered[_REQ]))
    cost = max(Decimal(0), Decimal(view[_COST]) - Decimal(covered[_COST])) if reported else Decimal(0)
    return [requests, prompt - cache_read - cache_write, cache_read, cache_write, output, reasoning, cost]


@dataclass(frozen=True, slots=True)
class Target:
    """A subkey's residual as the ledger now computes it, and the view it comes from."""

    vec: Vec
    view: str
    reported: bool


def targets(
    views: Mapping[SubKey, Mapping[str, Vec]],
    reported: frozenset[str] | set[str],
    records: Mapping[SubKey, Vec],
) -> dict[SubKey, Target]:
    """Each view subkey's residual: the largest of its views' residuals over what the records and
    the residuals of more specific subkeys already account for."""
    done: dict[SubKey, Target] = {}
    for key in sorted(views, key=lambda k: (_specificity(k), tuple(p or "" for p in k))):
        covered = zero()
        for rkey, vec in records.items():
            if compatible(key, rkey):
                add(covered, vec)
        for dkey, target in done.items():
            if _specificity(dkey) < _specificity(key) and compatible(key, dkey):
                add(covered, target.vec)
        best: Target | None = None
        for view, vec in sorted(views[key].items()):
            is_reported = view in reported
            res = _residual(vec, covered, is_reported)
            size = res[_IN] + res[_CR] + res[_CW] + res[_OUT]
            if best is None or size > best.vec[_IN] + best.vec[_CR] + best.vec[_CW] + best.vec[_OUT]:
                best = Target(res, view, is_reported)
        assert best is not None
        done[key] = best
    return done


def reconcile(target: Vec, stored: Mapping[int, Vec], final: Vec, trigger_hour: int) -> dict[int, Vec]:
    """The stored residual rows of one subkey after moving their total to ``target``.

    ``stored`` holds the recent rows by hour (they may change), ``final`` the sum of older rows
    (they no longer change). A part that grows grows in ``trigger_hour``; one that shrinks is taken
    from ``trigger_hour`` first, then from the latest hours, never below zero. Returns the rows whose
    values change (by hour, new values).
    """
    rows = {hour: list(vec) for hour, vec in stored.items()}
    for i in range(len(target)):
        total = final[i] + sum((vec[i] for vec in rows.values()), start=0 * target[i])
        delta = target[i] - total
        if delta > 0:
            rows.setdefault(trigger_hour, zero())[i] += delta
        elif delta < 0:
            need = -delta
            order = [trigger_hour] if trigger_hour in rows else []
            order += sorted((h for h in rows if h != trigger_hour), reverse=True)
            for hour in order:
                take = min(need, rows[hour][i])
                if take > 0:
                    rows[hour][i] -= take
                    need -= take
                if not need:
                    break
    return {hour: vec for hour, vec in rows.items() if vec != list(stored.get(hour, zero()))}
