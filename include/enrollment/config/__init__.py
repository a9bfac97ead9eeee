"""The pipeline's configuration, typed: ``pipeline.yaml`` beside this file is the embedded one.

``ENROLLMENT_CONFIG`` points at another file of the same shape (a deployment's own). Every
section is parsed into the frozen dataclasses of ``sections``; a setting's default is its field's
default there (the one place), a collection's (``pools``, ``celery_workers``) the embedded
file's. Unknown keys are refused when the file loads, naming the key and the file (``parse``).
``python -m enrollment.config`` prints the configuration in force with every default filled in.

The region registry is ``regions:``: each region's code, topic, partitions and the countries it
sells in; every country needs market rules (``markets.LIBRARY`` or the file's ``markets:``), or
the configuration does not load.

This face is what callers import (``from enrollment.config import load_config, Region``)."""

from enrollment.config.markets import LIBRARY, Market, Markets
from enrollment.config.parse import (
    DEFAULT_CONFIG,
    as_file,
    load_config,
    markets_in_force,
    parse_config,
)
from enrollment.config.sections import (
    DEFAULT_MARKETING_CONSENT,
    DEFAULT_QUEUE,
    ERASURE_REASONS,
    MARKETING_CONSENT_RULES,
    MAX_BATCH_BYTES_LIMIT,
    MAX_BATCH_LIMIT,
    MAX_ERASURE_PARTNERS,
    POOLS_REQUIRED,
    WAREHOUSE_POOL,
    Alerts,
    Backlog,
    CanarySettings,
    CeleryWorker,
    ConfigError,
    Datasets,
    LagRules,
    MarketingConsent,
    PipelineConfig,
    Pool,
    ReconciliationSettings,
    Region,
    RetentionSettings,
    SinkSettings,
    SyncSettings,
    WarehouseSettings,
)

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_MARKETING_CONSENT",
    "DEFAULT_QUEUE",
    "ERASURE_REASONS",
    "LIBRARY",
    "MARKETING_CONSENT_RULES",
    "MAX_BATCH_BYTES_LIMIT",
    "MAX_BATCH_LIMIT",
    "MAX_ERASURE_PARTNERS",
    "POOLS_REQUIRED",
    "WAREHOUSE_POOL",
    "Alerts",
    "Backlog",
    "CanarySettings",
    "CeleryWorker",
    "ConfigError",
    "Datasets",
    "LagRules",
    "Market",
    "MarketingConsent",
    "Markets",
    "PipelineConfig",
    "Pool",
    "ReconciliationSettings",
    "Region",
    "RetentionSettings",
    "SinkSettings",
    "SyncSettings",
    "WarehouseSettings",
    "as_file",
    "load_config",
    "markets_in_force",
    "parse_config",
]
