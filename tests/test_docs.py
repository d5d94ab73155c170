"""The documentation matches the code: every carrier and metric of the rules table is documented."""

from __future__ import annotations

from pathlib import Path

from tokenscale.mapping import rules

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_mapping_doc_names_every_carrier_metric_and_measure() -> None:
    text = (DOCS / "mapping.md").read_text()
    names = {rule.carrier for rule in rules.LOG_RULES.values()}
    names |= {rules.CLAUDE_SPAN.carrier, rules.SEMCONV_SPAN.carrier, rules.TOKENSCALE_SPAN.carrier}
    names |= {rule.carrier for rule in rules.METRIC_RULES.values()}
    names |= set(rules.METRIC_RULES) | set(rules.ACTIVITY_METRIC_RULES)
    for activity in rules.ACTIVITY_METRIC_RULES.values():
        names |= {activity.metric} if activity.metric else set(activity.by_type.values())
    names |= set(rules.ACTIVITY_LOG_RULES.values()) | rules.NON_USAGE_OPERATIONS | rules.SENSITIVE_KEYS
    missing = sorted(n for n in names if f"`{n}`" not in text and n not in text)
    assert missing == []


def test_mapping_doc_states_each_rank() -> None:
    text = (DOCS / "mapping.md").read_text()
    for rule in [
        *rules.LOG_RULES.values(),
        rules.CLAUDE_SPAN,
        rules.SEMCONV_SPAN,
        *rules.METRIC_RULES.values(),
    ]:
        assert f"| {rule.rank} | `{rule.carrier}` |" in text, rule.carrier
