"""Retention on the real emulators: what is only transient goes once its time has passed; what is
durable (landed batches, pending records, the claim chain, welcome-journey claims, the warehouse's
tables) never does; a second pass changes nothing."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import bigquery

from enrollment.clients.services import storage_client
from enrollment.ops import housekeeping

pytestmark = [pytest.mark.integration]


def test_transient_objects_and_staging_tables_go_after_their_retention_durable_state_stays(
    stack, pipeline_config, warehouse
):
    client = storage_client(stack.project)
    bucket = client.create_bucket(f"test-housekeeping-{uuid.uuid4().hex[:8]}")
    config = dataclasses.replace(
        pipeline_config, landing_bucket=bucket.name, warehouse_dataset=warehouse.dataset
    )
    sink, region = next(iter(config.sinks)), config.regions[0].code
    transient = [
        f"sinks/{sink}/{region}/0123abcd.parquet",
        f"claims/{region}/from-0123456789abcdef0123.json",
        f"handover/{region}/{region.lower()}-0123.parquet",
        f"reconciliation/{region}/2026-11-20/events.parquet",  # an older version's day file
    ]
    durable = [
        f"claims/{region}/landed-0123456789abcdef0123.json",
        f"sinks/{sink}/journeys/welcome/{region}0000000001.json",
        f"sinks/{sink}/welcome/{region.lower()}-0123.json",
        f"pending/{config.consumer_group}/{region}/b.json",
        f"set_aside/{config.consumer_group}/{region}/c.json",
        f"landing/{region}/b/valid.parquet",
    ]
    for name in transient + durable:
        bucket.blob(name).upload_from_string(b"{}")
    staging, kept = ["_cycle_events_0123", "_stage_recon_amer_20261129"], ["events", "partners"]
    for name in staging + kept:
        warehouse.client.create_table(
            bigquery.Table(
                f"{stack.project}.{warehouse.dataset}.{name}",
                schema=[bigquery.SchemaField("x", "STRING")],
            )
        )

    def objects() -> set[str]:
        return {b.name for b in client.list_blobs(bucket.name)}

    def tables() -> set[str]:
        return {
            t.table_id for t in warehouse.client.list_tables(f"{stack.project}.{warehouse.dataset}")
        }

    try:
        fresh = housekeeping.sweep(bucket, warehouse.client, config)
        assert fresh.as_dict() == {
            "handover_objects": 0,
            "claim_records": 0,
            "reconciliation_files": 0,
            "staging_tables": 0,
        }
        assert objects() == set(transient + durable) and tables() >= set(staging + kept)

        later = datetime.now(UTC) + timedelta(days=config.retention.claims_days + 1)
        swept = housekeeping.sweep(bucket, warehouse.client, config, now=later)
        assert swept.as_dict() == {
            "handover_objects": 2,
            "claim_records": 1,
            "reconciliation_files": 1,
            "staging_tables": 2,
        }
        assert objects() == set(durable), "only the transient objects went"
        assert not tables() & set(staging) and tables() >= set(kept), "only the staging tables went"

        again = housekeeping.sweep(bucket, warehouse.client, config, now=later)
        assert again.as_dict() == {
            "handover_objects": 0,
            "claim_records": 0,
            "reconciliation_files": 0,
            "staging_tables": 0,
        }
        assert objects() == set(durable)
    finally:
        for blob in client.list_blobs(bucket.name):
            blob.delete()
        bucket.delete()


def test_a_claim_record_younger_than_its_retention_stays_though_its_hand_over_went(
    stack, pipeline_config, warehouse
):
    client = storage_client(stack.project)
    bucket = client.create_bucket(f"test-housekeeping-{uuid.uuid4().hex[:8]}")
    config = dataclasses.replace(
        pipeline_config, landing_bucket=bucket.name, warehouse_dataset=warehouse.dataset
    )
    sink, region = next(iter(config.sinks)), config.regions[0].code
    try:
        bucket.blob(f"sinks/{sink}/{region}/k.parquet").upload_from_string(b"x")
        bucket.blob(f"claims/{region}/from-k.json").upload_from_string(b"{}")
        between = datetime.now(UTC) + timedelta(days=config.retention.handover_days + 1)
        assert between < datetime.now(UTC) + timedelta(days=config.retention.claims_days)
        swept = housekeeping.sweep(bucket, warehouse.client, config, now=between)
        assert (swept.handover_objects, swept.claim_records) == (1, 0)
        assert {b.name for b in client.list_blobs(bucket.name)} == {f"claims/{region}/from-k.json"}
    finally:
        for blob in client.list_blobs(bucket.name):
            blob.delete()
        bucket.delete()
