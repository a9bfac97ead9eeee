"""The flat library's import paths from before the relayout into stage packages (2026-12), kept
working for a deprecation period: ``from enrollment.batches import GateError`` still imports, with
a ``MovedWarning`` (a ``DeprecationWarning``) naming the new path. Nothing in this repository uses
them (the tests turn the warning into an error); docs/decisions/0006-stage-packages.md says when
they go.

One file on purpose: most of it is the table of old names, read as data.

Old modules that are gone are served by a finder placed last on ``sys.meta_path`` (a real module
always wins); the three that became packages or lost names answer through their ``__getattr__``.
Light on purpose: ``enrollment/__init__.py`` installs it, so every import of the library pays it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any


class MovedWarning(DeprecationWarning):
    """An import path from before the relayout; the message names the new one."""


# old module -> name -> "new module" or "new module:new name"
MOVED: dict[str, dict[str, str]] = {
    "enrollment.backlog": {
        "Backlog": "enrollment.ingest.backlog",
        "Region": "enrollment.config",
        "measure": "enrollment.ingest.backlog",
        "pending_ranges": "enrollment.clients.kafka",
        "should_fire": "enrollment.ingest.backlog",
        "total_pending": "enrollment.ingest.backlog",
    },
    "enrollment.batches": {
        "Anomaly": "enrollment.core.batch",
        "CLAIMS_PREFIX": "enrollment.core.layout",
        "Chain": "enrollment.core.batch",
        "DEFAULT_MAX_BYTES": "enrollment.core.batch",
        "GateError": "enrollment.core.errors",
        "Keyring": "enrollment.core.pii",
        "Landed": "enrollment.core.batch",
        "Manifest": "enrollment.core.batch",
        "PENDING_PREFIX": "enrollment.core.layout",
        "PartitionRange": "enrollment.core.batch",
        "ValidationResult": "enrollment.ingest.validation",
        "advance_chain": "enrollment.ingest.claim",
        "anonymise_landed": "enrollment.ingest.suppression",
        "chain_object": "enrollment.core.layout",
        "chain_starts": "enrollment.ingest.claim",
        "claim": "enrollment.ingest.claim",
        "claim_object": "enrollment.core.layout",
        "claims": "enrollment.ingest.claim",
        "clear_pending": "enrollment.ingest.pending",
        "commit_range": "enrollment.clients.kafka",
        "erased_among": "enrollment.ingest.suppression",
        "flatten": "enrollment.ingest.shape",
        "land": "enrollment.ingest.land",
        "landed_from": "enrollment.ingest.land",
        "landed_schemas": "enrollment.ingest.shape",
        "landing_prefix": "enrollment.core.batch",
        "lost_below_watermark": "enrollment.ingest.read",
        "mark_pending": "enrollment.ingest.pending",
        "mask_raw": "enrollment.core.pii",
        "mentioned_ids": "enrollment.ingest.suppression",
        "partition_drift": "enrollment.clients.kafka",
        "partner_changes": "enrollment.core.partners",
        "pending_batches": "enrollment.ingest.pending",
        "pending_object": "enrollment.core.layout",
        "pending_ranges": "enrollment.clients.kafka",
        "quarantine_rows": "enrollment.ingest.shape",
        "read_chain": "enrollment.ingest.claim",
        "read_range": "enrollment.ingest.read",
        "shape_batch": "enrollment.ingest.shape",
        "suppressed": "enrollment.ingest.suppression",
        "tokenise_json": "enrollment.core.pii",
        "tokenised": "enrollment.ingest.shape",
        "topic_partitions": "enrollment.clients.kafka",
        "validate_batch": "enrollment.ingest.validation",
        "validate_guarded": "enrollment.ingest.validation",
        "write_batch": "enrollment.ingest.land",
        "write_once": "enrollment.clients.objects",
    },
    "enrollment.canary": {
        "CANARY_SCHEMA": "enrollment.ops.canary",
        "Canary": "enrollment.ops.canary",
        "PipelineConfig": "enrollment.config",
        "Region": "enrollment.config",
        "Sink": "enrollment.sinks.base",
        "WAREHOUSE": "enrollment.ops.canary",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "canary_event": "enrollment.ops.canary",
        "canary_id": "enrollment.core.partners",
        "inject": "enrollment.ops.canary",
        "is_canary": "enrollment.core.partners",
        "look": "enrollment.ops.canary",
        "missing": "enrollment.ops.canary",
        "record": "enrollment.ops.canary",
    },
    "enrollment.contracts.markets": {
        "LIBRARY": "enrollment.config",
        "Market": "enrollment.config",
        "Markets": "enrollment.config",
        "active": "enrollment.config:markets_in_force",
    },
    "enrollment.cost": {
        "BATCH_ID": "enrollment.warehouse.cost",
        "EVENT_ID": "enrollment.warehouse.cost",
        "EVENT_ROW": "enrollment.warehouse.cost",
        "GIB": "enrollment.warehouse.cost",
        "INT": "enrollment.warehouse.cost",
        "LEDGER_ROWS_PER_BATCH": "enrollment.warehouse.cost",
        "MIN_BYTES_PER_TABLE": "enrollment.warehouse.cost",
        "PARTNER_ID": "enrollment.warehouse.cost",
        "PARTNER_ROW": "enrollment.warehouse.cost",
        "PRICE_PER_TIB": "enrollment.warehouse.cost",
        "QUARANTINE_SHARE": "enrollment.warehouse.cost",
        "STORAGE_WRITE_PER_GIB": "enrollment.warehouse.cost",
        "Statement": "enrollment.warehouse.cost",
        "TIB": "enrollment.warehouse.cost",
        "TS": "enrollment.warehouse.cost",
        "cycle_statements": "enrollment.warehouse.cost",
        "estimate": "enrollment.warehouse.cost",
        "markdown": "enrollment.warehouse.cost",
        "old_design_bytes_per_day": "enrollment.warehouse.cost",
    },
    "enrollment.cycle": {
        "CycleResult": "enrollment.warehouse.cycle",
        "GateError": "enrollment.core.errors",
        "Landed": "enrollment.core.batch",
        "MANDATORY": "enrollment.warehouse.gates",
        "PARTNER_SCHEMA": "enrollment.core.partners",
        "SET_ASIDE_PREFIX": "enrollment.core.layout",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "WarehouseSettings": "enrollment.config",
        "Window": "enrollment.core.windows",
        "clear_pending": "enrollment.ingest.pending",
        "cycle_id": "enrollment.core.batch",
        "events_gate_sql": "enrollment.warehouse.gates",
        "events_insert_sql": "enrollment.warehouse.statements",
        "fold_partners": "enrollment.core.partners",
        "landed_schema": "enrollment.clients.bigquery",
        "landed_schemas": "enrollment.ingest.shape",
        "partner_changes": "enrollment.core.partners",
        "pending_object": "enrollment.core.layout",
        "quarantine_insert_sql": "enrollment.warehouse.statements",
        "raise_failed": "enrollment.warehouse.cycle",
        "requeue": "enrollment.ingest.pending",
        "run_cycle": "enrollment.warehouse.cycle",
        "set_aside": "enrollment.warehouse.cycle",
        "set_aside_batches": "enrollment.ingest.pending",
        "set_aside_object": "enrollment.core.layout",
        "unreadable": "enrollment.warehouse.cycle",
    },
    "enrollment.erasure": {
        "ENVELOPE_KEYS": "enrollment.ingest.suppression",
        "ERASED": "enrollment.core.partners",
        "ERASURE_REASONS": "enrollment.config",
        "ERASURE_SCHEMA": "enrollment.ops.erasure.request",
        "Erasure": "enrollment.ops.erasure.request",
        "FORMATS": "enrollment.contracts.spec",
        "INDEX_OBJECT": "enrollment.core.layout",
        "Keyring": "enrollment.core.pii",
        "MAX_ERASURE_PARTNERS": "enrollment.config",
        "MAX_PARTNERS": "enrollment.ops.erasure.request",
        "PARTNER_ID_RE": "enrollment.ops.erasure.request",
        "PERSONAL_COLUMNS": "enrollment.ingest.suppression",
        "REASONS": "enrollment.ops.erasure.request",
        "Request": "enrollment.ops.erasure.request:ErasureRequest",
        "TICKET_RE": "enrollment.ops.erasure.request",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "anonymise_landed": "enrollment.ingest.suppression",
        "anonymise_quarantine": "enrollment.ingest.suppression",
        "anonymise_raw": "enrollment.ingest.suppression",
        "anonymise_valid": "enrollment.ingest.suppression",
        "batches_holding": "enrollment.ops.erasure.scrub",
        "drop_partners": "enrollment.ingest.suppression",
        "ensure_ledger": "enrollment.ops.erasure.request",
        "erased_among": "enrollment.ingest.suppression",
        "mentioned_ids": "enrollment.ingest.suppression",
        "record": "enrollment.ops.erasure.request",
        "remaining_in_batch": "enrollment.ops.erasure.scrub",
        "remaining_in_warehouse": "enrollment.ops.erasure.scrub",
        "scrub_batch": "enrollment.ops.erasure.scrub",
        "scrub_landed": "enrollment.ops.erasure.scrub",
        "scrub_objects": "enrollment.ops.erasure.scrub",
        "scrub_warehouse": "enrollment.ops.erasure.scrub",
        "suppress": "enrollment.ingest.suppression",
        "suppressed": "enrollment.ingest.suppression",
    },
    "enrollment.health": {
        "CHECKS": "enrollment.ops.health",
        "Check": "enrollment.ops.health",
        "Endpoints": "enrollment.clients.services",
        "HEALTH_GROUP": "enrollment.ops.health",
        "HEALTH_SCHEMA": "enrollment.ops.health",
        "HEALTH_TOPIC": "enrollment.ops.health",
        "PipelineConfig": "enrollment.config",
        "ServiceDown": "enrollment.ops.health",
        "bigquery_client": "enrollment.clients.services",
        "check": "enrollment.ops.health",
        "firestore_client": "enrollment.clients.services",
        "load_config": "enrollment.config",
        "record": "enrollment.ops.health",
        "require": "enrollment.ops.health",
        "storage_client": "enrollment.clients.services",
    },
    "enrollment.housekeeping": {
        "PipelineConfig": "enrollment.config",
        "RetentionSettings": "enrollment.config",
        "STAGING_PREFIXES": "enrollment.ops.housekeeping",
        "Swept": "enrollment.ops.housekeeping",
        "sweep": "enrollment.ops.housekeeping",
        "sweep_objects": "enrollment.ops.housekeeping",
        "sweep_staging": "enrollment.ops.housekeeping",
    },
    "enrollment.lag": {
        "LAG_SCHEMA": "enrollment.ops.lag",
        "LagRow": "enrollment.ops.lag",
        "LagRules": "enrollment.config",
        "PipelineConfig": "enrollment.config",
        "SyncRun": "enrollment.sync.run",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "alerts": "enrollment.ops.lag",
        "as_dicts": "enrollment.ops.lag",
        "findings": "enrollment.ops.lag",
        "kafka_lag": "enrollment.ops.lag",
        "measure": "enrollment.ingest.backlog",
        "record": "enrollment.ops.lag",
        "sink_lag": "enrollment.ops.lag",
        "warehouse_lag": "enrollment.ops.lag",
    },
    "enrollment.marketing_cloud": {
        "CONTACT_KEYS_PER_DELETE": "enrollment.clients.marketing_cloud",
        "DELETE_OBJECTS_PER_CALL": "enrollment.clients.marketing_cloud",
        "MAX_JOURNEY_MEMBERS": "enrollment.clients.marketing_cloud",
        "MAX_ROWS_PER_ASYNC_REQUEST": "enrollment.clients.marketing_cloud",
        "MarketingCloudClient": "enrollment.clients.marketing_cloud",
        "MarketingCloudError": "enrollment.clients.marketing_cloud",
        "PARTNER_API": "enrollment.clients.marketing_cloud",
        "not_queued": "enrollment.clients.marketing_cloud",
        "unsent": "enrollment.clients.marketing_cloud",
    },
    "enrollment.metrics": {
        "METRICS_SCHEMA": "enrollment.ops.metrics",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "batch_metrics": "enrollment.ops.metrics",
        "record": "enrollment.ops.metrics",
        "record_batches": "enrollment.ops.metrics",
    },
    "enrollment.operator_view": {
        "BATCHES_SHOWN": "enrollment.view.reader",
        "BROKEN": "enrollment.view.reader",
        "EMAIL": "enrollment.view.masking",
        "EXAMPLES_PER_REASON": "enrollment.view.reader",
        "EXAMPLE_BYTES": "enrollment.view.masking",
        "EXAMPLE_REASONS": "enrollment.view.reader",
        "HEALTH_STALE_S": "enrollment.view.reader",
        "LATE": "enrollment.view.reader",
        "LEDGER_LOOKBACK_DAYS": "enrollment.view.reader",
        "MAX_WINDOW_HOURS": "enrollment.view.reader",
        "OK": "enrollment.view.reader",
        "PAGE_MASKED_KEYS": "enrollment.view.masking",
        "PARTNER_ID": "enrollment.view.masking",
        "PipelineConfig": "enrollment.config",
        "QUERY_TIMEOUT_S": "enrollment.view.reader",
        "Reader": "enrollment.view.reader",
        "RegionBacklog": "enrollment.view.regions",
        "STALE": "enrollment.view.reader",
        "TAX_ID_SHAPED": "enrollment.core.pii",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "balance": "enrollment.view.reader",
        "canaries": "enrollment.view.sinks",
        "check_status": "enrollment.view.reader",
        "classify": "enrollment.view.reader",
        "events_per_minute": "enrollment.view.regions",
        "freshness": "enrollment.view.regions",
        "health_overview": "enrollment.view.overview",
        "kafka_backlog": "enrollment.view.regions",
        "ledger_batches": "enrollment.view.regions",
        "mask_keys": "enrollment.core.pii",
        "mask_partner_id": "enrollment.view.masking",
        "mask_partner_ids": "enrollment.view.masking",
        "mask_raw": "enrollment.core.pii",
        "masked_example": "enrollment.view.masking",
        "minute_series": "enrollment.view.reader",
        "overview": "enrollment.view.overview",
        "parse_seen": "enrollment.view.reader",
        "quarantine_overview": "enrollment.view.quarantine",
        "region_detail": "enrollment.view.regions",
        "regions_overview": "enrollment.view.regions",
        "scrub": "enrollment.view.masking",
        "sinks_overview": "enrollment.view.sinks",
        "ts": "enrollment.clients.bigquery:sql_timestamp",
        "window_bounds": "enrollment.view.reader",
    },
    "enrollment.partners": {
        "FOLLOWS": "enrollment.core.partners",
        "PARTNER_COLUMNS": "enrollment.core.partners",
        "PARTNER_EVENTS": "enrollment.contracts.spec",
        "PARTNER_SCHEMA": "enrollment.core.partners",
        "fold_partners": "enrollment.core.partners",
        "partner_changes": "enrollment.core.partners",
    },
    "enrollment.pii": {
        "KEY_ID_RE": "enrollment.core.pii",
        "Keyring": "enrollment.core.pii",
        "MIN_KEY_BYTES": "enrollment.core.pii",
        "SENSITIVE_KEYS": "enrollment.core.pii",
        "TAX_ID_KEYS": "enrollment.core.pii",
        "TAX_ID_SHAPED": "enrollment.core.pii",
        "TOKEN_PREFIX": "enrollment.core.pii",
        "TOKEN_RE": "enrollment.core.pii",
        "is_token": "enrollment.core.pii",
        "mask_keys": "enrollment.core.pii",
        "mask_raw": "enrollment.core.pii",
        "normalise": "enrollment.core.pii",
        "shape": "enrollment.core.pii",
        "tokenise_json": "enrollment.core.pii",
    },
    "enrollment.reconciliation": {
        "DayReport": "enrollment.ops.reconciliation",
        "ERASED": "enrollment.core.partners",
        "Finding": "enrollment.ops.reconciliation",
        "LISTED_IDS": "enrollment.ops.reconciliation",
        "Ledger": "enrollment.ops.reconciliation:LedgerRows",
        "Manifest": "enrollment.core.batch",
        "PARTNER_EVENTS": "enrollment.contracts.spec",
        "PipelineConfig": "enrollment.config",
        "RECONCILIATION_SCHEMA": "enrollment.ops.reconciliation",
        "Reconciliation": "enrollment.ops.reconciliation",
        "Region": "enrollment.config",
        "Sink": "enrollment.sinks.base",
        "SyncRun": "enrollment.sync.run",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "balances": "enrollment.warehouse.ledger",
        "claims": "enrollment.ingest.claim",
        "day_bounds": "enrollment.core.windows",
        "pending_ranges": "enrollment.clients.kafka",
        "summarise": "enrollment.sinks.base",
    },
    "enrollment.recovery": {
        "Candidate": "enrollment.ops.recovery.plan",
        "DEFAULT_WINDOW": "enrollment.ops.recovery.request",
        "EXCLUDED_BY_DEFAULT": "enrollment.ops.recovery.request",
        "Keyring": "enrollment.core.pii",
        "MAX_WINDOW": "enrollment.ops.recovery.request",
        "OUTCOMES": "enrollment.ops.recovery.plan",
        "PipelineConfig": "enrollment.config",
        "Plan": "enrollment.ops.recovery.plan:RecoveryPlan",
        "RECOVERED_KEY": "enrollment.ops.recovery.run",
        "RECOVERED_SCHEMA": "enrollment.ops.recovery.run",
        "RECOVERY_PREFIX": "enrollment.core.batch",
        "ROWS_PER_STATEMENT": "enrollment.ops.recovery.run",
        "RegionPlan": "enrollment.ops.recovery.plan",
        "Request": "enrollment.ops.recovery.request:RecoveryRequest",
        "RequestError": "enrollment.core.errors",
        "SEEK_GAP": "enrollment.ops.recovery.plan",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "fetch": "enrollment.ops.recovery.plan",
        "is_recovery_batch": "enrollment.core.batch",
        "land_recovery": "enrollment.ops.recovery.run",
        "matches": "enrollment.ops.recovery.request",
        "plan": "enrollment.ops.recovery.plan",
        "reasons_regex": "enrollment.ops.recovery.request",
        "record_ledger": "enrollment.ops.recovery.run",
        "recover": "enrollment.ops.recovery.run",
        "recovery_batch_id": "enrollment.core.batch",
    },
    "enrollment.replay": {
        "Landed": "enrollment.core.batch",
        "PENDING_PREFIX": "enrollment.core.layout",
        "PipelineConfig": "enrollment.config",
        "Plan": "enrollment.sync.plan:SyncPlan",
        "Sink": "enrollment.sinks.base",
        "SyncRun": "enrollment.sync.run",
        "claims": "enrollment.ingest.claim",
        "day_bounds": "enrollment.core.windows",
        "days": "enrollment.ops.replay",
        "landed_batches": "enrollment.ops.replay",
        "landed_from": "enrollment.ingest.land",
        "replay_sync": "enrollment.ops.replay",
        "replay_warehouse": "enrollment.ops.replay",
    },
    "enrollment.services": {
        "Endpoints": "enrollment.clients.services",
        "MarketingCloudClient": "enrollment.clients.marketing_cloud",
        "anonymous_if_emulated": "enrollment.clients.services",
        "bigquery_client": "enrollment.clients.services",
        "firestore_client": "enrollment.clients.services",
        "storage_client": "enrollment.clients.services",
    },
    "enrollment.simulator.generator": {
        "BOOLEAN": "enrollment.contracts.spec",
        "CHANNELS": "enrollment.contracts.spec",
        "CONSENT_CHANGE_SHARE": "enrollment.simulator.payloads",
        "INTEGER": "enrollment.contracts.spec",
        "KITS": "enrollment.simulator.payloads",
        "Markets": "enrollment.config",
        "PLANS": "enrollment.simulator.payloads",
        "STRING": "enrollment.contracts.spec",
        "contract_fields": "enrollment.contracts.spec:fields",
    },
    "enrollment.sync": {
        "ERASED": "enrollment.core.partners",
        "GateError": "enrollment.core.errors",
        "PARTNER_EVENTS": "enrollment.contracts.spec",
        "Plan": "enrollment.sync.plan:SyncPlan",
        "SINK_QUARANTINE_SCHEMA": "enrollment.sync.tables",
        "Sink": "enrollment.sinks.base",
        "SinkResult": "enrollment.sinks.base",
        "SyncError": "enrollment.core.errors",
        "SyncRun": "enrollment.sync.run",
        "WATERMARK_SCHEMA": "enrollment.sync.tables",
        "Warehouse": "enrollment.clients.bigquery:BigQuery",
        "summarise": "enrollment.sinks.base",
    },
    "enrollment.validation": {
        "BOOLEAN": "enrollment.contracts.spec",
        "CONTRACT_TREES": "enrollment.ingest.validation.trees",
        "COUNTRY_PATH": "enrollment.contracts.spec",
        "DEFAULT_MAX_MESSAGE_BYTES": "enrollment.ingest.validation",
        "ENVELOPE": "enrollment.contracts.spec",
        "ENVELOPE_TREE": "enrollment.ingest.validation.trees",
        "EVENT_TYPES": "enrollment.contracts.spec",
        "Event": "enrollment.ingest.validation.trees",
        "FORMATS": "enrollment.contracts.spec",
        "FieldSpec": "enrollment.contracts.spec",
        "INTEGER": "enrollment.contracts.spec",
        "MAX_NESTING": "enrollment.contracts.spec",
        "Mask": "enrollment.ingest.validation.trees",
        "NUMBER_LIMIT": "enrollment.contracts.spec",
        "PARSE_SCHEMA": "enrollment.ingest.validation",
        "PAYLOADS": "enrollment.contracts.spec",
        "QUARANTINE_SCHEMA": "enrollment.ingest.validation",
        "REASON_CODES": "enrollment.ingest.validation",
        "REGIONS": "enrollment.contracts.spec",
        "Rows": "enrollment.ingest.validation.trees",
        "SAFE_INTEGER": "enrollment.contracts.spec",
        "SCHEMA_TREE": "enrollment.ingest.validation.trees",
        "SCHEMA_VERSIONS": "enrollment.contracts.spec",
        "STRING": "enrollment.contracts.spec",
        "Tree": "enrollment.ingest.validation.trees",
        "VALID_COLUMNS": "enrollment.ingest.validation",
        "ValidationResult": "enrollment.ingest.validation",
        "all_fields": "enrollment.contracts.spec",
        "fields": "enrollment.contracts.spec",
        "nesting_depth": "enrollment.ingest.validation.screen",
        "validate_batch": "enrollment.ingest.validation",
        "validate_guarded": "enrollment.ingest.validation",
    },
    "enrollment.warehouse": {
        "DEFAULT_JOB_TIMEOUT_S": "enrollment.clients.bigquery",
        "EVENTS_ADDED_COLUMNS": "enrollment.warehouse.tables",
        "FOLLOWS": "enrollment.core.partners",
        "GateError": "enrollment.core.errors",
        "LEDGER_ADDED_COLUMNS": "enrollment.warehouse.tables",
        "LEDGER_SCHEMA": "enrollment.warehouse.tables",
        "Landed": "enrollment.core.batch",
        "PARTNER_COLUMNS": "enrollment.core.partners",
        "PARTNER_SCHEMA": "enrollment.core.partners",
        "Warehouse": "enrollment._moved:Warehouse",
        "WarehouseSettings": "enrollment.config",
        "Window": "enrollment.core.windows",
        "anomaly_rows": "enrollment.warehouse.ledger",
        "balances": "enrollment.warehouse.ledger",
        "cycle_freshness_gate": "enrollment.warehouse.gates",
        "event_ages": "enrollment.warehouse.gates",
        "freshness_gate": "enrollment.warehouse.gates",
        "landed_schema": "enrollment.clients.bigquery",
        "partner_changes": "enrollment.core.partners",
        "sql_timestamp": "enrollment.clients.bigquery",
    },
}
# Old modules imported whole (``from enrollment import cycle``): the module they became.
MODULES: dict[str, str] = {
    "enrollment.backlog": "enrollment.ingest.backlog",
    "enrollment.canary": "enrollment.ops.canary",
    "enrollment.cost": "enrollment.warehouse.cost",
    "enrollment.health": "enrollment.ops.health",
    "enrollment.housekeeping": "enrollment.ops.housekeeping",
    "enrollment.lag": "enrollment.ops.lag",
    "enrollment.marketing_cloud": "enrollment.clients.marketing_cloud",
    "enrollment.metrics": "enrollment.ops.metrics",
    "enrollment.partners": "enrollment.core.partners",
    "enrollment.pii": "enrollment.core.pii",
    "enrollment.reconciliation": "enrollment.ops.reconciliation",
    "enrollment.replay": "enrollment.ops.replay",
    "enrollment.services": "enrollment.clients.services",
    "enrollment.cycle": "enrollment.warehouse.cycle",
}


def resolve(old: str, name: str) -> Any:
    """``old``'s ``name`` from where it went, with a warning naming the new path."""
    target = MOVED.get(old, {}).get(name)
    if target is None:
        whole = MODULES.get(old)
        if whole is None or name.startswith("__"):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        target = whole
    module, _, new_name = target.partition(":")
    new_name = new_name or name
    said = f"{module}.{new_name}"
    if module == __name__:  # the one class that was split
        said = (
            "enrollment.clients.bigquery.BigQuery (its ledger: enrollment.warehouse.ledger.Ledger)"
        )
    warnings.warn(f"{old}.{name} moved to {said}", MovedWarning, stacklevel=3)
    if module == __name__:
        return _compat(new_name)
    return getattr(importlib.import_module(module), new_name)


