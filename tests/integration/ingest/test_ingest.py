"""Claim → land → warehouse on the real stack, for one region's topic: BigQuery holds exactly the
expected rows, quarantine exactly the expected reasons, the ledger balances, the offsets are
committed to the end, and running every step again changes nothing."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import claimed_batch, committed_offsets

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_a_batch_with_faults_lands_and_merges_exactly(
    stack, pipeline_config, region_topic, warehouse
):
    group, bucket, messages, manifest = claimed_batch(
        stack,
        pipeline_config,
        region_topic,
        "EMEA",
        seed=404,
        events=1500,
        faults=0.08,
        initial_partners=30,
    )
    assert manifest is not None and manifest.offsets == len(messages)
    assert (
        claim(stack.kafka, group, "EMEA", region_topic, 2, bucket, max_batch=100_000) == manifest
    ), "an unfinished batch is claimed again as it was"

    landed = land(stack.kafka, manifest, bucket, Keyring.from_env())
    expected_valid = {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}
    expected_quarantine = sorted(
        ",".join(m.expected["reasons"]) for m in messages if m.expected["outcome"] == "quarantined"
    )
    assert landed.valid == len(expected_valid)
    assert landed.valid + landed.quarantined + landed.duplicates == len(messages)

    # The group's offsets are committed to the end, and nothing is pending any more.
    consumer = Consumer(stack.kafka.consumer({"group.id": group}))
    ends = [
        consumer.get_watermark_offsets(TopicPartition(region_topic, p), timeout=10)[1]
        for p in (0, 1)
    ]
    consumer.close()
    assert committed_offsets(stack.kafka, group, region_topic, 2) == ends
    assert claim(stack.kafka, group, "EMEA", region_topic, 2, bucket, max_batch=100_000) is None

    counts = merge_batch(warehouse, landed)
    Ledger(warehouse).record(landed, "warehouse", counts["events"], counts["seconds"])
    events = {
        r["event_id"] for r in warehouse.run(f"SELECT event_id FROM {warehouse.table('events')}")
    }
    assert events == expected_valid
    reasons = sorted(
        r["reasons"] for r in warehouse.run(f"SELECT reasons FROM {warehouse.table('quarantine')}")
    )
    assert reasons == expected_quarantine
    assert Ledger(warehouse).balance(landed.batch_id)["warehouse"]["offsets_in"] == len(messages)

    # Current state: one row per partner with partner events, at its newest partner version.
    partner_versions = {}
    for m in messages:
        e = m.expected
        if e["outcome"] == "valid" and e["event_type"] in (
            "partner.enrolled",
            "partner.updated",
            "partner.terminated",
        ):
            partner_versions[e["partner_id"]] = max(
                partner_versions.get(e["partner_id"], 0), e["partner_version"]
            )
    rows = {
        r["partner_id"]: r["partner_version"]
        for r in warehouse.run(
            f"SELECT partner_id, partner_version FROM {warehouse.table('partners')}"
        )
    }
    assert rows == partner_versions

    # Everything again: nothing changes.
    snapshot = (
        warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('events')}")[0]["n"],
        warehouse.run(
            f"SELECT TO_JSON_STRING(t) AS j FROM {warehouse.table('partners')} t ORDER BY "
            "partner_id"
        ),
    )
    again = land(stack.kafka, manifest, bucket, Keyring.from_env())
    assert again.as_dict() | {"seconds": 0} == landed.as_dict() | {"seconds": 0}
    merge_batch(warehouse, again)
    assert (
        warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('events')}")[0]["n"],
        warehouse.run(
            f"SELECT TO_JSON_STRING(t) AS j FROM {warehouse.table('partners')} t ORDER BY "
            "partner_id"
        ),
    ) == snapshot
