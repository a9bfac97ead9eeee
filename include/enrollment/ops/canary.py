"""The canary: one enrollment per region, injected into Kafka like any other event and traced until
it is visible in BigQuery and in every sink.

Each region has one canary partner (``<prefix>CANARY0000``, sponsored by ``<prefix>CANARY0001``),
re-enrolled at a new version each time (the version is the injection's epoch second, so it only
grows): the canary adds no partner per run, and the welcome journey is fired for it once ever.
Its name and e-mail say what it is (``Canary <Region>``, ``canary.<region>@example.com``), so
reports can leave it out; business side effects skip it (``is_canary``: no welcome journey).

Visible means: the warehouse's ``partners`` row is at the canary's version or newer, and every
sink's ``audit`` of that row finds nothing wrong (the sink holds this state or a newer one).
Every trace is written to ``<ops>.canary`` with what was seen and what was missing.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from enrollment.config import PipelineConfig, Region
from enrollment.core.partners import canary_id
from enrollment.simulator.generator import Simulator
from enrollment.simulator.payloads import timestamp
from enrollment.sinks.base import Sink

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message

    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.kafka import KafkaSettings


CANARY_SCHEMA = [
    ("injected_at", "TIMESTAMP"),
    ("region", "STRING"),
    ("partner_id", "STRING"),
    ("partner_version", "INT64"),
    ("event_id", "STRING"),
    ("seen", "STRING"),
    ("missing", "STRING"),
    ("seconds", "FLOAT64"),
    ("ok", "BOOL"),
    ("traced_at", "TIMESTAMP"),
]


WAREHOUSE = "bigquery"


@dataclass
class Canary:
    region: str
    partner_id: str
    partner_version: int
    event_id: str
    injected_at: float  # epoch seconds (the Kafka timestamp of the event)
    seen: dict[str, float] = field(default_factory=dict)  # destination -> seconds after injection

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canary_event(config: PipelineConfig, region: Region, version: int) -> dict[str, Any]:
    """A valid ``partner.enrolled`` of the region's canary partner at ``version``."""
    country = region.countries[0]  # a configured region has countries with market rules
    event = Simulator(seed=version, config=config).event_for("partner.enrolled", country, 2)
    event.update(
        event_id=str(uuid.uuid4()),
        partner_id=canary_id(region),
        partner_version=version,
        occurred_at=timestamp(time.time()),
    )
    event["payload"].update(
        first_name="Canary",
        last_name=region.code.title(),
        email=f"canary.{region.code.lower()}@example.com",
        sponsor_id=canary_id(region, 1),
    )
    if "consents" in event["payload"]:
        # Contactable, so the canary is traced through Marketing Cloud too (never welcomed:
        # is_canary).
        event["payload"]["consents"]["marketing_email"] = True
    return event


def inject(
    kafka: KafkaSettings, config: PipelineConfig, regions: list[Region] | None = None
) -> list[Canary]:
    """One canary enrollment per region into its topic, keyed like SAP Commerce keys them."""
    from confluent_kafka import Producer

    version = int(time.time())
    producer = Producer(
        kafka.producer({"enable.idempotence": True, "partitioner": "murmur2_random"})
    )
    canaries: list[Canary] = []
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message, canary: Canary) -> None:
        if err is not None:
            failures.append(f"{canary.region}: {err}")
        else:
            canary.injected_at = msg.timestamp()[1] / 1000

    for region in regions or config.regions:
        event = canary_event(config, region, version)
        canary = Canary(region.code, event["partner_id"], version, event["event_id"], time.time())
        producer.produce(
            region.topic,
            key=event["partner_id"].encode(),
            value=json.dumps(event).encode(),
            on_delivery=partial(delivered, canary=canary),
        )
        canaries.append(canary)
    left = producer.flush(30)
    if failures or left:
        raise RuntimeError(
            f"canary: not delivered to Kafka: {'; '.join(failures) or f'{left} messages'}"
        )
    return canaries


def look(
    warehouse: BigQuery, sinks: dict[str, Sink], canaries: list[Canary], now: float | None = None
) -> list[Canary]:
    """Marks where each canary is visible now (the warehouse, then every sink); returns them."""
    from google.cloud import bigquery

    now = time.time() if now is None else now
    ids = [c.partner_id for c in canaries]
    rows = {
        r["partner_id"]: dict(r)
        for r in warehouse.run(
            f"SELECT * FROM {warehouse.table('partners')} WHERE partner_id IN UNNEST(@ids)",
            [bigquery.ArrayQueryParameter("ids", "STRING", ids)],
        )
    }
    for c in canaries:
        state = rows.get(c.partner_id)
        if state is None or int(state["partner_version"]) < c.partner_version:
            continue
        c.seen.setdefault(WAREHOUSE, round(now - c.injected_at, 1))
        for name, sink in sinks.items():
            if name not in c.seen and not sink.audit([state]):
                c.seen[name] = round(now - c.injected_at, 1)
    return canaries


def missing(canaries: list[Canary], sinks: list[str]) -> dict[str, list[str]]:
    """Region -> the destinations its canary has not reached yet."""
    out: dict[str, list[str]] = {}
    for c in canaries:
        gone = [d for d in [WAREHOUSE, *sinks] if d not in c.seen]
        if gone:
            out[c.region] = gone
    return out


def record(warehouse: BigQuery, canaries: list[Canary], sinks: list[str]) -> None:
    """One row per canary in ``<ops>.canary`` (writing a trace again replaces it)."""
    now = datetime.now(UTC)
    gone = missing(canaries, sinks)
    rows = [
        {
            "injected_at": datetime.fromtimestamp(c.injected_at, UTC),
            "region": c.region,
            "partner_id": c.partner_id,
            "partner_version": c.partner_version,
            "event_id": c.event_id,
            "seen": ",".join(f"{d}:{s:g}s" for d, s in c.seen.items()) or None,
            "missing": ",".join(gone.get(c.region, [])) or None,
            "seconds": max(c.seen.values()) if c.region not in gone else None,
            "ok": c.region not in gone,
            "traced_at": now,
        }
        for c in canaries
    ]
    warehouse.insert_rows(
        "canary", CANARY_SCHEMA, rows, partition="injected_at", cluster="region", key=("event_id",)
    )
