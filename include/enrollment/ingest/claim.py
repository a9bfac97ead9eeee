"""Claiming a batch: the offset range a land will read, frozen before it reads.

``claim`` freezes, per partition **the cluster reports** (topic metadata, not configuration: a
partition added on the cluster is ingested at once), the range from the pipeline group's
committed offset to the end seen now (capped). The batch id and every object name derive from the
group, topic and range, and the manifest is written once, under a name derived from the start
offsets: claiming again before the batch is landed returns the same range.

Each claim is chained to where the group's landed batches end (``claims/<region>/landed-….json``):
a committed offset *past* that end means offsets were deleted (retention) before they were read —
a **gap**; one *before* it means the group's offsets expired and it rewound — a **rewind**, and
the claim starts at the landed end instead (nothing is ingested twice). Both travel with the batch
and become ledger rows of their own (stage ``gap``/``rewind``)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from enrollment.clients.kafka import KafkaSettings, pending_ranges, topic_id
from enrollment.core.batch import Anomaly, Chain, Manifest, PartitionRange, topic_key
from enrollment.core.layout import CLAIMS_PREFIX, chain_object, claim_object

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

log = logging.getLogger(__name__)


def read_chain(bucket: Bucket, region: str, topic: str, group: str) -> Chain | None:
    """{"ends": {partition: end}, "starts": …, "claim": record name} of the last landed batch, or
    None."""
    from google.api_core.exceptions import NotFound

    try:
        data = json.loads(bucket.blob(chain_object(region, topic, group)).download_as_text())
    except NotFound:
        return None
    return {
        "ends": {int(p): o for p, o in data["ends"].items()},
        "starts": {int(p): o for p, o in data.get("starts", {}).items()},
        "claim": data.get("claim", ""),
        "topic_id": data.get("topic_id", ""),
    }


def advance_chain(bucket: Bucket, manifest: Manifest, tries: int = 20) -> None:
    """Moves the chain to the end of a landed batch; never backwards (a late retry of an older
    batch). Read, merged and written under the generation read (a write precondition): when two
    lands move it at once, the one that read a stale chain reads again and merges, instead of
    writing its stale ends over the other's (the next claim would see a false gap)."""
    from google.api_core.exceptions import NotFound, PreconditionFailed

    blob = bucket.blob(chain_object(manifest.region, manifest.topic_key, manifest.group))
    for _ in range(tries):
        try:
            blob.reload()
            generation = blob.generation or 0
        except NotFound:
            generation = 0
        chain = read_chain(bucket, manifest.region, manifest.topic_key, manifest.group)
        ends = dict(chain["ends"]) if chain is not None else {}
        for r in manifest.ranges:
            ends[r.partition] = max(ends.get(r.partition, 0), r.end)
        body = {
            "group": manifest.group,
            "topic": manifest.topic,
            "ends": {str(p): o for p, o in sorted(ends.items())},
            "starts": {str(r.partition): r.start for r in manifest.ranges},
            "claim": manifest.claim_record,
            "batch_id": manifest.batch_id,
            "topic_id": (chain["topic_id"] if chain is not None else "") or manifest.topic_id,
        }
        try:
            blob.upload_from_string(
                json.dumps(body, sort_keys=True),
                content_type="application/json",
                if_generation_match=generation,
            )
            return
        except PreconditionFailed:
            continue  # another land moved the chain since it was read: merge with that
    raise RuntimeError(
        f"claim chain of {manifest.region} {manifest.topic}: still moving after {tries} tries"
    )


def _recorded(bucket: Bucket, *names: str) -> Manifest | None:
    for name in names:
        blob = bucket.blob(name)
        if blob.exists():
            return Manifest.from_json(blob.download_as_text())
    return None


def chain_starts(
    pending: list[tuple[int, int, int]], chain: Chain | None, topic: str
) -> tuple[dict[int, int], list[Anomaly]]:
    """Where the next claim starts per partition, and the gaps and rewinds against the chain (the
    end of the group's landed batches; a partition the chain does not know started at 0)."""
    starts: dict[int, int] = {}
    anomalies: list[Anomaly] = []
    for p, start, end in pending:
        starts[p] = start
        if chain is None:
            continue  # the group's first claim of the topic (or claimed before the chain existed)
        landed = chain["ends"].get(p, 0)
        if start > landed:
            anomalies.append(
                {
                    "kind": "gap",
                    "partition": p,
                    "start": landed,
                    "end": start,
                    "detail": f"{topic} partition {p}: offsets {landed}-{start} "
                    f"({start - landed}) deleted before they were read",
                }
            )
        elif start < landed <= end:
            anomalies.append(
                {
                    "kind": "rewind",
                    "partition": p,
                    "start": start,
                    "end": landed,
                    "detail": f"{topic} partition {p}: the group rewound to {start}, "
                    f"its batches were landed to {landed}; "
                    f"offsets {start}-{landed} ({landed - start}) not ingested again",
                }
            )
            starts[p] = landed
        elif start < landed:
            anomalies.append(
                {
                    "kind": "rewind",
                    "partition": p,
                    "start": start,
                    "end": landed,
                    "detail": f"{topic} partition {p}: the partition ends at {end}, "
                    f"before the landed end {landed} "
                    f"(topic recreated or truncated?): reading from {start}",
                }
            )
    return starts, anomalies


