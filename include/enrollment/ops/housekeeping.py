"""Retention of what is only transient: hand-over objects (the warehouse cycles' and each sink's),
claim records past the days reconciliation and replay look at, staging tables a killed task left
behind, the reconciliation's day files an older version wrote (``reconciliation/``: none is
written now, and every erasure had to rewrite them all).

Applied by the ``housekeeping`` DAG, by age (an object's or table's creation time), never by
lifecycle rules: the emulators ignore bucket lifecycle and table expiration. Durable state is
never touched: landed batches, pending and set-aside records, the claim chain
(``claims/<region>/landed-…``), the welcome-journey claims (``sinks/<sink>/journeys/``), the
warehouse's tables. Every step may run twice: deleting what is gone is a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from enrollment.config import PipelineConfig, RetentionSettings
from enrollment.core.layout import HANDOVER_PREFIX

if TYPE_CHECKING:
    import google.cloud.storage as gcs
    from google.cloud import bigquery

log = logging.getLogger(__name__)


STAGING_PREFIXES = ("_cycle_", "_stage_")
RECONCILIATION_PREFIX = "reconciliation/"  # day files of an older version's reconciliation


@dataclass
class Swept:
    handover_objects: int = 0
    claim_records: int = 0
    reconciliation_files: int = 0
    staging_tables: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "handover_objects": self.handover_objects,
            "claim_records": self.claim_records,
            "reconciliation_files": self.reconciliation_files,
            "staging_tables": len(self.staging_tables),
        }


def _older(blob: gcs.Blob, cutoff: datetime) -> bool:
    return blob.time_created is not None and blob.time_created < cutoff


def sweep_objects(
    bucket: gcs.Bucket, config: PipelineConfig, settings: RetentionSettings, now: datetime
) -> Swept:
    """Deletes hand-over objects, claim records and old reconciliation files older than their
    retention."""
    from google.api_core.exceptions import NotFound

    out = Swept()
    handover_cutoff = now - timedelta(days=settings.handover_days)
    claims_cutoff = now - timedelta(days=settings.claims_days)
    # sinks/<sink>/<REGION>/<plan key>.parquet only (journeys/ and welcome/ are durable), and the
    # cycles' hand-overs, handover/<REGION>/<batch id>.parquet (a sync that finds one gone reads the
    # warehouse instead).
    prefixes = [
        f"sinks/{sink}/{region.code}/" for sink in config.sinks for region in config.regions
    ]
    prefixes += [f"{HANDOVER_PREFIX}{region.code}/" for region in config.regions]
    for prefix in prefixes:
        for blob in bucket.list_blobs(prefix=prefix):
            if blob.name.endswith(".parquet") and _older(blob, handover_cutoff):
                try:
                    blob.delete()
                    out.handover_objects += 1
                except NotFound:
                    pass
    for region in config.regions:
        for blob in bucket.list_blobs(
            prefix=f"claims/{region.code}/from-"
        ):  # never the chain (landed-…)
            if _older(blob, claims_cutoff):
                try:
                    blob.delete()
                    out.claim_records += 1
                except NotFound:
                    pass
    # Staging inputs, as old as the staging tables they were loaded into.
    staging_cutoff = now - timedelta(hours=settings.staging_hours)
    for blob in bucket.list_blobs(prefix=RECONCILIATION_PREFIX):
        if not _older(blob, staging_cutoff):
            continue
        try:
            blob.delete()
            out.reconciliation_files += 1
        except NotFound:
            pass
    return out


def sweep_staging(
    client: bigquery.Client, project: str, dataset: str, settings: RetentionSettings, now: datetime
) -> list[str]:
    """Drops staging tables older than ``staging_hours`` (a running task's are younger)."""
    cutoff = now - timedelta(hours=settings.staging_hours)
    dropped = []
    for item in client.list_tables(f"{project}.{dataset}"):
        if not item.table_id.startswith(STAGING_PREFIXES):
            continue
        table = client.get_table(item.reference)
        if table.created is not None and table.created < cutoff:
            client.delete_table(item.reference, not_found_ok=True)
            dropped.append(item.table_id)
    return dropped


def sweep(
    bucket: gcs.Bucket,
    client: bigquery.Client,
    config: PipelineConfig,
    now: datetime | None = None,
) -> Swept:
    """One housekeeping pass over the landing bucket and the warehouse dataset."""
    now = now or datetime.now(UTC)
    settings = config.retention
    out = sweep_objects(bucket, config, settings, now)
    out.staging_tables = sweep_staging(
        client, config.project, config.warehouse_dataset, settings, now
    )
    log.info(
        "housekeeping: deleted %d hand-over objects, %d claim records, %d old reconciliation "
        "files; dropped %d staging tables",
        out.handover_objects,
        out.claim_records,
        out.reconciliation_files,
        len(out.staging_tables),
    )
    return out
