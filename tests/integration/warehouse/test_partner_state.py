"""The current-state table under redelivery and disorder, on the real stack (claim → land →
warehouse): each field holds the value of the newest event that set it, whatever order the
events arrive in — within one batch or across batches — and delivering events twice changes
nothing."""

from __future__ import annotations

import json
import uuid

import pytest

from enrollment.simulator.generator import Simulator
from tests.integration.conftest import ingest_events

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def make_events(seed: int):
    sim = Simulator(seed=seed)
    pid = "EM" + uuid.uuid4().hex[:10].upper()

    def event(kind: str, version: int, **payload) -> dict:
        e = json.loads(json.dumps(sim.event_for(kind, "DE", 2)))
        e.update(event_id=str(uuid.uuid4()), partner_id=pid, partner_version=version)
        e["payload"].update(payload)
        return e

    return pid, event


def state(warehouse, pid: str) -> dict:
    rows = warehouse.run(f"SELECT * FROM {warehouse.table('partners')} WHERE partner_id = '{pid}'")
    assert len(rows) == 1
    return dict(rows[0])


def test_each_field_keeps_the_newest_value_whatever_the_arrival_order(
    stack, pipeline_config, region_topic, warehouse
):
    pid, event = make_events(21)
    group = f"test-state-{uuid.uuid4().hex[:6]}"

    def run(events):
        return ingest_events(stack, pipeline_config, warehouse, region_topic, "EMEA", group, events)

    # Batch 1: an update (version 2) arrives before the enrollment it updates.
    update_v2 = event("partner.updated", 2, changes={"phone": "+49302222222"})
    run([update_v2])
    s = state(warehouse, pid)
    assert (s["partner_version"], s["phone"], s["status"], s["first_name"]) == (
        2,
        "+49302222222",
        None,
        None,
    )

    # Batch 2: the late enrollment (version 1, with its own phone) and a newer update (version 3)
    # in the same batch. The enrollment fills what nobody newer set; the phone of version 2 stays.
    enrolled_v1 = event(
        "partner.enrolled", 1, first_name="Jörg", last_name="Weiß", phone="+49301111111"
    )
    update_v3 = event("partner.updated", 3, changes={"email": f"joerg.{pid.lower()}@example.de"})
    run([enrolled_v1, update_v3])
    s = state(warehouse, pid)
    assert s["partner_version"] == 3 and s["last_event_id"] == update_v3["event_id"]
    assert s["phone"] == "+49302222222", "version 2's phone is newer than the enrollment's"
    assert (s["first_name"], s["last_name"], s["status"]) == ("Jörg", "Weiß", "active"), (
        "the late enrollment filled the rest"
    )
    assert (
        s["email"] == f"joerg.{pid.lower()}@example.de"
        and s["email_version"] == 3
        and s["phone_version"] == 2
    )
    assert s["enrolled_at"] is not None

    # Batch 3: everything delivered again, plus an older stale update: nothing changes.
    before = state(warehouse, pid)
    stale_v1 = event("partner.updated", 1, changes={"phone": "+49309999999"})
    run([update_v2, enrolled_v1, update_v3, stale_v1])
    assert state(warehouse, pid) == before
    events = warehouse.run(
        f"SELECT event_id, COUNT(*) AS n FROM {warehouse.table('events')} WHERE partner_id = "
        f"'{pid}' GROUP BY event_id"
    )
    assert sorted(r["event_id"] for r in events) == sorted(
        e["event_id"] for e in (update_v2, enrolled_v1, update_v3, stale_v1)
    )
    assert all(r["n"] == 1 for r in events), "redelivered events are stored once"

    # Batch 4: a termination (version 4) and, in the same
    # batch, a late older update: terminated it stays.
    run(
        [
            event("partner.terminated", 4),
            event("partner.updated", 1, changes={"phone": "+49308888888"}),
        ]
    )
    s = state(warehouse, pid)
    assert (s["status"], s["partner_version"], s["phone"]) == ("terminated", 4, "+49302222222")
