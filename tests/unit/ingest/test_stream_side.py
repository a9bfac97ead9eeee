"""The stream side's decisions without a broker: batch identity (the group is part of it; old
claims keep their ids), where a claim starts against the landed chain (gaps, rewinds), the
ledger rows of anomalies, and the lag monitor's partition-drift alert."""

import hashlib

from enrollment.clients.kafka import partition_drift
from enrollment.config import LagRules, load_config
from enrollment.core.batch import Landed, Manifest, PartitionRange
from enrollment.core.layout import claim_object
from enrollment.ingest.claim import chain_starts
from enrollment.ops.lag import LagRow, alerts
from enrollment.warehouse.ledger import anomaly_rows, balances


def manifest(group: str, **kw) -> Manifest:
    return Manifest(
        region="EMEA",
        topic="t",
        group=group,
        bucket="b",
        ranges=(PartitionRange(0, 10, 20), PartitionRange(1, 5, 5)),
        **kw,
    )


def test_the_group_is_part_of_a_batch_identity_and_old_claims_keep_their_ids():
    assert manifest("a").batch_id != manifest("b").batch_id
    assert (
        claim_object("EMEA", "t", {0: 10}, "a")
        != claim_object("EMEA", "t", {0: 10}, "b")
        != claim_object("EMEA", "t", {0: 10})
    )
    old = manifest("a", id_scheme=1)
    assert old.batch_id == "emea-" + hashlib.sha256(b"t|0:10-20,1:5-5").hexdigest()[:16], (
        "the id batches were landed under"
    )
    legacy_record = old.to_json().replace('"id_scheme": 1, ', "")
    assert Manifest.from_json(legacy_record).batch_id == old.batch_id and Manifest.from_json(
        manifest("a").to_json()
    ) == manifest("a")
    assert old.claim_record == claim_object("EMEA", "t", {0: 10, 1: 5})


def test_a_claim_starts_at_the_landed_end_and_names_gaps_and_rewinds():
    pending = [(0, 100, 150), (1, 40, 90), (2, 70, 80), (3, 0, 9)]
    starts, anomalies = chain_starts(
        pending, {"ends": {0: 100, 1: 60, 2: 50}, "starts": {}, "claim": ""}, "t"
    )
    assert starts == {0: 100, 1: 60, 2: 70, 3: 0}, (
        "a rewound partition starts where its batches were landed"
    )
    assert [(a["kind"], a["partition"], a["start"], a["end"]) for a in anomalies] == [
        ("rewind", 1, 40, 60),
        ("gap", 2, 50, 70),
    ]
    assert chain_starts(pending, None, "t") == ({0: 100, 1: 40, 2: 70, 3: 0}, []), (
        "the group's first claim: nothing to compare"
    )


def test_anomalies_become_ledger_rows_that_balance_and_a_gap_is_never_ok():
    landed = Landed(
        "emea-x",
        "EMEA",
        30,
        25,
        3,
        1,
        "gs://b/v",
        "gs://b/q",
        0.1,
        skipped=1,
        anomalies=[
            {"kind": "gap", "partition": 2, "start": 50, "end": 70, "detail": "p2"},
            {"kind": "rewind", "partition": 1, "start": 40, "end": 60, "detail": "p1"},
        ],
    )
    rows = {r["stage"]: r for r in anomaly_rows(landed)}
    assert (rows["gap"]["offsets_in"], rows["gap"]["skipped"], rows["gap"]["ok"]) == (20, 20, False)
    assert (rows["rewind"]["offsets_in"], rows["rewind"]["duplicates"], rows["rewind"]["ok"]) == (
        20,
        20,
        True,
    )
    assert all(balances(r) for r in rows.values())
    assert balances(
        {"offsets_in": 30, "valid": 25, "quarantined": 3, "duplicates": 1, "skipped": 1}
    )
    assert balances(
        {"offsets_in": 29, "valid": 25, "quarantined": 3, "duplicates": 1, "skipped": None}
    ), "rows from before the column"


def test_the_lag_monitor_alerts_when_the_cluster_has_other_partitions_than_configured():
    config = load_config()
    amer = config.region("AMER")
    rows = [LagRow("kafka", "AMER", p, None, 0, 0.0) for p in range(amer.partitions + 2)]
    found = alerts(rows, {}, LagRules(), config)
    assert found == [f"AMER: {partition_drift(amer.topic, amer.partitions, amer.partitions + 2)}"]
    assert alerts(rows[: amer.partitions], {}, LagRules(), config) == []
    assert alerts([LagRow("set_aside", "EMEA", None, None, 1, None)], {}, LagRules(), config)[
        0
    ].startswith("EMEA: 1 landed batch(es) set aside")


def test_implausible_kafka_stamps_take_the_land_time_per_message_and_are_recorded():
    import pyarrow as pa

    from enrollment.core.batch import STAMP_MAX_AGE_MS, STAMP_MAX_LEAD_MS
    from enrollment.ingest.read import settle_stamps

    at = 1_796_000_000_000
    stamps = [
        0,  # what a Java producer can send
        -1,  # "no timestamp" (old message formats)
        at - STAMP_MAX_AGE_MS,  # the oldest plausible
        at - STAMP_MAX_AGE_MS - 1,
        at,
        at + STAMP_MAX_LEAD_MS,  # the furthest plausible
        at + STAMP_MAX_LEAD_MS + 1,
        2**62,  # far beyond year 9999
    ]
    read = pa.table(
        {
            "kafka_partition": pa.array([0, 0, 1, 1, 1, 2, 2, 2], pa.int32()),
            "kafka_offset": pa.array([5, 6, 10, 11, 12, 20, 21, 22], pa.int64()),
            "kafka_timestamp": pa.array(stamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "value": pa.array([b"x"] * 8),
        }
    )
    settled, anomalies = settle_stamps(read, at)
    assert settled.column("kafka_timestamp").cast(pa.int64()).to_pylist() == [
        at,
        at,
        at - STAMP_MAX_AGE_MS,
        at,
        at,
        at + STAMP_MAX_LEAD_MS,
        at,
        at,
    ]
    assert [(a["kind"], a["partition"], a["start"], a["end"]) for a in anomalies] == [
        ("clock", 0, 5, 7),
        ("clock", 1, 11, 12),
        ("clock", 2, 21, 23),
    ]
    assert settled.column("value").to_pylist() == read.column("value").to_pylist()
    assert settle_stamps(settled, at) == (settled, [])
