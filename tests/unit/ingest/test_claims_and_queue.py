"""The stream side's bookkeeping in the landing bucket, without a broker (the committed offsets
handed in) or Cloud Storage (an in-memory bucket): how a claim splits its budget over the
partitions, claims the same range again until it is landed, starts at the landed end after a
rewind; the chain that never moves back; the warehouse's queue of pending batches; the day's
index of claims; and the set-aside records a cycle leaves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from enrollment.core.batch import Landed, Manifest, PartitionRange, cycle_id, landing_prefix
from enrollment.core.layout import chain_object, claim_object, pending_object, set_aside_object
from enrollment.ingest import claim as claim_module
from enrollment.ingest.claim import advance_chain, claim, claims, read_chain
from enrollment.ingest.pending import clear_pending, pending_batches, requeue, set_aside_batches
from enrollment.warehouse.cycle import CycleResult, raise_failed
from tests.unit.fakes import FakeBucket

GROUP, REGION, TOPIC = "pipeline", "EMEA", "enroll.emea"


@pytest.fixture
def cluster(monkeypatch):
    """The committed and end offsets the broker would report: partition -> (committed, end)."""
    offsets: dict[int, tuple[int, int]] = {}
    monkeypatch.setattr(
        claim_module,
        "pending_ranges",
        lambda *a, **k: [(p, start, end) for p, (start, end) in sorted(offsets.items())],
    )
    monkeypatch.setattr(claim_module, "topic_id", lambda *a, **k: "topic-id-1")
    return offsets


def claim_next(bucket: FakeBucket, max_batch: int = 100) -> Manifest | None:
    return claim("kafka:9092", GROUP, REGION, TOPIC, 3, bucket, max_batch)


def test_a_claim_splits_its_budget_over_the_partitions_and_is_recorded_once(cluster):
    bucket = FakeBucket("landing")
    cluster.update({0: (100, 250), 1: (40, 45), 2: (7, 7)})
    m = claim_next(bucket, max_batch=100)
    # ceil(100 / 3) = 34 per partition; a partition with less pending takes what it has.
    assert m.ranges == (
        PartitionRange(0, 100, 134),
        PartitionRange(1, 40, 45),
        PartitionRange(2, 7, 7),
    )
    assert m.offsets == 39 and m.anomalies == ()
    record = claim_object(REGION, TOPIC, {0: 100, 1: 40, 2: 7}, GROUP)
    assert Manifest.from_json(bucket.objects[record]["data"].decode()) == m
    assert list(bucket.objects) == [record]
    again = claim_next(bucket, max_batch=100)
    assert again == m and again.batch_id == m.batch_id, "claimed again until landed"
    assert list(bucket.objects) == [record]


def test_nothing_pending_claims_nothing(cluster):
    bucket = FakeBucket("landing")
    cluster.update({0: (10, 10), 1: (3, 3)})
    assert claim_next(bucket) is None and bucket.objects == {}


def test_a_budget_smaller_than_the_partitions_still_reads_one_offset_each(cluster):
    cluster.update({p: (0, 50) for p in range(4)})
    m = claim_next(FakeBucket("landing"), max_batch=2)
    assert [r.size for r in m.ranges] == [1, 1, 1, 1]


def test_once_landed_the_next_claim_starts_at_the_committed_end(cluster):
    bucket = FakeBucket("landing")
    cluster.update({0: (0, 30)})
    first = claim_next(bucket, max_batch=10)
    advance_chain(bucket, first)
    cluster[0] = (10, 30)  # committed after landing
    second = claim_next(bucket, max_batch=10)
    assert second.ranges == (PartitionRange(0, 10, 20),) and second.batch_id != first.batch_id


def test_a_batch_landed_but_not_committed_is_claimed_again_as_it_was(cluster):
    bucket = FakeBucket("landing")
    cluster.update({0: (0, 30)})
    first = claim_next(bucket, max_batch=10)
    advance_chain(bucket, first)  # land died before committing: the group is still at 0
    cluster[0] = (0, 40)
    assert claim_next(bucket, max_batch=25) == first, "the same range: nothing lands twice"


def test_a_rewound_group_starts_at_the_landed_end_and_the_claim_names_the_rewind(cluster):
    bucket = FakeBucket("landing")
    cluster.update({0: (0, 200)})
    landed = claim_next(bucket, max_batch=134)
    advance_chain(bucket, landed)
    cluster[0] = (120, 200)  # the group's offsets expired: it rewound to 120
    m = claim_next(bucket, max_batch=10)
    assert m.ranges == (PartitionRange(0, 134, 144),)
    [rewind] = m.anomalies
    assert (rewind["kind"], rewind["start"], rewind["end"]) == ("rewind", 120, 134)
    assert "not ingested again" in rewind["detail"]


def test_offsets_deleted_before_they_were_read_are_a_gap_of_the_next_claim(cluster):
    bucket = FakeBucket("landing")
    cluster.update({0: (0, 200)})
    advance_chain(bucket, claim_next(bucket, max_batch=134))
    cluster[0] = (150, 200)  # retention deleted 134-149 before they were read
    m = claim_next(bucket, max_batch=10)
    assert m.ranges == (PartitionRange(0, 150, 160),)
    [gap] = m.anomalies
    assert (gap["kind"], gap["start"], gap["end"]) == ("gap", 134, 150)
    assert "offsets 134-150 (16) deleted before they were read" in gap["detail"]


def test_the_chain_never_moves_back_for_a_late_retry_of_an_older_batch():
    bucket = FakeBucket("landing")

    def manifest(start: int, end: int) -> Manifest:
        return Manifest(REGION, TOPIC, GROUP, "landing", (PartitionRange(0, start, end),))

    newer, older = manifest(50, 80), manifest(20, 50)
    advance_chain(bucket, newer)
    advance_chain(bucket, older)
    chain = read_chain(bucket, REGION, TOPIC, GROUP)
    assert chain["ends"] == {0: 80}, "never backwards"
    assert chain["starts"] == {0: 20} and chain["claim"] == older.claim_record
    assert read_chain(bucket, REGION, "other.topic", GROUP) is None
    assert chain_object(REGION, TOPIC, GROUP) != chain_object(REGION, TOPIC, "other")


def test_two_lands_moving_the_chain_at_once_never_move_it_back(monkeypatch):
    """A late retry of an older batch reads the chain, then a newer batch's land moves it before
    the retry writes: the retry's write is refused (the generation it read is gone), it reads
    again and merges; the chain ends where the newer batch ended, so no false gap follows."""
    bucket = FakeBucket("landing")

    def manifest(start: int, end: int) -> Manifest:
        return Manifest(REGION, TOPIC, GROUP, "landing", (PartitionRange(0, start, end),))

    advance_chain(bucket, manifest(0, 20))
    older, newer = manifest(20, 50), manifest(50, 80)
    real_read, raced = claim_module.read_chain, []

    def read_then_race(*args):
        chain = real_read(*args)
        if not raced:  # the older batch's read: the newer land runs before it writes
            raced.append(True)
            advance_chain(bucket, newer)
        return chain

    monkeypatch.setattr(claim_module, "read_chain", read_then_race)
    advance_chain(bucket, older)
    assert raced and read_chain(bucket, REGION, TOPIC, GROUP)["ends"] == {0: 80}


def landed(batch_id: str, offsets: int, claimed_at: str, region: str = REGION) -> Landed:
    return Landed(
        batch_id,
        region,
        offsets,
        offsets,
        0,
        0,
        f"gs://landing/{batch_id}/valid.parquet",
        f"gs://landing/{batch_id}/quarantine.parquet",
        0.1,
        group=GROUP,
        claimed_at=claimed_at,
    )


def queue(bucket: FakeBucket, *items: Landed) -> None:
    for b in items:
        body = b.as_dict() | {"added_by_a_newer_version": 1}
        bucket.put_json(pending_object(b.group, b.region, b.batch_id), body)


def test_the_warehouse_queue_is_oldest_claim_first_within_a_row_budget():
    bucket = FakeBucket("landing")
    queue(
        bucket,
        landed("emea-c", 300, "2026-11-20T10:02:00"),
        landed("apac-a", 500, "2026-11-20T10:00:00", region="APAC"),
        landed("emea-b", 100, "2026-11-20T10:01:00"),
        landed("emea-d", 50, "2026-11-20T10:03:00"),
    )
    bucket.put_json(pending_object("other", REGION, "x"), landed("x", 1, "").as_dict())
    everything = pending_batches(bucket, GROUP)
    assert [b.batch_id for b in everything] == ["apac-a", "emea-b", "emea-c", "emea-d"]
    assert everything[0] == landed("apac-a", 500, "2026-11-20T10:00:00", region="APAC")
    budget = pending_batches(bucket, GROUP, max_rows=700)
    assert [b.batch_id for b in budget] == ["apac-a", "emea-b"], "stops before passing the budget"
    assert [b.batch_id for b in pending_batches(bucket, GROUP, max_rows=10)] == ["apac-a"], (
        "the oldest batch always, however large"
    )
    clear_pending(bucket, [*everything[:2], landed("gone", 1, "")])
    assert [b.batch_id for b in pending_batches(bucket, GROUP)] == ["emea-c", "emea-d"]


def test_the_days_claims_are_this_pipelines_in_the_window_oldest_first():
    bucket = FakeBucket("landing")
    day = datetime(2026, 11, 19, tzinfo=UTC)

    def record(start: int, claimed_at: str, created: datetime, topic=TOPIC, group=GROUP):
        m = Manifest(
            REGION, topic, group, "landing", (PartitionRange(0, start, start + 5),), claimed_at
        )
        bucket.put(m.claim_record, m.to_json(), created)
        return m

    late = record(10, "2026-11-19T23:59:00", day + timedelta(hours=23, minutes=59))
    early = record(0, "2026-11-19T00:00:00", day)
    record(20, "2026-11-20T00:00:00", day + timedelta(days=1))  # the next day's
    record(30, "2026-11-19T12:00:00", day + timedelta(hours=12), topic="enroll.other")
    record(40, "2026-11-19T12:00:00", day + timedelta(hours=12), group="other")
    found = claims(bucket, REGION, TOPIC, GROUP, day, day + timedelta(days=1))
    assert found == [early, late]


@pytest.mark.parametrize(
    ("batch_id", "prefix"),
    [
        ("emea-0123456789abcdef", "landing/EMEA/emea-0123456789abcdef"),
        ("recovery-apac-0123", "landing/APAC/recovery-apac-0123"),
    ],
)
def test_a_batch_lands_under_its_region_read_from_its_id(batch_id, prefix):
    assert landing_prefix(batch_id) == prefix


def test_a_set_aside_batch_is_listed_until_requeued_and_then_queued_as_requeued():
    bucket = FakeBucket("landing")
    b = landed("emea-x", 10, "2026-11-20T10:00:00")
    bucket.put_json(set_aside_object(GROUP, REGION, b.batch_id), b.as_dict())
    bucket.put_json(set_aside_object("other", REGION, "y"), {})
    assert set_aside_batches(bucket, GROUP) == [f"set_aside/{GROUP}/{REGION}/emea-x.json"]
    requeue(bucket, GROUP, REGION, b.batch_id)
    assert set_aside_batches(bucket, GROUP) == []
    [queued] = pending_batches(bucket, GROUP)
    assert queued.requeued is True and queued.batch_id == "emea-x"
    assert (
        json.loads(bucket.objects[pending_object(GROUP, REGION, "emea-x")]["data"])["offsets"] == 10
    )


def test_a_cycle_id_depends_on_its_batches_not_their_order():
    a, b = landed("emea-a", 1, ""), landed("emea-b", 1, "")
    assert cycle_id([a, b]) == cycle_id([b, a]) != cycle_id([a])
    assert len(cycle_id([a])) == 16


def test_a_cycle_with_failed_batches_raises_naming_them_and_what_was_committed():
    raise_failed(CycleResult("c"))  # nothing failed: nothing raised
    result = CycleResult(
        "c",
        batches=[{"batch_id": "emea-ok"}],
        failed={
            "emea-bad": "warehouse gate, batch emea-bad (EMEA): 2 rows miss a mandatory column"
        },
    )
    with pytest.raises(Exception, match=r"emea-bad \(EMEA\): 2 rows miss .*committed: emea-ok"):
        raise_failed(result)
    with pytest.raises(Exception, match=r"\(committed: none; the failed batches stay pending\)"):
        raise_failed(CycleResult("c", failed={"b": "gate"}))


def test_a_batch_of_a_topic_created_again_is_not_landed_again_from_the_new_one(monkeypatch):
    """The new topic's offsets number other messages: relanding the old range from it would put
    them under the old batch's id. Refused before any consumer reads."""
    import pytest

    from enrollment.core.batch import Manifest, PartitionRange
    from enrollment.ingest import reland

    manifest = Manifest(
        "EMEA", "enroll.emea", "pipeline", "landing", (PartitionRange(0, 0, 10),), topic_id="old"
    )
    monkeypatch.setattr(reland, "topic_id", lambda kafka, topic: "new")
    monkeypatch.setattr(reland, "group_consumer", lambda *a: pytest.fail("no read"))
    with pytest.raises(ValueError, match="created again since the batch was claimed"):
        reland.still_in_kafka(None, manifest)
