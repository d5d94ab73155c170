"""Ground truth for the captured client runs: the usage the LLM API returned, in disjoint columns."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["CAPTURES", "TOKEN_KINDS", "capture_bodies", "ground_truth", "labels"]

CAPTURES = Path(__file__).parent / "captures"

#: The disjoint token columns, in the order tests compare them.
TOKEN_KINDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")

#: OpenAI Chat Completions usage that opentelemetry-instrumentation-openai-v2 does not report: the
#: cached part of the prompt. For those labels only the total input (uncached + cached) is known.
CACHE_SPLIT_UNREPORTED = frozenset({"py-openai-v2-grpc", "py-openai-v2-latest-httpproto"})


def labels() -> list[str]:
    """Every captured run."""
    return sorted(p.name for p in CAPTURES.iterdir() if (p / "llm-requests.jsonl").exists())


def _disjoint(api: str, usage: dict[str, object]) -> dict[str, int]:
    def n(key: str, within: object = None) -> int:
        src = usage if within is None else within
        value = src.get(key, 0) if isinstance(src, dict) else 0
        return int(value) if isinstance(value, int | float) else 0

    if api == "anthropic":  # additive fields: input excludes cache
        return {
            "input_tokens": n("input_tokens"),
            "cache_read_tokens": n("cache_read_input_tokens"),
            "cache_write_tokens": n("cache_creation_input_tokens"),
            "output_tokens": n("output_tokens"),
            "reasoning_tokens": 0,
        }
    if api == "gemini":  # prompt includes cached; candidates exclude thoughts
        cached, thoughts = n("cachedContentTokenCount"), n("thoughtsTokenCount")
        return {
            "input_tokens": n("promptTokenCount") - cached + n("toolUsePromptTokenCount"),
            "cache_read_tokens": cached,
            "cache_write_tokens": 0,
            "output_tokens": n("candidatesTokenCount") + thoughts,
            "reasoning_tokens": thoughts,
        }
    if api == "openai-responses":  # Responses API: input includes cached; output includes reasoning
        cached = n("cached_tokens", usage.get("input_tokens_details"))
        return {
            "input_tokens": n("input_tokens") - cached,
            "cache_read_tokens": cached,
            "cache_write_tokens": 0,
            "output_tokens": n("output_tokens"),
            "reasoning_tokens": n("reasoning_tokens", usage.get("output_tokens_details")),
        }
    if api.startswith("openai"):  # prompt includes cached; completion includes reasoning
        cached = n("cached_tokens", usage.get("prompt_tokens_details"))
        return {
            "input_tokens": n("prompt_tokens") - cached,
            "cache_read_tokens": cached,
            "cache_write_tokens": 0,
            "output_tokens": n("completion_tokens"),
            "reasoning_tokens": n("reasoning_tokens", usage.get("completion_tokens_details")),
        }
    raise ValueError(f"unknown API {api!r}")


def ground_truth(label: str) -> dict[str, dict[str, int]]:
    """Per model: ``requests`` and the disjoint token totals the LLM API returned in run ``label``."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("requests", *TOKEN_KINDS), 0))
    with (CAPTURES / label / "llm-requests.jsonl").open() as lines:
        for line in lines:
            response = json.loads(line).get("response") or {}
            usage = response.get("usage")
            if not usage:
                continue
            row = totals[response["model"]]
            row["requests"] += 1
            for kind, value in _disjoint(response["api"], usage).items():
                row[kind] += value
    return dict(totals)


def capture_bodies(label: str) -> list[tuple[str, Path, dict[str, object]]]:
    """``(signal, raw body path, meta)`` of each export of run ``label``, in arrival order."""
    found = []
    for meta_path in (CAPTURES / label).glob("*.meta.json"):
        meta = json.loads(meta_path.read_text())
        stem = meta_path.name.removesuffix(".meta.json")
        raw = next(p for p in (CAPTURES / label).glob(f"{stem}.raw.*"))
        found.append((str(meta["signal"]), raw, meta))
    return sorted(found, key=lambda item: float(str(item[2]["received_at"])))
