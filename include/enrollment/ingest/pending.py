"""The queue between ``land`` and the warehouse: one small record per landed batch not yet
warehoused (``pending/<group>/<region>/<batch id>.json``), written once by ``land``, cleared by the
cycle that wrote the batch; batches a cycle could not read wait under ``set_aside/`` until an
operator repairs and requeues them."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from enrollment.core.batch import Landed
from enrollment.core.layout import (
    PENDING_PREFIX,
    SET_ASIDE_PREFIX,
    pending_object,
    set_aside_object,
)

if TYPE_CHECKING:
    import google.cloud.storage as gcs
    from google.cloud.storage import Bucket


def mark_pending(bucket: Bucket, landed: Landed) -> None:
    """Records the batch as landed, not warehoused; writing it again changes nothing."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob(pending_object(landed.group, landed.region, landed.batch_id))
    body = json.dumps(landed.as_dict(), sort_keys=True)
    with contextlib.suppress(PreconditionFailed):  # a retry of land: the record is there already
        blob.upload_from_string(body, content_type="application/json", if_generation_match=0)


def pending_names(bucket: Bucket, group: str) -> frozenset[str]:
    """The names of the pending records (one listing, no record read): what the warehouse's
    pending watcher compares from one second to the next."""
    return frozenset(
        blob.name
        for blob in bucket.list_blobs(
            prefix=f"{PENDING_PREFIX}{group}/", fields="items(name),nextPageToken"
        )
    )


def pending_batches(bucket: Bucket, group: str, max_rows: int | None = None) -> list[Landed]:
    """The pipeline's landed batches not yet warehoused, every region, oldest claim first; at
    most ``max_rows`` offsets in all (and always the oldest batch, however large)."""
    from google.api_core.exceptions import NotFound

    records: list[dict[str, Any]] = []
    for blob in bucket.list_blobs(prefix=f"{PENDING_PREFIX}{group}/"):
        try:
            records.append(json.loads(blob.download_as_text()))
        except NotFound:  # cleared by a cycle meanwhile
            continue
    records.sort(key=lambda r: (r.get("claimed_at") or "", r["batch_id"]))
    out: list[Landed] = []
    rows = 0
    for r in records:
        if out and max_rows is not None and rows + r["offsets"] > max_rows:
            break
        out.append(Landed.from_dict(r))
        rows += r["offsets"]
    return out


def count_failure(bucket: Bucket, landed: Landed) -> Landed:
    """The batch failed one more cycle's gate: its pending record says how many. A batch not
    queued (a replay's) has no record and is not counted."""
    from google.api_core.exceptions import PreconditionFailed

    record = bucket.get_blob(pending_object(landed.group, landed.region, landed.batch_id))
    if record is None:
        return landed
    failed = replace(landed, failed_cycles=landed.failed_cycles + 1)
    with contextlib.suppress(PreconditionFailed):  # cleared or set aside meanwhile: not counted
        record.upload_from_string(
            json.dumps(failed.as_dict(), sort_keys=True),
            content_type="application/json",
            if_generation_match=record.generation,
        )
        return failed
    return landed


def clear_pending(bucket: Bucket, batches: list[Landed]) -> None:
    from google.api_core.exceptions import NotFound

    for landed in batches:
        with contextlib.suppress(NotFound):
            bucket.blob(pending_object(landed.group, landed.region, landed.batch_id)).delete()


def set_aside_batches(bucket: gcs.Bucket, group: str) -> list[str]:
    """The names of the batches set aside for ``group``: what the lag monitor alerts on."""
    return [blob.name for blob in bucket.list_blobs(prefix=f"{SET_ASIDE_PREFIX}{group}/")]


def requeue(bucket: gcs.Bucket, group: str, region: str, batch_id: str) -> None:
    """Puts a repaired batch back in the warehouse queue (its next cycle takes it)."""
    record = bucket.blob(set_aside_object(group, region, batch_id))
    # Its set_aside ledger row turns ok once it is warehoused; repaired, it starts afresh.
    body = json.loads(record.download_as_text()) | {"requeued": True, "failed_cycles": 0}
    bucket.blob(pending_object(group, region, batch_id)).upload_from_string(
        json.dumps(body, sort_keys=True), content_type="application/json"
    )
    record.delete()
