"""Reading the ledger back in tests: ``usage_daily`` totals per model, and replaying captures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg

from ground_truth import CACHE_SPLIT_UNREPORTED, TOKEN_KINDS, ground_truth

__all__ = ["daily_by_model", "expected_daily"]


def daily_by_model(url: str, *, tenant: str | None = None) -> dict[str, dict[str, int]]:
    """``requests`` and token totals per model from ``tokenscale.usage_daily`` (zero rows left out)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("requests", *TOKEN_KINDS), 0))
    query = (
        "SELECT model, sum(requests), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens), "
        "sum(output_tokens), sum(reasoning_tokens) FROM tokenscale.usage_daily "
        "WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s GROUP BY model"
    )
    with psycopg.connect(url) as conn:
        for model, *values in conn.execute(query, {"tenant": tenant}):
            if any(values):
                out[model] = dict(zip(("requests", *TOKEN_KINDS), map(int, values), strict=True))
    return dict(out)


def expected_daily(label: str) -> dict[str, Any]:
    """What ``usage_daily`` must hold after replaying ``label``: the ground truth, except that where
    the client never reports the cached part of the prompt only the total input is known."""
    truth = ground_truth(label)
    if label in CACHE_SPLIT_UNREPORTED:
        for row in truth.values():
            row["input_tokens"] += row["cache_read_tokens"]
            row["cache_read_tokens"] = 0
    return truth