def claim(
    kafka: KafkaSettings,
    group: str,
    region: str,
    topic: str,
    partitions: int | None,
    bucket: Bucket,
    max_batch: int,
) -> Manifest | None:
    """Freezes the next batch of a region, or returns the unfinished one; None when nothing is
    pending. ``partitions`` is the configured count: the partitions read are the cluster's."""
    from google.api_core.exceptions import PreconditionFailed

    pending = pending_ranges(kafka, group, topic, partitions)
    committed = {p: start for p, start, _ in pending}
    chain = read_chain(bucket, region, topic, group)
    current = topic_id(kafka, topic)
    incarnation = ""
    if chain is not None and chain["topic_id"] and chain["topic_id"] != current:
        # Deleted and created again: its offsets start over, so its batches get their own chain,
        # claim records and ids (the first incarnation's would collide with them).
        incarnation = current
        log.warning(
            "claim %s %s: topic %s was created again (id %s, its batches were landed from %s); "
            "its batches are the topic's incarnation %s",
            region,
            group,
            topic,
            current,
            chain["topic_id"],
            current,
        )
    key = topic_key(topic, incarnation)
    if incarnation:
        chain = read_chain(bucket, region, key, group)
    if (
        chain
        and chain["claim"]
        and all(committed.get(p) == s for p, s in chain["starts"].items())
        and any(chain["ends"].get(p, s) != s for p, s in chain["starts"].items())
    ):
        # The last landed batch, its offsets not committed (land died after landing): land it
        # again.
        again = _recorded(bucket, chain["claim"])
        if again is not None:
            return again
    unfinished = _recorded(
        bucket,
        claim_object(region, key, committed, group),
        *([] if incarnation else [claim_object(region, topic, committed)]),
    )
    if unfinished is not None and (
        chain is None
        or all(r.start >= chain["ends"].get(r.partition, 0) for r in unfinished.ranges)
    ):
        return unfinished
    starts, anomalies = chain_starts(pending, chain, topic)
    for a in anomalies:
        log.error("claim %s %s: %s %s", region, group, a["kind"].upper(), a["detail"])
    record = bucket.blob(claim_object(region, key, starts, group))
    if starts != committed and (again := _recorded(bucket, record.name)) is not None:
        return again  # the unfinished claim after a rewind
    cap = max(1, -(-max_batch // max(1, len(pending))))
    ranges = tuple(
        PartitionRange(p, starts[p], max(starts[p], min(end, starts[p] + cap)))
        for p, _, end in pending
    )
    if sum(r.size for r in ranges) == 0:
        # A gap or rewind alone waits for the next batch with data: it is found again then.
        return None
    manifest = Manifest(
        region=region,
        topic=topic,
        group=group,
        bucket=bucket.name,
        ranges=ranges,
        claimed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        anomalies=tuple(anomalies),
        topic_id=current,
        incarnation=incarnation,
    )
    try:
        record.upload_from_string(
            manifest.to_json(), content_type="application/json", if_generation_match=0
        )
    except PreconditionFailed:  # a concurrent claim of the same start won: use its range
        return Manifest.from_json(record.download_as_text())
    return manifest


def claims(
    bucket: Bucket, region: str, topic: str, group: str, start: datetime, end: datetime
) -> list[Manifest]:
    """The batches claimed for a region's topic by ``group`` in [start, end) (when each claim was
    recorded), oldest first: the index that reconciliation and replay work from."""
    found: list[Manifest] = []
    for blob in bucket.list_blobs(prefix=f"{CLAIMS_PREFIX}{region}/from-"):
        if blob.time_created is not None and start <= blob.time_created < end:
            manifest = Manifest.from_json(blob.download_as_text())
            if manifest.topic == topic and manifest.group == group:
                found.append(manifest)
    return sorted(found, key=lambda m: (m.claimed_at, m.batch_id))
