"""The simulator against the real broker: every produced message is where the expected-outcome
file says (partition, offset), keyed by partner and in per-partner order, and the validator
agrees with the expected outcomes of what is read back."""

import json
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, TopicPartition

from enrollment.ingest.validation import validate_batch
from enrollment.simulator.cli import main as simulator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_produced_events_land_where_the_expected_file_says_and_validate_as_expected(
    stack, pipeline_config, tmp_path
):
    expected_file = tmp_path / "expected.jsonl"
    simulator(
        [
            "produce",
            "--events",
            "3000",
            "--rate",
            "max",
            "--faults",
            "5%",
            "--seed",
            "99",
            "--expected",
            str(expected_file),
        ]
    )
    expected = [json.loads(line) for line in expected_file.read_text().splitlines()]
    # 3000 generated, plus the events held back for out-of-order delivery, sent last.
    n = len(expected)
    assert 3000 <= n < 3100 and sorted(e["seq"] for e in expected) == list(range(n))

    topic_of = {r.code: r.topic for r in pipeline_config.regions}
    wanted = defaultdict(dict)  # (topic, partition) -> offset -> expected record
    for e in expected:
        wanted[(topic_of[e["region"]], e["partition"])][e["offset"]] = e
    consumer = Consumer(
        stack.kafka.consumer({"group.id": "test-simulator-readback", "enable.auto.commit": False})
    )
    values, records, partitions_of_partner = [], [], defaultdict(set)
    try:
        for (topic, partition), by_offset in wanted.items():
            first, last = min(by_offset), max(by_offset)
            consumer.assign([TopicPartition(topic, partition, first)])
            while first <= last:
                for msg in consumer.consume(num_messages=1000, timeout=0.5):
                    assert msg.error() is None, msg.error()
                    record = by_offset.get(msg.offset())
                    if record is not None:
                        assert msg.key().decode() == record["key"]
                        values.append(msg.value())
                        records.append(record)
                        partitions_of_partner[record["key"]].add((topic, partition))
                    first = msg.offset() + 1
    finally:
        consumer.close()
    assert len(values) == n, "every produced message was read back at its offset"
    assert all(len(p) == 1 for p in partitions_of_partner.values()), (
        "a partner's events share one partition"
    )

    # In offset order, each partner's versions only grow, except events held back on purpose.
    last_version = {}
    for record in sorted(records, key=lambda r: (r["partition"], r["region"], r["offset"])):
        if record["fault"] in (
            None,
            "missing",
            "bad_format",
            "rule_violation",
            "oversized",
            "unknown_version",
            "poison",
        ):
            assert record["partner_version"] > last_version.get(record["key"], 0)
            last_version[record["key"]] = record["partner_version"]

    # Read back in seq order as one batch: the validator gives exactly the expected reasons.
    order = sorted(range(len(records)), key=lambda i: records[i]["seq"])
    result = validate_batch([values[i] for i in order])
    got = {i: [] for i in range(len(order))}
    for row in result.quarantine.select(["source_index", "reasons"]).to_pylist():
        got[row["source_index"]] = row["reasons"]
    assert [got[i] for i in range(len(order))] == [records[i]["reasons"] for i in order]
    assert result.quarantine.num_rows > 0 and result.valid.num_rows > 2500
