"""The price book: custom prices at ingest, `tokenscale prices`, and `tokenscale reprice`, on real
databases fed by the OpenTelemetry SDK through a real receiver."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otlp_clients import background_loop, running
from tokenscale.cli import main
from tokenscale.mapping.model import UsageEvent
from tokenscale.mapping.pricebook import ALWAYS, CustomPrice, PriceBook, TokenCounts, parse_unit_key
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.prices import PriceBookCache, parse_prices
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events

PRIVATE = "acme-ft-7b"  # a fine-tuned model no list price knows
NS = 10**9


# --- the pure price book ---------------------------------------------------------------------------


def _event(**fields: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "time_ns": 1_800_000_000 * NS,
        "tenant": "acme",
        "carrier": "gen_ai.span",
        "rank": 3,
        "tool": "app",
        "stream": "s",
        "service_name": "app",
        "dedupe_key": b"k",
        "model": PRIVATE,
    }
    return UsageEvent(**{**base, **fields})


def test_cost_per_token_part_and_unit() -> None:
    price = CustomPrice(
        PRIVATE,
        input=Decimal("0.5"),
        output=Decimal("1.5"),
        cache_read=Decimal("0.05"),
        reasoning=Decimal("3"),
        units={"gen_ai.usage.images": Decimal("0.04")},
    )
    usage = TokenCounts(
        input=1200,
        cache_read=300,
        cache_write=100,
        output=400,
        reasoning=100,
        units={"gen_ai.usage.images": 2},
    )
    # 1200 x 0.5 + 300 x 0.05 + 100 x 0.5 (cache writes at the input price) + 300 x 1.5 + 100 x 3,
    # per million tokens, plus 2 images x 0.04 = (600 + 15 + 50 + 450 + 300) / 1e6 + 0.08
    assert price.cost(usage) == Decimal("0.081415")


def test_lookup_by_tenant_provider_and_effective_time() -> None:
    t0 = 1_800_000_000 * NS
    book = PriceBook(
        [
            CustomPrice(PRIVATE, input=Decimal(1), output=Decimal(2)),
            CustomPrice(PRIVATE, input=Decimal(3), output=Decimal(4), effective_from_ns=t0),
            CustomPrice(
                PRIVATE, input=Decimal(5), output=Decimal(6), tenant="acme", effective_from_ns=t0 + NS
            ),
            CustomPrice(PRIVATE, input=Decimal(7), output=Decimal(8), provider="azure"),
        ]
    )
    assert book.lookup("other", None, PRIVATE, t0 - 1).input == 1  # type: ignore[union-attr]
    assert book.lookup("other", None, PRIVATE, t0).input == 3  # type: ignore[union-attr]
    assert book.lookup("acme", None, PRIVATE, t0).input == 3  # type: ignore[union-attr]  # not yet
    assert book.lookup("acme", None, PRIVATE, t0 + NS).input == 5  # type: ignore[union-attr]
    assert book.lookup("other", "azure", PRIVATE, t0 + NS).input == 7  # type: ignore[union-attr]
    assert book.lookup("other", None, "gpt-4o", t0) is None
    # A client-reported cost stays unless the price says to replace it.
    reported = _event(input_tokens=1_000_000, cost_usd=9.0, cost_source="reported", tenant="other")
    assert not book.price(reported) and reported.cost_usd == 9.0
    override = PriceBook([CustomPrice(PRIVATE, input=Decimal(1), output=Decimal(1), override_reported=True)])
    assert override.price(reported) and (reported.cost_usd, reported.cost_source) == (1.0, "price_book")
    assert ALWAYS < 0


def test_parse_prices_json_and_csv() -> None:
    from_json = parse_prices(
        json.dumps(
            [
                {
                    "model": PRIVATE,
                    "input": "0.5",
                    "output": 1.5,
                    "tenant": "acme",
                    "effective_from": "2026-01-01",
                    "units": {"gen_ai.usage.images": "0.04"},
                }
            ]
        )
    )
    from_csv = parse_prices(
        "model,input,output,tenant,effective_from,unit:gen_ai.usage.images\n"
        f"{PRIVATE},0.5,1.5,acme,2026-01-01,0.04\n"
    )
    assert from_json == from_csv
    assert from_json[0].effective_from_ns == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * NS
    with pytest.raises(ValueError, match="entry 1: output: a price is required"):
        parse_prices(f"model,input\n{PRIVATE},1\n")
    with pytest.raises(ValueError, match="not a price"):
        parse_prices(f"model,input,output\n{PRIVATE},-1,1\n")


IMAGES = "gen_ai.usage.image.count"


def test_unit_prices_by_request_parameters_pick_the_most_specific_match() -> None:
    assert parse_unit_key(f" {IMAGES}[size=1024x1792, quality=hd] ") == (
        IMAGES,
        (("gen_ai.request.image.quality", "hd"), ("gen_ai.request.image.size", "1024x1792")),
    )
    assert parse_unit_key("my.count[my.tier=gold]") == ("my.count", (("my.tier", "gold"),))
    for bad, message in (
        (f"{IMAGES}[size]", "'size' is not param=value"),
        (f"{IMAGES}[size=]", "is not param=value"),
        ("my.count[tier=gold]", "'tier' names no attribute"),
        (f"{IMAGES}[size=1]x", "give NAME or NAME"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_unit_key(bad)
    price = CustomPrice(
        "dall-e-3",
        input=Decimal(0),
        output=Decimal(0),
        units={
            IMAGES: Decimal("0.04"),
            f"{IMAGES}[quality=hd]": Decimal("0.08"),
            f"{IMAGES}[size=1024x1792]": Decimal("0.08"),
            f"{IMAGES}[quality=hd,size=1024x1792]": Decimal("0.12"),
        },
    )

    def cost(count: int, **request: str) -> Decimal:
        attributes = {f"gen_ai.request.image.{k}": v for k, v in request.items()}
        return price.cost(TokenCounts(units={IMAGES: count}, attributes=attributes))

    assert cost(3, size="1024x1792", quality="hd") == Decimal("0.36")  # 3 x 0.12
    assert cost(3, size="1024x1792", quality="standard") == Decimal("0.24")  # 3 x 0.08 (size)
    assert cost(1, size="1024x1024", quality="hd") == Decimal("0.08")  # quality
    assert cost(2, size="1024x1024") == Decimal("0.08")  # 2 x 0.04: the key without parameters
    assert cost(2) == Decimal("0.08")


def test_a_unit_billed_request_without_a_price_for_its_units_stays_unpriced() -> None:
    book = PriceBook(
        [
            CustomPrice(
                "tts-1",
                input=Decimal(0),
                output=Decimal(0),
                units={"gen_ai.usage.text.characters": Decimal("0.000015")},
            ),
            CustomPrice("tts-1-hd", input=Decimal(1), output=Decimal(2)),
            CustomPrice(
                "dall-e-2",
                input=Decimal(0),
                output=Decimal(0),
                units={f"{IMAGES}[size=512x512]": Decimal("0.018")},
            ),
        ]
    )
    speech = _event(model="tts-1", requests=1, attributes={"gen_ai.usage.text.characters": 11})
    assert book.price(speech) and (speech.cost_usd, speech.cost_source) == (0.000165, "price_book")
    hd = _event(model="tts-1-hd", requests=1, attributes={"gen_ai.usage.text.characters": 11})
    assert not book.price(hd) and (hd.cost_usd, hd.cost_source) == (None, None)
    # Only a price for another size: this image has none.
    big = _event(
        model="dall-e-2", requests=1, attributes={IMAGES: 1, "gen_ai.request.image.size": "1024x1024"}
    )
    assert not book.price(big) and big.cost_usd is None
    small = _event(
        model="dall-e-2", requests=1, attributes={IMAGES: 2, "gen_ai.request.image.size": "512x512"}
    )
    assert book.price(small) and small.cost_usd == 0.036


def test_a_price_of_units_only_needs_no_token_prices() -> None:
    [price] = parse_prices(
        json.dumps([{"model": "whisper-1", "units": {"gen_ai.usage.audio.seconds": "0.0001"}}])
    )
    assert (price.input, price.output, price.units) == (
        Decimal(0),
        Decimal(0),
        {"gen_ai.usage.audio.seconds": Decimal("0.0001")},
    )
    with pytest.raises(ValueError, match="is not param=value"):
        parse_prices(json.dumps([{"model": "dall-e-3", "units": {f"{IMAGES}[hd]": "0.08"}}]))


# --- ingest, `prices`, `reprice` on real databases -------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture
def receiver(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Receiver]:
    """A receiver whose writer applies the price book (re-read on every export)."""
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with running(loop, ExportPipeline(UsageWriter(pool, prices=PriceBookCache(pool, ttl=0)))) as live:
            yield live
    finally:
        pool.close()


def _send(port: int, when: datetime, model: str, count: int, provider: str = "acme-ai") -> None:
    """``count`` chat spans of ``model`` at ``when``: 1500 input tokens of which 300 cache reads,
    400 output tokens of which 100 reasoning."""
    provider_ = TracerProvider(resource=Resource.create({"service.name": "pricing-test"}))
    provider_.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True))
    )
    tracer = provider_.get_tracer("app")
    start = int(when.timestamp() * NS)
    for i in range(count):
        span = tracer.start_span(f"chat {model}", start_time=start + i * NS)
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": 1500,
                "gen_ai.usage.cache_read.input_tokens": 300,
                "gen_ai.usage.output_tokens": 400,
                "gen_ai.usage.reasoning.output_tokens": 100,
                "user.email": "ana@example.com",
            }
        )
        span.end(end_time=start + i * NS + NS // 2)
    provider_.shutdown()


def _rows(url: str, model: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT input_tokens, cache_read_tokens, output_tokens, reasoning_tokens, cost_usd, cost_source, "
            "recorded_cost_usd, recorded_cost_source, repriced_at IS NOT NULL "
            "FROM tokenscale.usage_events WHERE model = %s ORDER BY time",
            (model,),
        ).fetchall()


def test_custom_price_at_ingest_and_reprice_of_past_usage(
    receiver: Receiver, db_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    past = now - timedelta(days=2)
    _send(receiver.grpc_port, past, PRIVATE, 3)
    _send(receiver.grpc_port, past, "gpt-4o-mini", 1, provider="openai")
    before = _rows(db_url, PRIVATE)
    assert [r[:6] for r in before] == [(1200, 300, 400, 100, None, None)] * 3  # unpriced
    (gpt_before,) = _rows(db_url, "gpt-4o-mini")
    assert gpt_before[5] == "computed" and gpt_before[4] > 0

    db = ["--database-url", db_url]
    assert main(["prices", "unpriced", "--json", *db]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["model"], u["events"]) for u in listed] == [(PRIVATE, 3)]

    # A price for the private model: new usage is priced as it arrives.
    assert (
        main(["prices", "set", PRIVATE, "--input", "0.5", "--output", "1.5", "--cache-read", "0.05", *db])
        == 0
    )
    _send(receiver.grpc_port, now - timedelta(minutes=5), PRIVATE, 2)
    # (1200 x 0.5 + 300 x 0.05 + 300 x 1.5 + 100 x 1.5 (reasoning at the output price)) / 1e6
    by_hand = Decimal("0.0012150000")
    assert [r[4:6] for r in _rows(db_url, PRIVATE)] == [(None, None)] * 3 + [(by_hand, "price_book")] * 2

    # A dry run says what would change and changes nothing.
    capsys.readouterr()
    assert main(["reprice", "--from", (past - timedelta(hours=1)).isoformat(), "--dry-run", *db]) == 0
    assert "would change 3 (cost 0 -> 0.0036450000 USD); 0 still unpriced" in capsys.readouterr().out
    assert [r[4:6] for r in _rows(db_url, PRIVATE)][:3] == [(None, None)] * 3

    # reprice: the past usage gets its cost; what was recorded (nothing) is kept beside it.
    capsys.readouterr()
    assert main(["reprice", "--from", (past - timedelta(hours=1)).isoformat(), "--model", PRIVATE, *db]) == 0
    assert "changed 3 (cost 0 -> 0.0036450000 USD)" in capsys.readouterr().out
    assert [r[4:9] for r in _rows(db_url, PRIVATE)] == [(by_hand, "price_book", None, None, True)] * 3 + [
        (by_hand, "price_book", None, None, False)
    ] * 2
    assert_rollups_match_events(db_url)

    # A negotiated price for one tenant's gpt-4o-mini, imported from a file, effective before the usage.
    prices_file = tmp_path / "prices.csv"
    prices_file.write_text(
        f"model,tenant,input,output,cache_read,effective_from\ngpt-4o-mini,default,0.1,0.2,0.01,{past.date()}\n"
    )
    assert main(["prices", "import", str(prices_file), *db]) == 0
    assert main(["reprice", "--from", past.date().isoformat(), *db]) == 0
    # (1200 x 0.1 + 300 x 0.01 + 400 x 0.2) / 1e6
    assert _rows(db_url, "gpt-4o-mini") == [
        (1200, 300, 400, 100, Decimal("0.0002030000"), "price_book", gpt_before[4], "computed", True)
    ]
    assert_rollups_match_events(db_url)
    with psycopg.connect(db_url) as conn:
        daily = conn.execute(
            "SELECT sum(cost_usd), sum(unpriced_events) FROM tokenscale.usage_daily WHERE model = %s",
            (PRIVATE,),
        ).fetchone()
    assert daily == (by_hand * 5, 0)

    # Repricing again changes nothing; the as-recorded cost survives a second price change.
    capsys.readouterr()
    assert main(["reprice", "--from", past.date().isoformat(), *db]) == 0
    assert "changed 0" in capsys.readouterr().out
    assert (
        main(["prices", "set", "gpt-4o-mini", "--tenant", "default", "--input", "1", "--output", "1", *db])
        == 0
    )
    assert main(["reprice", "--from", past.date().isoformat(), "--model", "gpt-4o-mini", *db]) == 0
    (gpt,) = _rows(db_url, "gpt-4o-mini")
    # The newest effective price wins: the one effective from the past date (later than "always").
    assert gpt[4:8] == (Decimal("0.0002030000"), "price_book", gpt_before[4], "computed")
    assert main(["prices", "delete", "gpt-4o-mini", "--tenant", "default", *db]) == 0
    assert main(["reprice", "--from", past.date().isoformat(), "--model", "gpt-4o-mini", *db]) == 0
    assert _rows(db_url, "gpt-4o-mini")[0][4:8] == (gpt_before[4], "computed", gpt_before[4], "computed")
    assert_rollups_match_events(db_url)

    capsys.readouterr()
    assert main(["prices", "list", *db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model\ttenant\tprovider")
    assert out[1].startswith(f"{PRIVATE}\t*\t*\talways\tinput 0.5, output 1.5, cache read 0.05")


def test_prices_set_takes_unit_prices_by_request_parameters(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(db_url)
    db = ["--database-url", db_url]
    hd_tall = "gen_ai.usage.image.count[size=1024x1792,quality=hd]"
    assert (
        main(["prices", "set", "dall-e-3", "--unit", f"{IMAGES}=0.04", "--unit", f"{hd_tall}=0.12", *db]) == 0
    )
    capsys.readouterr()
    assert main(["prices", "list", "--json", *db]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["model"], listed["input"], listed["output"]) == ("dall-e-3", "0", "0")
    assert listed["units"] == {IMAGES: "0.04", hd_tall: "0.12"}
    with pytest.raises(SystemExit):
        main(["prices", "set", "dall-e-3", "--unit", f"{IMAGES}[hd]=0.08", *db])
    assert "'hd' is not param=value" in capsys.readouterr().err
    assert main(["prices", "set", "acme-ft", *db]) == 2  # neither token prices nor unit prices
    assert "input: a price is required" in capsys.readouterr().err
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM tokenscale.prices").fetchone() == (1,)
