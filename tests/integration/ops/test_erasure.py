"""Erasure across every store, on the real services, through the DAGs: a partner is erased while
their events are still arriving; afterwards no store holds them — BigQuery, the landed batches,
the cycles' and the sinks' hand-over copies, Firestore, Solr, Marketing Cloud (rows, journey
entries) — the ledger's counts still balance, a replay does not bring them back and the
reconciliation does not miss them."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from enrollment.clients.services import Endpoints, bigquery_client, firestore_client, storage_client
from enrollment.core.pii import Keyring
from enrollment.ops.erasure.scrub import _without_sponsor
from enrollment.simulator.faults import Message
from enrollment.simulator.generator import Simulator
from enrollment.sinks import build_sink
from tests.integration.conftest import produce

pytestmark = [pytest.mark.integration]

REGION = "EMEA"


def _texts(table: pa.Table) -> list[str]:
    """Every text and byte value of a table, as text
    (Parquet compresses: read the values, not the file)."""
    out = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out += [v for v in column.to_pylist() if v]
        elif pa.types.is_binary(column.type):
            out += [v.decode("utf-8", "replace") for v in column.to_pylist() if v]
    return out


def test_a_partner_erased_mid_stream_is_gone_from_every_store_and_stays_gone_through_a_replay(
    stack, airflow_db, dagbag, isolated_pipeline
):
    from airflow.utils.state import DagRunState

    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.sync import sync_dag
    from enrollment_airflow.warehouse import warehouse_dag

    config = isolated_pipeline
    region = config.region(REGION)
    bq, bucket = (
        bigquery_client(stack.project),
        storage_client(stack.project).bucket(config.landing_bucket),
    )
    ops, wh = (
        f"`{stack.project}.{config.ops_dataset}`",
        f"`{stack.project}.{config.warehouse_dataset}`",
    )
    messages = [
        m
        for m in Simulator(seed=uuid.uuid4().int % 1_000_000, config=config).take(1200)
        if m.topic == region.topic
    ]
    enrollments = [
        json.loads(m.value)
        for m in messages
        if json.loads(m.value)["event_type"] == "partner.enrolled"
    ]
    # The victim may be contacted (so Marketing Cloud
    # holds them); the control partner is anyone else.
    victim = next(
        e
        for e in enrollments
        if (e["payload"].get("consents") or {}).get("marketing_email", True) is True
    )
    control = next(e for e in enrollments if e["partner_id"] != victim["partner_id"])
    vid, email = victim["partner_id"], victim["payload"]["email"]
    # A message too broken to name its partner, holding the victim's id and email in its bytes.
    broken = json.dumps(victim | {"event_id": str(uuid.uuid4())})[:-25].encode()
    produce(stack.kafka, messages)
    produce(stack.kafka, [Message(0, region.topic, vid.encode(), broken)])

    def run_pipeline() -> None:
        assert ingest_dag(region).test().state == DagRunState.SUCCESS
        assert warehouse_dag().test().state == DagRunState.SUCCESS
        for name in config.sinks:
            assert sync_dag(name).test().state == DagRunState.SUCCESS, name

    run_pipeline()
    sinks = {
        name: build_sink(name, config.sinks[name], Endpoints.from_env()) for name in config.sinks
    }
    documents = firestore_client(stack.project).collection(config.sinks["firestore"]["collection"])
    mc = sinks["marketing_cloud"]

    def mc_rows(pid: str) -> list[dict]:
        return [
            r
            for r in mc.client.rowset(mc.data_extension)
            if str(r.get("partnerid") or r.get("PartnerId")) == pid
        ]

    def journey_entries(pid: str) -> list[dict]:
        entries = (
            httpx.get(
                f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/journey-events",
                params={"event_definition_key": mc.welcome_event},
                headers=stack.stub_headers(),
            )
            .raise_for_status()
            .json()["items"]
        )
        return [e for e in entries if e.get("ContactKey") == pid]

    def partner_rows(pid: str) -> int:
        return next(
            iter(
                bq.query(
                    f"SELECT COUNT(*) AS n FROM {wh}.partners WHERE partner_id = '{pid}'"
                ).result()
            )
        )["n"]

    # Before: both partners are everywhere a partner goes.
    for who in (vid, control["partner_id"]):
        assert (
            partner_rows(who) == 1
            and documents.document(who).get().exists
            and sinks["solr"].get([who])
        )
    assert mc_rows(vid), "Marketing Cloud holds the partners it may contact"
    assert any(
        vid in pq.read_table(io.BytesIO(b.download_as_bytes())).column("partner_id").to_pylist()
        for b in bucket.list_blobs(prefix=f"handover/{REGION}/")
    ), "the cycle handed the victim over to the sinks"
    assert (
        next(
            iter(
                bq.query(
                    f"SELECT COUNT(*) AS n FROM {wh}.quarantine WHERE "
                    f"STRPOS(SAFE_CONVERT_BYTES_TO_STRING(raw), '{vid}') > 0"
                ).result()
            )
        )["n"]
        >= 1
    )

    # Mid-stream: an update of the victim is in Kafka, not yet landed, when the erasure runs.
    update = next(
        json.loads(m.value)
        for m in messages
        if json.loads(m.value)["event_type"] == "partner.updated"
    )
    late = update | {
        "event_id": str(uuid.uuid4()),
        "partner_id": vid,
        "partner_version": 10_000,
        "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    produce(stack.kafka, [Message(0, region.topic, vid.encode(), json.dumps(late).encode())])
    ledger_before = sorted(
        (r["batch_id"], r["stage"], r["offsets_in"], r["valid"], r["quarantined"], r["duplicates"])
        for r in bq.query(f"SELECT * FROM {ops}.ledger").result()
    )

    erase = dagbag.dags["erase_partners"]
    conf = {
        "partner_ids": [vid],
        "reason": "gdpr_art17",
        "ticket": "DPO-2026-0042",
        "settle_seconds": 0,
    }
    assert erase.test(run_conf=conf).state == DagRunState.SUCCESS
    run_pipeline()  # the late update lands after the erasure

    keyring = Keyring.from_env()
    token = keyring.token(vid, "partner_id")

    def assert_clean() -> None:
        for table, where in (
            ("events", f"partner_id = '{vid}'"),
            ("partners", f"partner_id = '{vid}'"),
            (
                "quarantine",
                f"partner_id = '{vid}' OR STRPOS(SAFE_CONVERT_BYTES_TO_STRING(raw), '{vid}') > 0",
            ),
            ("sink_quarantine", f"partner_id = '{vid}'"),
        ):
            assert (
                next(
                    iter(bq.query(f"SELECT COUNT(*) AS n FROM {wh}.{table} WHERE {where}").result())
                )["n"]
                == 0
            ), table
        # Every Parquet object of the pipeline's batches, hand-over copies and reconciliation files.
        looked = handed = 0
        batch_ids = [
            r["batch_id"] for r in bq.query(f"SELECT DISTINCT batch_id FROM {ops}.ledger").result()
        ]
        ours = tuple(f"landing/{REGION}/{b}/" for b in batch_ids)
        handovers = tuple(f"handover/{REGION}/{b}.parquet" for b in batch_ids)
        ours += handovers
        for blob in storage_client(stack.project).list_blobs(config.landing_bucket):
            if not blob.name.endswith(".parquet") or not blob.name.startswith(
                (*ours, "sinks/", "reconciliation/")
            ):
                continue
            try:
                table = pq.read_table(io.BytesIO(blob.download_as_bytes()))
            except pa.ArrowInvalid:
                assert not blob.name.startswith(ours), f"{blob.name} unreadable"
                continue  # another test's deliberately damaged hand-over copy
            if (
                "sponsor_id" in table.column_names
            ):  # a downline's reference to its sponsor is the downline's record (kept)
                table = table.drop_columns(["sponsor_id"])
            texts = [_without_sponsor(t) for t in _texts(table) if vid in t or email in t]
            assert not [t for t in texts if vid in t or email in t], blob.name
            looked += 1
            handed += blob.name in handovers
        assert looked > 0 and handed > 0, (looked, handed)
        assert not [b.name for b in bucket.list_blobs(prefix="sinks/") if vid in b.name], (
            "no object is named after the partner"
        )
        assert not documents.document(vid).get().exists
        assert not sinks["solr"].get([vid])
        assert not mc_rows(vid) and not journey_entries(vid)
        # The control partner is untouched.
        assert (
            partner_rows(control["partner_id"]) == 1
            and documents.document(control["partner_id"]).get().exists
        )

    assert_clean()
    # The events stay, anonymised: the ledger's counts are unchanged and still true.
    erased_events = next(
        iter(
            bq.query(f"SELECT COUNT(*) AS n FROM {wh}.events WHERE partner_id = 'erased'").result()
        )
    )["n"]
    assert erased_events >= 2, "the enrollment and the late update, anonymised"
    assert (
        sorted(
            (
                r["batch_id"],
                r["stage"],
                r["offsets_in"],
                r["valid"],
                r["quarantined"],
                r["duplicates"],
            )
            for r in bq.query(
                f"SELECT * FROM {ops}.ledger WHERE batch_id IN UNNEST(@b)",
                job_config=bigquery.QueryJobConfig(
                    query_parameters=[
                        bigquery.ArrayQueryParameter(
                            "b", "STRING", sorted({b for b, *_ in ledger_before})
                        )
                    ]
                ),
            ).result()
        )
        == ledger_before
    )
    # The erasure ledger: every store, with the token, the reason and the ticket; never the id.
    rows = [dict(r) for r in bq.query(f"SELECT * FROM {ops}.erasures").result()]
    assert {r["partner_token"] for r in rows} == {token} and {r["ticket"] for r in rows} == {
        "DPO-2026-0042"
    }
    assert {r["store"] for r in rows if r["step"] == "verify"} >= {
        "bigquery.events",
        "bigquery.partners",
        "landed_batches",
        *config.sinks,
    }
    assert all(r["ok"] for r in rows if r["step"] == "verify")
    assert vid not in json.dumps(rows, default=str)

    # A replay of the day (warehouse and every sink), restoring every batch's rows, brings
    # nothing back; the reconciliation misses no one.
    today = datetime.now(UTC).date().isoformat()
    replay = {
        "region": REGION,
        "date_from": today,
        "date_to": today,
        "stages": ["warehouse", "sync"],
        "sinks": list(config.sinks),
        "restore": True,
    }
    assert dagbag.dags["replay"].test(run_conf=replay).state == DagRunState.SUCCESS
    assert_clean()
    assert (
        dagbag.dags["reconciliation"].test(run_conf={"day": today, "regions": [REGION]}).state
        == DagRunState.SUCCESS
    )
    findings = {
        r["comparison"]: dict(r)
        for r in bq.query(
            f"SELECT * FROM {ops}.reconciliation WHERE region = '{REGION}' AND day = '{today}'"
        ).result()
    }
    assert findings and all(f["ok"] for f in findings.values()), {
        k: v["detail"] for k, v in findings.items() if not v["ok"]
    }
    # A second erasure run of the same request changes nothing and still verifies.
    assert erase.test(run_conf=conf).state == DagRunState.SUCCESS
    assert_clean()
    for sink in sinks.values():
        sink.close()
