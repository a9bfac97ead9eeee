"""The one warehouse writer on the real stack: batches of two regions landed by one pipeline wait
as pending records; a cycle killed at several points and run again writes every event exactly
once; a batch that fails its gate stays pending while the others are committed, and the next
cycle takes it; a producer's resend in a later batch is stored once; each table gets one write
statement per cycle."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from enrollment.clients.services import storage_client
from enrollment.config import WarehouseSettings
from enrollment.core.errors import GateError
from enrollment.core.layout import CYCLE_MARKER, pending_object
from enrollment.core.pii import Keyring
from enrollment.core.windows import Window
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.ingest.pending import pending_batches
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import raise_failed, run_cycle
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import produce
from tests.integration.ingest.test_ingest_crashes import kill_during

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

CYCLE = """
import sys
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.config import WarehouseSettings
from enrollment.ingest.pending import pending_batches
from enrollment.warehouse.cycle import run_cycle
project, dataset, ops, bucket, group = sys.argv[1:6]
w = BigQuery(bigquery_client(project), storage_client(project), project, dataset, ops)
run_cycle(w, pending_batches(storage_client(project).bucket(bucket), group), WarehouseSettings())
"""


@pytest.fixture
def two_regions(stack):
    run = uuid.uuid4().hex[:8]
    topics = {"AMER": f"test.cycle.{run}.amer", "EMEA": f"test.cycle.{run}.emea"}
    admin = AdminClient(stack.kafka.admin())
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=2, replication_factor=1) for t in topics.values()]
    ).values():
        future.result(30)
    yield topics, f"test-cycle-{run}"
    admin.delete_topics(list(topics.values()))


def land_region(stack, bucket, group: str, region: str, topic: str, messages) -> object:
    produce(stack.kafka, messages, topic)
    return land(
        stack.kafka,
        claim(stack.kafka, group, region, topic, 2, bucket, max_batch=10_000_000),
        bucket,
        Keyring.from_env(),
    )


def valid_ids(messages) -> set[str]:
    return {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}


def assert_written_once(warehouse, batches, expected_ids: set[str]) -> None:
    events = warehouse.run(
        f"SELECT event_id, COUNT(*) AS n FROM {warehouse.table('events')} GROUP BY event_id"
    )
    assert {r["event_id"] for r in events} == expected_ids
    assert all(r["n"] == 1 for r in events), "every event stored once"
    quarantined = warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('quarantine')}")[0][
        "n"
    ]
    assert quarantined == sum(b.quarantined + b.duplicates for b in batches)
    ledger = warehouse.run(
        f"SELECT batch_id, stage, COUNT(*) AS n FROM {warehouse.table('ledger', ops=True)} GROUP "
        "BY batch_id, stage"
    )
    assert sorted((r["batch_id"], r["stage"], r["n"]) for r in ledger) == sorted(
        (b.batch_id, s, 1) for b in batches for s in ("land", "warehouse")
    )
    for b in batches:
        Ledger(warehouse).balance(b.batch_id)
    leftovers = [
        t.table_id
        for t in warehouse.client.list_tables(warehouse.dataset)
        if t.table_id.startswith("_cycle")
    ]
    assert leftovers == [], "staging tables are dropped, by the retry for a killed cycle"


def test_a_cycle_killed_at_several_points_and_run_again_writes_everything_once(
    stack, pipeline_config, warehouse, two_regions
):
    topics, group = two_regions
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    first = Simulator(seed=7001, faults=FaultRates.mix(0.03), initial_partners=60).take(8000)
    second = Simulator(seed=7002, faults=FaultRates.mix(0.03), initial_partners=60).take(6000)
    # The producer resends 400 messages of AMER's first batch with its next one.
    resent = first[:400]
    third = Simulator(seed=7003, faults=FaultRates.mix(0.03), initial_partners=60).take(3000)
    batches = [
        land_region(stack, bucket, group, "AMER", topics["AMER"], first),
        land_region(stack, bucket, group, "EMEA", topics["EMEA"], second),
        land_region(stack, bucket, group, "AMER", topics["AMER"], resent + third),
    ]
    assert [b.batch_id for b in pending_batches(bucket, group)] == [b.batch_id for b in batches], (
        "oldest claim first"
    )
    assert [b.batch_id for b in pending_batches(bucket, group, max_rows=9000)] == [
        batches[0].batch_id
    ], "the row budget cuts the cycle"

    outcomes = kill_during(
        CYCLE,
        [stack.project, warehouse.dataset, warehouse.ops_dataset, bucket.name, group],
        [2.5, 4.0, 5.5, 7.0],
    )
    assert any(o.startswith("killed") for o in outcomes), outcomes
    retry = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    raise_failed(retry)
    assert pending_batches(bucket, group) == [], "no batch is left pending"
    assert_written_once(warehouse, batches, valid_ids(first) | valid_ids(second) | valid_ids(third))

    # The resent messages were valid in their batch and are held once: the ledger says so.
    resent_valid = len(valid_ids(resent))
    detail = warehouse.run(
        f"SELECT detail FROM {warehouse.table('ledger', ops=True)} WHERE batch_id = "
        f"'{batches[2].batch_id}' AND stage = 'warehouse'"
    )
    assert f"resent {resent_valid}" in detail[0]["detail"], (detail, outcomes)

    # The committing cycle marked it for the sync trains waiting (layout.CYCLE_MARKER).
    marker = bucket.blob(CYCLE_MARKER)
    marker.reload()
    assert json.loads(marker.download_as_text())["batches"] >= 1, "by a cycle that committed"
    generation = marker.generation

    # Everything again (a retried task with the same batches): nothing changes.
    again = run_cycle(warehouse, batches, WarehouseSettings())
    assert sorted(again.already) == sorted(b.batch_id for b in batches) and again.batches == []
    assert again.statements == {}, "a cycle that finds its batches done writes nothing"
    marker.reload()
    assert marker.generation == generation, "nor marks anything"
    assert_written_once(warehouse, batches, valid_ids(first) | valid_ids(second) | valid_ids(third))


def test_a_batch_that_fails_its_gate_stays_pending_and_the_next_cycle_takes_it(
    stack, pipeline_config, warehouse, two_regions
):
    topics, group = two_regions
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    amer_messages = Simulator(seed=7101, faults=FaultRates.mix(0.05), initial_partners=40).take(
        2000
    )
    emea_messages = Simulator(seed=7102, faults=FaultRates.mix(0.05), initial_partners=40).take(
        2000
    )
    amer = land_region(stack, bucket, group, "AMER", topics["AMER"], amer_messages)
    emea = land_region(stack, bucket, group, "EMEA", topics["EMEA"], emea_messages)

    # EMEA's record claims one valid row more than its objects hold: its gate must fail.
    record = bucket.blob(pending_object(group, "EMEA", emea.batch_id))
    true_record = record.download_as_text()
    record.upload_from_string(
        json.dumps(
            json.loads(true_record) | {"valid": emea.valid + 1, "quarantined": emea.quarantined - 1}
        )
    )

    result = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    assert [b["batch_id"] for b in result.batches] == [amer.batch_id], (
        "the healthy batch is committed"
    )
    assert list(result.failed) == [emea.batch_id] and "events holds" in result.failed[emea.batch_id]
    assert result.statements == {"events": 1, "partners": 1, "quarantine": 1, "ledger": 1}, (
        "two regions, one write statement per table"
    )
    with pytest.raises(GateError, match=f"{emea.batch_id}.*stay pending"):
        raise_failed(result)
    assert [b.batch_id for b in pending_batches(bucket, group)] == [emea.batch_id], (
        "the failed batch waits for the next cycle"
    )
    now = datetime.now(UTC)
    assert Ledger(warehouse).warehoused(
        [emea.batch_id, amer.batch_id], Window.around(now, now, 1)
    ) == [amer.batch_id], "only AMER's ledger rows"

    record.upload_from_string(
        true_record
    )  # fixed (here: the record; in life, whatever the gate named)
    nxt = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    raise_failed(nxt)
    assert [b["batch_id"] for b in nxt.batches] == [emea.batch_id]
    assert pending_batches(bucket, group) == []
    assert_written_once(
        warehouse, [amer, emea], valid_ids(amer_messages) | valid_ids(emea_messages)
    )


def test_the_cycle_as_one_transaction_writes_the_same(
    stack, pipeline_config, warehouse, two_regions
):
    """``warehouse.transaction`` (for BigQuery) wraps the writes in BEGIN/COMMIT TRANSACTION (the
    held ids' table made before it, in the same script: BigQuery refuses DDL inside): the
    emulator accepts the script and the rows read back are the same as without it."""
    topics, group = two_regions
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    messages = Simulator(seed=7201, faults=FaultRates.mix(0.05), initial_partners=30).take(800)
    batch = land_region(stack, bucket, group, "APAC", topics["AMER"], messages)
    result = run_cycle(
        warehouse, pending_batches(bucket, group), WarehouseSettings(transaction=True)
    )
    raise_failed(result)
    assert any(
        s.startswith("CREATE TABLE ")
        and s.partition(";\n")[2].startswith("BEGIN TRANSACTION;")
        and s.rstrip().endswith("COMMIT TRANSACTION;")
        for s in warehouse.statements
    )
    assert_written_once(warehouse, [batch], valid_ids(messages))


def test_a_batch_whose_objects_are_gone_is_set_aside_and_the_cycle_goes_on(
    stack, pipeline_config, warehouse, two_regions
):
    from enrollment.core.layout import set_aside_object
    from enrollment.ingest.pending import requeue

    topics, group = two_regions
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    amer_messages = Simulator(seed=7301, faults=FaultRates.mix(0.05), initial_partners=30).take(
        1000
    )
    emea_messages = Simulator(seed=7302, faults=FaultRates.mix(0.05), initial_partners=30).take(
        1000
    )
    amer = land_region(stack, bucket, group, "AMER", topics["AMER"], amer_messages)
    emea = land_region(stack, bucket, group, "EMEA", topics["EMEA"], emea_messages)

    # EMEA's events are gone (an emulator's data reset, a deletion): the cycle cannot load them.
    lost = bucket.blob(emea.valid_uri.removeprefix(f"gs://{bucket.name}/"))
    saved = lost.download_as_bytes()
    lost.delete()
    result = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    raise_failed(result)  # the others are committed: nothing to raise
    assert (
        list(result.set_aside) == [emea.batch_id]
        and "valid.parquet is missing" in result.set_aside[emea.batch_id]
    )
    assert [b["batch_id"] for b in result.batches] == [amer.batch_id], (
        "the cycle went on with the other region"
    )
    assert pending_batches(bucket, group) == [], "nothing left pending: no cycle gridlocks on it"
    assert bucket.blob(set_aside_object(group, "EMEA", emea.batch_id)).exists()
    row = warehouse.run(
        f"SELECT ok, detail FROM {warehouse.table('ledger', ops=True)} WHERE batch_id = "
        f"'{emea.batch_id}' AND stage = 'set_aside'"
    )
    assert len(row) == 1 and not row[0]["ok"] and emea.valid_uri in row[0]["detail"]
    with pytest.raises(GateError, match="set_aside"):
        Ledger(warehouse).balance(emea.batch_id)

    lost.upload_from_string(saved)  # repaired
    requeue(bucket, group, "EMEA", emea.batch_id)
    nxt = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    raise_failed(nxt)
    assert [b["batch_id"] for b in nxt.batches] == [emea.batch_id] and not nxt.set_aside
    assert not bucket.blob(set_aside_object(group, "EMEA", emea.batch_id)).exists()
    assert Ledger(warehouse).balance(emea.batch_id)["set_aside"]["ok"], (
        "once warehoused, its set_aside row says it was repaired"
    )
    events = warehouse.run(
        f"SELECT COUNT(DISTINCT event_id) AS n, COUNT(*) AS rows FROM {warehouse.table('events')}"
    )[0]
    assert events["n"] == events["rows"] == len(valid_ids(amer_messages) | valid_ids(emea_messages))


def test_a_resend_held_on_an_earlier_day_of_the_window_is_not_written_and_a_repeat_fails(
    stack, pipeline_config, warehouse, two_regions
):
    """The cycle reads the dedup window once, before it writes (the held ids), and reads back only
    its own arrival days: an id already held on an earlier day of the window is counted from
    what it found, not written again; an id held twice there fails the batch's gate."""
    topics, group = two_regions
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    events = warehouse.table("events")
    first = Simulator(seed=7501, initial_partners=20).take(300)
    ids = sorted(valid_ids(first))
    land_region(stack, bucket, group, "AMER", topics["AMER"], first)
    raise_failed(run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings()))
    # Five of them arrived yesterday: inside the window, outside the next cycle's own day.
    earlier = ids[:5]
    warehouse.run(
        f"UPDATE {events} SET kafka_timestamp = TIMESTAMP_SUB(kafka_timestamp, INTERVAL 1 DAY) "
        f"WHERE event_id IN ({', '.join(repr(i) for i in earlier)})"
    )
    resent = [m for m in first if m.expected.get("event_id") in set(earlier)]
    assert len(resent) == 5
    more = Simulator(seed=7502, initial_partners=20).take(100)
    batch = land_region(stack, bucket, group, "AMER", topics["AMER"], resent + more)
    result = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    raise_failed(result)
    [done] = result.batches
    assert done["written"] == batch.valid - 5 and "resent 5" in done["detail"], done
    counts = {
        r["event_id"]: r["n"]
        for r in warehouse.run(f"SELECT event_id, COUNT(*) AS n FROM {events} GROUP BY event_id")
    }
    assert set(counts) == set(ids) | valid_ids(more) and set(counts.values()) == {1}

    # One of them held twice on that earlier day (a copy no cycle of ours would write): the next
    # batch resending it fails its gate and stays pending; nothing of it is written.
    warehouse.run(f"INSERT INTO {events} SELECT * FROM {events} WHERE event_id = {earlier[0]!r}")
    again = [m for m in first if m.expected.get("event_id") == earlier[0]]
    late = land_region(stack, bucket, group, "AMER", topics["AMER"], again)
    result = run_cycle(warehouse, pending_batches(bucket, group), WarehouseSettings())
    assert list(result.failed) == [late.batch_id], result.failed
    assert "1 of the batch's event ids appear more than once" in result.failed[late.batch_id]
    assert [b.batch_id for b in pending_batches(bucket, group)] == [late.batch_id]
    assert warehouse.run(f"SELECT COUNT(*) AS n FROM {events}")[0]["n"] == len(counts) + 1
