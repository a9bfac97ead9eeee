"""Representable by construction: valid events at every edge the contract accepts go through
claim → land → warehouse into the BigQuery emulator, then into Firestore, Solr and the Marketing
Cloud stub, and every value is read back exactly as sent."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from google.cloud import bigquery

from enrollment.clients.services import firestore_client, storage_client
from enrollment.contracts.spec import NUMBER_LIMIT, SAFE_INTEGER, TEXT_MAX_CHARS
from enrollment.simulator.generator import Simulator
from enrollment.sync.run import SyncRun
from tests.integration.conftest import ingest_events
from tests.integration.sync.test_sinks import mc_rows

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

REGION = "EMEA"
LONG_NAME = ("\U0001f600Ω" * TEXT_MAX_CHARS)[
    :TEXT_MAX_CHARS
]  # characters beyond the BMP, at the length limit


def _events() -> tuple[dict, list[dict]]:
    sim = Simulator(seed=3)
    ids = {who: "EM" + uuid.uuid4().hex[:10].upper() for who in ("edge", "old")}

    def event(kind: str, who: str, version: int, occurred_at: str, **payload) -> dict:
        e = sim.event_for(kind, "DE", 2)
        e.update(
            event_id=str(uuid.uuid4()),
            partner_id=ids[who],
            partner_version=version,
            occurred_at=occurred_at,
        )
        e["payload"].update(payload)
        if (
            kind == "partner.enrolled"
        ):  # EMEA is opt-in: both may be contacted, so Marketing Cloud holds them
            e["payload"]["consents"]["marketing_email"] = True
        return e

    enrolled = event(
        "partner.enrolled",
        "edge",
        SAFE_INTEGER - 1,
        "9999-12-31T23:59:59.999999Z",
        first_name=LONG_NAME,
        last_name="NaN",
    )
    enrolled["payload"]["address"]["line1"] = "1 Infinity Loop"
    return ids, [
        enrolled,
        event(
            "partner.updated",
            "edge",
            SAFE_INTEGER,
            "9999-12-31T22:59:59-01:00",
            changes={"last_name": "Infinity", "phone": "+4930123456789"},
        ),
        event(
            "partner.enrolled",
            "old",
            1,
            "2026-01-05T08:00:00Z",
            first_name="Ada",
            last_name="-Infinity",
        ),
        event("partner.updated", "old", 2, "0001-01-01T00:00:00Z", changes={"first_name": "Null"}),
        event(
            "order.placed",
            "edge",
            SAFE_INTEGER,
            "0001-01-01T00:59:59+00:59",
            total_amount=NUMBER_LIMIT,
            volume_points=0,
            line_count=SAFE_INTEGER,
        ),
    ]


def test_valid_rows_at_every_edge_reach_the_warehouse_and_every_sink_exactly(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    ids, events = _events()
    group = f"test-edges-{uuid.uuid4().hex[:6]}"
    batch_id = ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, events)

    rows = warehouse.run(
        "SELECT event_id, partner_version, occurred_at, first_name, last_name, total_amount FROM "
        f"{warehouse.table('events')} "
        f"WHERE batch_id = @b",
        [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
    )
    got = {r["event_id"]: r for r in rows}
    assert len(got) == len(events)
    for e in events:
        row = got[e["event_id"]]
        assert row["partner_version"] == e["partner_version"], "integers exact"
        assert row["occurred_at"] == datetime.fromisoformat(
            e["occurred_at"].replace("Z", "+00:00")
        ).astimezone(UTC), e["occurred_at"]
    assert (
        got[events[0]["event_id"]]["first_name"] == LONG_NAME
        and got[events[0]["event_id"]]["last_name"] == "NaN"
    )
    assert got[events[4]["event_id"]]["total_amount"] == NUMBER_LIMIT

    partners = {
        r["partner_id"]: r
        for r in warehouse.run(
            "SELECT partner_id, partner_version, first_name, last_name FROM "
            f"{warehouse.table('partners')}"
        )
    }
    assert (
        partners[ids["edge"]]["partner_version"] == SAFE_INTEGER
        and partners[ids["edge"]]["first_name"] == LONG_NAME
    )
    assert (
        partners[ids["edge"]]["last_name"] == "Infinity"
        and partners[ids["old"]]["last_name"] == "-Infinity"
    )

    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    for sink in sinks.values():
        outcome = sync.run(sink, REGION)
        assert outcome["batches"] == 1, (sink.name, outcome)
    refused = warehouse.run(
        f"SELECT sink, partner_id, message FROM {warehouse.table('sink_quarantine')}"
    )
    assert refused == [], "no sink refused a value the contract accepts"

    docs = {
        d.id: d.to_dict()
        for d in firestore_client(stack.project)
        .collection(sinks["firestore"].collection.id)
        .stream()
    }
    assert (
        docs[ids["edge"]]["partner_version"] == SAFE_INTEGER
        and docs[ids["edge"]]["first_name"] == LONG_NAME
    )
    assert (
        docs[ids["edge"]]["last_name"] == "Infinity"
        and docs[ids["old"]]["last_name"] == "-Infinity"
    )
    held = sinks["solr"].get(list(ids.values()))
    assert (
        held[ids["edge"]]["partner_version"] == SAFE_INTEGER
        and held[ids["edge"]]["first_name"] == LONG_NAME
    )
    mc = mc_rows(stack, sinks["marketing_cloud"].data_extension)
    assert (
        mc[ids["edge"]]["PartnerVersion"] == SAFE_INTEGER
        and mc[ids["edge"]]["FirstName"] == LONG_NAME
    )
    assert json.loads(json.dumps(mc[ids["old"]]))["LastName"] == "-Infinity"