def forward(old: str) -> Any:
    """A module ``__getattr__`` that resolves ``old``'s moved names."""

    def __getattr__(name: str) -> Any:
        if name not in MOVED.get(old, {}):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        return resolve(old, name)

    return __getattr__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname in MOVED or fullname in MODULES:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"Moved: see {MODULES.get(spec.name, 'enrollment')}.")
        old = spec.name

        def __getattr__(name: str) -> Any:
            return resolve(old, name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]  # PEP 562
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())


_built: dict[str, Any] = {}


def _compat(name: str) -> Any:
    """``Warehouse``: the BigQuery handle with the methods it had before the ledger, the tables
    and the one-batch cycle left it."""
    if name in _built:
        return _built[name]
    from enrollment.clients.bigquery import BigQuery
    from enrollment.warehouse import cycle, tables
    from enrollment.warehouse.ledger import Ledger

    class Warehouse(BigQuery):
        """Deprecated: ``enrollment.clients.bigquery.BigQuery``, ``warehouse.ledger.Ledger``,
        ``warehouse.tables`` and ``warehouse.cycle.merge_batch``."""

        def ensure_tables(self, events: Any, quarantine: Any) -> None:
            tables.ensure_tables(self, events, quarantine)

        def ensure_ledger(self, exists: bool | None = None) -> None:
            tables.ensure_ledger(self, exists)

        def merge_batch(self, landed: Any) -> dict[str, Any]:
            return cycle.merge_batch(self, landed)

        def __getattr__(self, name: str) -> Any:
            if name in ("record", "record_stage", "record_cycle", "warehoused", "balance"):
                return getattr(Ledger(self), name)
            raise AttributeError(name)

    _built[name] = Warehouse
    return Warehouse
