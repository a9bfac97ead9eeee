"""Erasure interleaved with the writers it races, on the real services: each writer is stopped at
the worst point by a hook (never a sleep) while the erasure runs, then let go. Afterwards the
partner's id, name, e-mail and tax-id token are in no store — read back from the landed objects,
BigQuery and each sink — and the other partners are where they belong."""

from __future__ import annotations

import io
import json
import time
import uuid

import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from enrollment.clients.bigquery import landed_schema
from enrollment.clients.services import firestore_client, storage_client
from enrollment.core.pii import Keyring
from enrollment.ingest import suppression
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.ingest.pending import pending_batches
from enrollment.ingest.shape import landed_schemas
from enrollment.ops.erasure import scrub
from enrollment.simulator.faults import Message
from enrollment.sync.run import SyncRun
from enrollment.sync.tables import ensure_tables as ensure_sync_tables
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import Ledger
from enrollment.warehouse.tables import ensure_tables
from tests.integration.conftest import ingest_events, produce
from tests.integration.ops.test_erasure import _texts
from tests.integration.sync.test_sinks import Scenario, mc_rows

pytestmark = [pytest.mark.integration]

REGION = "EMEA"


class Killed(Exception):
    """The writer's process dying at the hook (what a SIGKILL leaves behind: nothing after it)."""


def erase(warehouse, bucket, group: str, pid: str, sinks=(), regions=(REGION,)) -> dict:
    """The erasure's steps in the DAG's order (suppress, the landed batches, warehouse, the
    batches' hand-overs, sinks), as ``erase_partners`` runs them; what each found."""
    keyring = Keyring.from_env()
    suppression.suppress(bucket, [keyring.token(pid, "partner_id")])
    batches = scrub.batches_holding(warehouse, bucket, group, [pid], regions)
    return {
        "batches": batches,
        "landed": scrub.scrub_landed(bucket, batches, {pid}),
        "tables": scrub.scrub_warehouse(warehouse, [pid]),
        "handovers": scrub.scrub_handovers(bucket, batches, {pid}),
        "sinks": {s.name: s.erase([pid]) for s in sinks},
    }


def queued(bucket, group: str) -> list[str]:
    return [b.batch_id for b in pending_batches(bucket, group)]


def values_naming(bucket, prefix: str, texts: list[str]) -> list[str]:
    """The objects of a landed batch, once per value containing any of ``texts``."""
    found = []
    for kind in ("valid", "raw", "quarantine", "partners"):
        blob = bucket.blob(f"{prefix}/{kind}.parquet")
        table = pq.read_table(io.BytesIO(blob.download_as_bytes()))
        # Where, never what: a failing assertion must not print the personal values.
        found += [kind for v in _texts(table) if any(t in v for t in texts)]
    return found


def personal(event: dict) -> list[str]:
    """What names the partner: the id, the names, the e-mail."""
    p = event["payload"]
    return [event["partner_id"], p["email"], p["first_name"], p["last_name"]]


def test_a_land_killed_between_its_writes_and_its_pending_record_with_an_erasure_between_lands_no_one_in_clear(  # noqa: E501
    stack, pipeline_config, region_topic, warehouse
):
    scenario = Scenario(seed=21)
    # An optional tax id where the market asks for none: landed as its token only.
    tax_id = f"DE{uuid.uuid4().int % 10**11:011d}"
    victim_event = scenario.event(
        "partner.enrolled", "jose", 1, first_name="Jorunn", last_name="Vanderhoek", tax_id=tax_id
    )
    tax_token = Keyring.from_env().token(tax_id, "tax_id")
    events = [victim_event, scenario.event("partner.enrolled", "ana", 1, first_name="Ana")]
    victim, control = scenario.ids["jose"], scenario.ids["ana"]
    group = f"test-erase-land-{uuid.uuid4().hex[:6]}"
    ensure_tables(warehouse, *(landed_schema(s) for s in landed_schemas()))
    ensure_sync_tables(warehouse)
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    produce(
        stack.kafka,
        [
            Message(i, region_topic, e["partner_id"].encode(), json.dumps(e).encode())
            for i, e in enumerate(events)
        ],
    )
    manifest = claim(stack.kafka, group, REGION, region_topic, 2, bucket, max_batch=100_000)

    def killed_after_writing(step: str) -> None:
        if step == "written":
            raise Killed(step)

    with pytest.raises(Killed):
        land(stack.kafka, manifest, bucket, Keyring.from_env(), step=killed_after_writing)
    assert values_naming(bucket, manifest.prefix, [victim]), "the killed attempt wrote in clear"
    assert values_naming(bucket, manifest.prefix, [tax_token]), "and the tax id's token"
    assert manifest.batch_id not in queued(bucket, group)

    found = erase(warehouse, bucket, group, victim)
    assert manifest.batch_id not in found["batches"], "the erasure cannot know the batch"

    landed = land(stack.kafka, manifest, bucket, Keyring.from_env())  # the retry
    assert landed.valid == 2, "rows keep their count: the ledger stays true"
    assert manifest.batch_id in queued(bucket, group)
    assert values_naming(bucket, manifest.prefix, [*personal(victim_event), tax_token]) == []
    assert values_naming(bucket, manifest.prefix, [control]), "the other partner is untouched"
    assert scrub.remaining_in_batch(bucket, manifest.batch_id, {victim}) == 0

    # The next cycle takes the batch: the partner is not re-created in the warehouse.
    merge_batch(warehouse, landed)
    assert scrub.remaining_in_warehouse(warehouse, [victim]) == {
        "events": 0,
        "partners": 0,
        "quarantine": 0,
        "sink_quarantine": 0,
    }
    assert not warehouse.run(
        f"SELECT event_id FROM {warehouse.table('events')} WHERE tax_id_token = @t",
        [bigquery.ScalarQueryParameter("t", "STRING", tax_token)],
    )
    assert [
        r["partner_id"]
        for r in warehouse.run(f"SELECT partner_id FROM {warehouse.table('partners')}")
    ] == [control]


