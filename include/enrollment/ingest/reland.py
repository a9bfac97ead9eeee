"""Landing a set-aside batch again from Kafka: the repair of a batch whose landed objects are gone
(a bucket restored from an older copy, an object deleted by hand), while Kafka still holds its
messages.

The batch is found by its claim record (the offset range it was claimed with; kept
``retention.claims_days``), read from Kafka again exactly as ``land`` read it, validated, and its
missing objects written (write-once: an object still there is kept — delete an unreadable one
first). Its pending record comes back, marked requeued, so the next warehouse cycle takes it and
its ``set_aside`` ledger row turns ok. The group's offsets and the claim chain do not move: the
range was committed when the batch first landed.

Refused, with what to do, when the batch is not set aside, its claim record is gone, or Kafka no
longer holds its range (retention deleted part of it, or the topic was created again): then the
messages are lost to the pipeline, and the ledger's ``set_aside`` row is what records it."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from enrollment.clients.kafka import KafkaSettings, group_consumer, topic_id
from enrollment.core.batch import Landed, Manifest
from enrollment.core.layout import set_aside_object
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claims
from enrollment.ingest.land import land_objects
from enrollment.ingest.pending import mark_pending

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

log = logging.getLogger(__name__)

CLAIM_SLACK = timedelta(hours=1)  # a claim record is written when the batch is claimed


def claim_of(bucket: Bucket, topic: str, held: Landed) -> Manifest:
    """The claim record of a set-aside batch, found among its region's claims near its claim
    time."""
    claimed = datetime.fromisoformat(held.claimed_at) if held.claimed_at else None
    found = (
        next(
            (
                m
                for m in claims(
                    bucket,
                    held.region,
                    topic,
                    held.group,
                    claimed - CLAIM_SLACK,
                    claimed + CLAIM_SLACK,
                )
                if m.batch_id == held.batch_id
            ),
            None,
        )
        if claimed is not None
        else None
    )
    if found is None:
        raise ValueError(
            f"reland {held.batch_id}: no claim record of it in {held.region} (claim records are "
            "kept retention.claims_days): its offset range is unknown"
        )
    return found


def still_in_kafka(kafka: KafkaSettings, manifest: Manifest) -> None:
    """Raises when Kafka no longer holds the whole range: retention deleted its start, or the
    topic was deleted and created again (its offsets now number other messages)."""
    from confluent_kafka import TopicPartition

    now = topic_id(kafka, manifest.topic)
    if manifest.topic_id and now != manifest.topic_id:
        raise ValueError(
            f"reland {manifest.batch_id}: {manifest.topic} was created again since the batch was "
            "claimed; its messages are gone and the batch stays set aside"
        )

    consumer = group_consumer(kafka, manifest.group)
    try:
        for r in manifest.ranges:
            if not r.size:
                continue
            low, _ = consumer.get_watermark_offsets(
                TopicPartition(manifest.topic, r.partition), timeout=10
            )
            if low > r.start:
                raise ValueError(
                    f"reland {manifest.batch_id}: Kafka no longer holds offsets {r.start}-"
                    f"{min(low, r.end)} of {manifest.topic} partition {r.partition} (retention); "
                    "the batch cannot be landed again and stays set aside"
                )
    finally:
        consumer.close()


def reland(
    kafka: KafkaSettings,
    bucket: Bucket,
    keyring: Keyring,
    group: str,
    region: str,
    topic: str,
    batch_id: str,
) -> Landed:
    """Lands the set-aside batch again from Kafka and queues it for the warehouse (module doc)."""
    record = bucket.blob(set_aside_object(group, region, batch_id))
    if not record.exists():
        raise ValueError(
            f"reland {batch_id}: it is not set aside in {region} for group {group} "
            f"(no {record.name}); nothing to land again"
        )
    held = Landed.from_dict(json.loads(record.download_as_text()))
    manifest = claim_of(bucket, topic, held)
    still_in_kafka(kafka, manifest)
    landed, _ = land_objects(kafka, manifest, bucket, keyring, max_bytes=None)
    landed = replace(landed, requeued=True)
    mark_pending(bucket, landed)
    record.delete()
    log.info(
        "reland %s %s: %d offsets landed again from Kafka (%d valid, %d quarantined); queued for "
        "the warehouse",
        region,
        batch_id,
        landed.offsets,
        landed.valid,
        landed.quarantined,
    )
    return landed
