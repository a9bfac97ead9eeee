"""Landing a batch: read exactly its claimed range, validate it, write it write-once, record it
pending for the warehouse, and only then commit the offsets.

``land`` reads the range (``ingest.read``), stops at the batch's byte budget (the claim record is
rewritten to the shrunk range first), validates it (``ingest.validation.validate_guarded``: no
input can stop a region), writes the valid, quarantined, raw and partner-change objects as
write-once Parquet (erased partners anonymised first: ``ingest.suppression``), checks the gate
(offsets in the range = valid + quarantined + duplicates + skipped), records the batch as
**pending** for the warehouse (``ingest.pending``) and commits the offsets.

The warehouse writer takes every pending batch and clears the record once the batch's ledger rows
are written: a batch that fails anywhere after ``land`` is taken by the next cycle. Everything
after ``land`` reads the landed objects, never Kafka."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrollment.clients.kafka import KafkaSettings, commit_range
from enrollment.clients.objects import write_once
from enrollment.core.batch import DEFAULT_MAX_BYTES, Landed, Manifest
from enrollment.core.errors import GateError
from enrollment.core.partners import partner_changes
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import advance_chain
from enrollment.ingest.pending import mark_pending
from enrollment.ingest.read import lost_below_watermark, read_range, settle_stamps
from enrollment.ingest.shape import p95_timestamp_ms, shape_batch
from enrollment.ingest.suppression import (
    anonymise_batch_objects,
    anonymise_landed,
    erased_among,
    mentioned_ids,
    suppression,
)
from enrollment.ingest.validation.validate import validate_guarded

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

log = logging.getLogger(__name__)


def _unheard(step: str) -> None:
    pass


def write_batch(
    bucket: Bucket,
    prefix: str,
    batch_id: str,
    valid: pa.Table,
    quarantine: pa.Table,
    keyring: Keyring,
) -> tuple[pa.Table, pa.Table]:
    """Writes a shaped batch's four write-once objects under ``prefix`` (valid, quarantine, raw,
    partners), its erased partners anonymised first; the valid and quarantine rows as written."""
    # The raw JSON apart from the flat rows: the warehouse never loads it (it was most of every
    # row's bytes), and it stays here, write-once, joined by (batch_id, partition, offset).
    raw = valid.select(["batch_id", "kafka_partition", "kafka_offset", "event_id", "event_json"])
    valid = valid.drop_columns(["event_json"])
    changes = partner_changes(valid)
    partners = set(valid.column("partner_id").to_pylist()) | mentioned_ids(quarantine)
    generation, tokens = suppression(bucket)
    erased = erased_among(partners, keyring, tokens)
    # Partners erased before these events arrived (a resend, a rewind): they never land in clear.
    if erased:
        (valid, raw, quarantine, changes), counts = anonymise_landed(
            valid, raw, quarantine, changes, erased
        )
        log.info(
            "land %s: %d events and %d quarantined messages of %d erased partners "
            "anonymised before landing",
            batch_id,
            counts["events"],
            counts["quarantined"],
            len(erased),
        )
    fresh = [
        write_once(bucket, f"{prefix}/valid.parquet", valid),
        write_once(bucket, f"{prefix}/quarantine.parquet", quarantine),
        write_once(bucket, f"{prefix}/raw.parquet", raw),
        # The batch's partner changes, folded here where regions run in parallel, so the
        # warehouse cycle reads one small object per batch instead of every event.
        write_once(bucket, f"{prefix}/partners.parquet", changes),
    ]
    # Asked again once written, before the batch is queued: an erasure that began meanwhile, or
    # objects an earlier attempt wrote before one began (kept by write_once), would otherwise be
    # queued in clear, and the erasure, finding no queued batch, would not know of them.
    now, tokens = suppression(bucket)
    late = erased_among(partners, keyring, tokens) if now != generation else erased
    if late and (late != erased or not all(fresh)):
        counts = anonymise_batch_objects(bucket, prefix, late)
        log.warning(
            "land %s: %d partners erased while it landed: its objects rewritten without them (%s)",
            batch_id,
            len(late),
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        )
        (valid, raw, quarantine, changes), _ = anonymise_landed(
            valid, raw, quarantine, changes, late
        )
    return valid, quarantine


def _claimed_ms(manifest: Manifest) -> int:
    claimed = datetime.fromisoformat(manifest.claimed_at) if manifest.claimed_at else None
    return int((claimed.timestamp() if claimed else time.time()) * 1000)


def land(
    kafka: KafkaSettings,
    manifest: Manifest,
    bucket: Bucket,
    keyring: Keyring,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    step: Callable[[str], None] = _unheard,
) -> Landed:
    """Reads, validates and lands the batch; commits the offsets after the gate passes. A batch
    whose messages pass ``max_bytes`` shrinks to what fits, its claim record first. Nothing is
    written with a tax id in clear: they are tokenised under ``keyring`` (valid events) or masked
    (quarantined messages) first. ``step`` hears each durable step done (``train.STEPS``)."""
    landed, manifest = land_objects(kafka, manifest, bucket, keyring, max_bytes, step)
    # Before the commit: once the offsets move on, this record is the only way to the batch; and
    # the chain, which the next claim checks its start against.
    mark_pending(bucket, landed)
    step("pending")
    advance_chain(bucket, manifest)
    step("chained")
    commit_range(kafka, manifest)
    step("committed")
    return landed


def land_objects(
    kafka: KafkaSettings,
    manifest: Manifest,
    bucket: Bucket,
    keyring: Keyring,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    step: Callable[[str], None] = _unheard,
) -> tuple[Landed, Manifest]:
    """``land`` up to its objects written: the batch as landed, and its manifest (shrunk when the
    byte budget was reached). Nothing is recorded pending, chained or committed."""
    t0 = time.monotonic()
    messages, ranges = read_range(kafka, manifest, max_bytes=max_bytes)
    if ranges != manifest.ranges:
        # Rewritten before anything lands: a retry claims this same shrunk range, and the batch id
        # (every object name) derives from it. The rest is the next batch's.
        shrunk = replace(manifest, ranges=ranges)
        bucket.blob(manifest.claim_record).upload_from_string(
            shrunk.to_json(), content_type="application/json"
        )
        log.info(
            "land %s: %d offsets passed the byte budget (%d bytes); "
            "the batch shrinks to %d offsets, now %s",
            manifest.batch_id,
            manifest.offsets,
            max_bytes,
            shrunk.offsets,
            shrunk.batch_id,
        )
        manifest = shrunk
    read = messages.num_rows
    if (
        read > manifest.offsets
        or len(
            set(
                zip(
                    messages.column("kafka_partition").to_pylist(),
                    messages.column("kafka_offset").to_pylist(),
                    strict=True,
                )
            )
        )
        != read
    ):
        raise GateError(
            f"land gate, batch {manifest.batch_id}: read {read} messages (some twice?), "
            f"the range holds {manifest.offsets} offsets"
        )
    skipped = manifest.offsets - read  # offsets holding no message: accounted, never waited for
    anomalies = list(manifest.anomalies) + (
        lost_below_watermark(kafka, manifest, messages) if skipped else []
    )
    for a in anomalies[len(manifest.anomalies) :]:
        log.error("land %s %s: GAP %s", manifest.region, manifest.batch_id, a["detail"])
    # The claim's time, not the clock's: a retry settles the same stamps the same way.
    messages, clock = settle_stamps(messages, _claimed_ms(manifest))
    for a in clock:
        log.warning("land %s %s: CLOCK %s", manifest.region, manifest.batch_id, a["detail"])
    anomalies += clock
    result = validate_guarded(
        messages.column("value").to_pylist()
    )  # a raising validator never stops the region
    messages, valid, quarantine, duplicates = shape_batch(
        result, messages, manifest.batch_id, manifest.region, keyring
    )
    if valid.num_rows + quarantine.num_rows + skipped != manifest.offsets:
        raise GateError(
            f"land gate, batch {manifest.batch_id}: offsets {manifest.offsets} "
            f"!= valid {valid.num_rows} + quarantined "
            f"{quarantine.num_rows - duplicates} + duplicates {duplicates} + skipped {skipped}"
        )
    valid, quarantine = write_batch(
        bucket, manifest.prefix, manifest.batch_id, valid, quarantine, keyring
    )
    step("written")
    stamps = messages.column("kafka_timestamp")
    first, last = (
        (pc.min(stamps).as_py(), pc.max(stamps).as_py()) if messages.num_rows else (None, None)
    )
    landed = Landed(
        batch_id=manifest.batch_id,
        region=manifest.region,
        offsets=manifest.offsets,
        valid=valid.num_rows,
        quarantined=quarantine.num_rows - duplicates,
        duplicates=duplicates,
        valid_uri=manifest.uri(manifest.valid_object),
        quarantine_uri=manifest.uri(manifest.quarantine_object),
        seconds=round(time.monotonic() - t0, 3),
        group=manifest.group,
        claimed_at=manifest.claimed_at,
        partners_uri=manifest.uri(manifest.partners_object),
        first_kafka_ms=int(first.timestamp() * 1000) if first else None,
        last_kafka_ms=int(last.timestamp() * 1000) if last else None,
        p95_kafka_ms=p95_timestamp_ms(stamps),
        skipped=skipped,
        anomalies=anomalies,
    )
    return landed, manifest


def landed_from(bucket: Bucket, manifest: Manifest) -> Landed | None:
    """A claimed batch as it was landed (its counts read from the objects), None when not
    landed."""
    valid_blob, quarantine_blob = (
        bucket.blob(manifest.valid_object),
        bucket.blob(manifest.quarantine_object),
    )
    if not (valid_blob.exists() and quarantine_blob.exists()):
        return None
    valid_rows = pq.read_metadata(io.BytesIO(valid_blob.download_as_bytes())).num_rows
    quarantine = pq.read_table(
        io.BytesIO(quarantine_blob.download_as_bytes()), columns=["duplicate_only"]
    )
    duplicates = int(pc.sum(quarantine.column("duplicate_only")).as_py() or 0)
    partners = bucket.blob(manifest.partners_object)
    return Landed(
        batch_id=manifest.batch_id,
        region=manifest.region,
        offsets=manifest.offsets,
        valid=valid_rows,
        quarantined=quarantine.num_rows - duplicates,
        duplicates=duplicates,
        valid_uri=manifest.uri(manifest.valid_object),
        quarantine_uri=manifest.uri(manifest.quarantine_object),
        seconds=0.0,
        group=manifest.group,
        claimed_at=manifest.claimed_at,
        partners_uri=manifest.uri(manifest.partners_object) if partners.exists() else "",
        skipped=manifest.offsets - valid_rows - quarantine.num_rows,
        anomalies=list(manifest.anomalies),
    )