def sink_holds(stack, sinks, name: str, pid: str) -> bool:
    """Read from the service itself."""
    if name == "firestore":
        collection = firestore_client(stack.project).collection(sinks["firestore"].collection.id)
        return collection.document(pid).get().exists
    if name == "solr":
        return bool(sinks["solr"].get([pid]))
    return pid in mc_rows(stack, sinks["marketing_cloud"].data_extension)


class PausedSink:
    """A sink whose first write stops, with the partners it was handed, until ``pause`` returns:
    the sync paused between its read and its write."""

    def __init__(self, sink, pause):
        self._sink, self._pause, self.handed = sink, pause, None

    def __getattr__(self, name):
        return getattr(self._sink, name)

    def write(self, partners, enrolled):
        if self.handed is None:
            self.handed = [p["partner_id"] for p in partners]
            self._pause()
        return self._sink.write(partners, enrolled)


@pytest.mark.parametrize("name", ["firestore", "solr", "marketing_cloud"])
def test_a_sync_paused_between_its_read_and_its_write_while_the_erasure_runs_writes_no_one_back(
    stack, pipeline_config, region_topic, warehouse, sinks, name
):
    scenario = Scenario(seed=23)
    victim, control = scenario.ids["jose"], scenario.ids["ana"]
    group = f"test-erase-sync-{uuid.uuid4().hex[:6]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    batch_id = ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        group,
        [
            scenario.event("partner.enrolled", "jose", 1, first_name="José"),
            scenario.event("partner.enrolled", "ana", 1, first_name="Ana"),
        ],
    )
    erased: dict = {}

    def the_erasure() -> None:
        erased.update(erase(warehouse, bucket, group, victim, [sinks[name]]))
        if name == "marketing_cloud":
            # Its contact delete runs later on the service: wait until it has (or the row this
            # write makes would go with it, and the race would not show).
            client = sinks[name].client
            for operation in client.delete_contacts([victim]):
                deadline = time.monotonic() + 60
                while client.contact_delete_status(operation) != "Completed":
                    assert time.monotonic() < deadline, "the contact delete never completed"
                    time.sleep(0.1)

    sink = PausedSink(sinks[name], the_erasure)
    outcome = SyncRun(warehouse, bucket).run(sink, REGION)

    # Besides the batch, an erasure lists every recovery batch of the region (those are not
    # indexed by partner): other tests of the suite may have left some.
    others = [b for b in erased["batches"] if b != batch_id]
    assert victim in sink.handed and batch_id in erased["batches"], (
        "the sync read the partner before the erasure, which found the batch"
    )
    assert all(b.startswith("recovery-") for b in others), others
    assert not sink_holds(stack, sinks, name, victim), f"{name} holds the erased partner again"
    assert sink_holds(stack, sinks, name, control), "the other partner was written"
    assert outcome["batches"] == 1 and outcome["watermark"] == batch_id
    assert f"sync_{name}" in Ledger(warehouse).balance(batch_id), "the batch's sync is recorded"
    # The erasure's verify would find nothing: a delete now finds nothing to delete.
    assert sinks[name].erase([victim])["remaining"] == 0
    if name == "solr":
        # Nor any segment: the erasure's commit expunged the deleted documents.
        luke = (
            sinks["solr"]
            .http.get(f"{sinks['solr'].url}/admin/luke", params={"numTerms": 0, "wt": "json"})
            .json()
        )
        assert luke["index"]["deletedDocs"] == 0, luke["index"]
