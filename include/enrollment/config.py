"""The pipeline's configuration: embedded defaults in ``config/pipeline.yaml``.

``ENROLLMENT_CONFIG`` points at another file of the same shape (a deployment's own)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).parent / "config" / "pipeline.yaml"


@dataclass(frozen=True)
class Region:
    code: str
    topic: str
    partitions: int
    min_records: int = 20_000
    max_age_s: float = 10.0
    max_batch: int = 200_000
    max_batch_bytes: int = (
        256 * 1024 * 1024
    )  # a batch stops reading here and shrinks to what it read (memory of one task)
    land_timeout_s: float = 900.0  # the ingest task's execution_timeout


# Upper bounds of a manual run's parameters: one batch is held in one task's memory.
MAX_BATCH_LIMIT = 2_000_000
MAX_BATCH_BYTES_LIMIT = 1024 * 1024 * 1024

# The Airflow pool (1 slot) of every task that writes the warehouse tables (described in ``pools:``).
WAREHOUSE_POOL = "warehouse_writer"
# Airflow's own queue (``[operators] default_queue``): what a task without a queue of ours goes to.
DEFAULT_QUEUE = "default"
# An erasure request (enrollment.erasure): its legal grounds, and how many partners one run takes.
ERASURE_REASONS = ("gdpr_art17", "lgpd_art18", "ccpa_deletion", "pipa_art36", "other")
MAX_ERASURE_PARTNERS = 100


@dataclass(frozen=True)
class WarehouseSettings:
    """The one warehouse writer (``warehouse`` DAG): how much one cycle takes and how it writes."""

    max_cycle_rows: int = (
        1_000_000  # offsets of landed batches one cycle takes, oldest first (at least one batch)
    )
    dedup_window_days: int = (
        1  # resent event ids are removed against this many days of arrivals before the cycle's
    )
    transaction: bool = False  # wrap the cycle's writes in BEGIN/COMMIT TRANSACTION (BigQuery: yes; the emulator copies every table)
    catch_up_every: str = (
        "* * * * *"  # cron: a cycle runs this often even when no landed asset wakes it
    )
    job_timeout_s: float = (
        600.0  # one BigQuery job awaited longer than this is cancelled (a hang, not work)
    )
    cycle_timeout_s: float = 1800.0  # the cycle task's execution_timeout

    def __post_init__(self) -> None:
        if self.max_cycle_rows < 1 or self.dedup_window_days < 0:
            raise ValueError(
                f"warehouse: max_cycle_rows must be >= 1 and dedup_window_days >= 0, got {self}"
            )
        if self.job_timeout_s <= 0 or self.cycle_timeout_s < self.job_timeout_s:
            raise ValueError(
                f"warehouse: job_timeout_s must be > 0 and cycle_timeout_s >= job_timeout_s, got {self}"
            )


@dataclass(frozen=True)
class RetentionSettings:
    """How long what is only transient is kept; applied by the ``housekeeping`` DAG (the emulators
    ignore bucket lifecycle rules and table expiration, so the pipeline does not rely on them)."""

    handover_days: int = (
        2  # a sync's hand-over object (the partners it gave a sink): read in the same run only
    )
    claims_days: int = 35  # claim records: reconciliation and replay find a day's batches by them
    staging_hours: int = (
        6  # staging tables a killed cycle, reconciliation or sync left (each drops its own)
    )
    at: str = "15 3 * * *"  # cron (UTC) of the housekeeping DAG

    def __post_init__(self) -> None:
        if self.handover_days < 1 or self.claims_days < 2 or self.staging_hours < 1:
            raise ValueError(
                f"retention: handover_days >= 1, claims_days >= 2 (a day is reconciled the day after) and staging_hours >= 1, got {self}"
            )


@dataclass(frozen=True)
class Pool:
    """An Airflow pool of the pipeline (``pools:``): how many of its tasks run at once, their
    priority when slots are scarce (higher first, absolute: a task's weight is its own, not the sum
    of what follows it) and the Celery queue they go to (LocalExecutor ignores queues)."""

    name: str
    slots: int
    description: str
    priority: int = 1
    queue: str = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        if (
            not re.fullmatch(r"[a-z][a-z0-9_]*", self.name)
            or self.slots < 1
            or not self.description.strip()
        ):
            raise ValueError(
                f"pools: {self.name!r} needs a lower_snake_case name, slots >= 1 and a description, got {self}"
            )

    def task_args(self) -> dict:
        """What a DAG's ``default_args`` carry so that its tasks run in this pool."""
        return {
            "pool": self.name,
            "priority_weight": self.priority,
            "weight_rule": "absolute",
            "queue": self.queue,
        }


@dataclass(frozen=True)
class CeleryWorker:
    """One Celery worker of the local stack (``celery_workers:``, STACK_EXECUTOR=celery): a process
    of its own, the queues it takes tasks from, and how many tasks it runs at once."""

    name: str
    queues: tuple[str, ...]
    concurrency: int

    def __post_init__(self) -> None:
        if (
            not re.fullmatch(r"[a-z][a-z0-9-]*", self.name)
            or not self.queues
            or self.concurrency < 1
        ):
            raise ValueError(
                f"celery_workers: {self.name!r} needs a lower-case name, at least one queue and concurrency >= 1, got {self}"
            )


# The pools every deployment has, whatever its configuration says (their tasks name them).
POOLS_REQUIRED = ("ingest", "sinks", "monitors", "maintenance", WAREHOUSE_POOL)


@lru_cache(maxsize=1)
def _embedded_raw() -> dict:
    with open(DEFAULT_CONFIG, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _embedded(section: str):
    """A section of the embedded ``pipeline.yaml``: what a configuration without it gets (read once)."""
    return _embedded_raw()[section]


def _pools(raw: dict | None) -> dict[str, Pool]:
    if raw is None:
        raw = _embedded("pools")
    known = set(Pool.__dataclass_fields__) - {"name"}
    pools = {}
    for name, options in (raw or {}).items():
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise ValueError(f"pools: {name}: unknown setting(s) {unknown}; known: {sorted(known)}")
        pools[name] = Pool(name=name, **(options or {}))
    missing = [p for p in POOLS_REQUIRED if p not in pools]
    if missing:
        raise ValueError(
            f"pools: {missing} missing; the pipeline's tasks run in {list(POOLS_REQUIRED)}"
        )
    if pools[WAREHOUSE_POOL].slots != 1:
        raise ValueError(
            f"pools: {WAREHOUSE_POOL} has exactly 1 slot (one writer of the warehouse tables)"
        )
    return pools


def _celery_workers(raw: list | None, pools: dict[str, Pool]) -> tuple[CeleryWorker, ...]:
    if raw is None:
        raw = _embedded("celery_workers")
    workers = tuple(
        CeleryWorker(name=w["name"], queues=tuple(w["queues"]), concurrency=int(w["concurrency"]))
        for w in raw or ()
    )
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise ValueError(f"celery_workers: names must be unique, got {names}")
    served = {q for w in workers for q in w.queues}
    unserved = sorted({p.queue for p in pools.values()} - served)
    if workers and unserved:
        raise ValueError(
            f"celery_workers: no worker takes the queue(s) {unserved} that pools send tasks to"
        )
    return workers


# Who may receive marketing e-mail, per region: ``opt_in`` (only a partner whose consent is true)
# or ``opt_out`` (anyone whose consent is not false: never stated counts as not objected).
MARKETING_CONSENT_RULES = ("opt_in", "opt_out")
DEFAULT_MARKETING_CONSENT = "opt_out"  # the one default: a region the configuration does not name


@dataclass(frozen=True)
class MarketingConsent:
    """The marketing-consent rule of each region. Regions whose contract requires a recorded
    consent (``markets.CONSENT_REGIONS``) are ``opt_in`` whatever is configured; the others follow
    the configuration (``regions``, else ``default``)."""

    default: str = DEFAULT_MARKETING_CONSENT
    regions: dict = field(default_factory=dict)  # region code -> rule

    def __post_init__(self) -> None:
        from .contracts.markets import CONSENT_REGIONS

        for where, rule in [("default", self.default), *self.regions.items()]:
            if rule not in MARKETING_CONSENT_RULES:
                raise ValueError(
                    f"marketing_consent: {where} is {rule!r}; known rules: {', '.join(MARKETING_CONSENT_RULES)}"
                )
        forced = sorted(
            r for r in self.regions if r in CONSENT_REGIONS and self.regions[r] != "opt_in"
        )
        if forced:
            raise ValueError(
                f"marketing_consent: {forced} must be opt_in: the contract requires a recorded consent there (markets.CONSENT_REGIONS)"
            )

    def rule(self, region: str | None) -> str:
        from .contracts.markets import CONSENT_REGIONS

        code = (region or "").upper()
        return "opt_in" if code in CONSENT_REGIONS else self.regions.get(code, self.default)

    def contactable(self, region: str | None, consent: bool | None) -> bool:
        """May marketing reach this partner: opt_in wants consent true, opt_out anything but false."""
        return consent is True if self.rule(region) == "opt_in" else consent is not False


def _marketing_consent(raw, region_codes: list[str]) -> MarketingConsent:
    if raw is None:
        return MarketingConsent()
    if not isinstance(raw, dict) or set(raw) - {"default", "regions"}:
        raise ValueError(
            f"marketing_consent: expected {{default: <rule>, regions: {{<REGION>: <rule>}}}}, got {raw!r}"
        )
    regions = {str(k).upper(): v for k, v in (raw.get("regions") or {}).items()}
    unknown = sorted(set(regions) - set(region_codes))
    if unknown:
        raise ValueError(
            f"marketing_consent: unknown region(s) {unknown}; configured regions: {', '.join(region_codes)}"
        )
    return MarketingConsent(default=raw.get("default", DEFAULT_MARKETING_CONSENT), regions=regions)


@dataclass(frozen=True)
class PipelineConfig:
    project: str
    consumer_group: str
    landing_bucket: str
    warehouse_dataset: str
    ops_dataset: str
    solr_core: str
    marketing_cloud_data_extension: str
    regions: tuple[Region, ...]
    sinks: dict = field(default_factory=dict)  # name -> options (``module`` + the sink's own)
    sync_max_batches: int = 20
    sync_catch_up_every: str = "*/5 * * * *"
    freshness_sla_s: float = 300.0
    lag: dict = field(
        default_factory=dict
    )  # the lag monitor's alert rules (enrollment.lag.LagRules)
    alert_callback: str = (
        ""  # "module:function" called with the Airflow context when a monitor alerts
    )
    canary: dict = field(default_factory=dict)  # every (cron), within_s (the target), poke_s
    reconciliation: dict = field(
        default_factory=dict
    )  # at (cron, UTC), start_date (the first day a backfill covers)
    warehouse: WarehouseSettings = field(default_factory=lambda: WarehouseSettings())
    sync_lookback_days: int = 7
    retention: RetentionSettings = field(default_factory=lambda: RetentionSettings())
    marketing_consent: MarketingConsent = field(default_factory=lambda: MarketingConsent())
    pools: dict[str, Pool] = field(default_factory=lambda: _pools(None))
    celery_workers: tuple[CeleryWorker, ...] = ()

    def carrier_dags(self, sinks: bool = True, regions: list[str] | None = None) -> list[str]:
        """The DAG ids that carry events: each region's ingest, the warehouse writer, and (with
        ``sinks``) every sink's sync — what a demo or a benchmark unpauses."""
        codes = [r.code for r in self.regions if regions is None or r.code in regions]
        return (
            [f"ingest_{c.lower()}" for c in codes]
            + ["warehouse"]
            + ([f"sync_{name}" for name in self.sinks] if sinks else [])
        )

    def region(self, code: str) -> Region:
        for region in self.regions:
            if region.code == code.upper():
                return region
        known = ", ".join(r.code for r in self.regions)
        raise KeyError(f"unknown region {code!r}; configured regions: {known}")


def parse_config(raw: dict) -> PipelineConfig:
    backlog = raw.get("backlog", {})
    regions = tuple(
        Region(
            code=r["code"].upper(),
            topic=r["topic"],
            partitions=int(r["partitions"]),
            min_records=int(r.get("min_records", backlog.get("min_records", 20_000))),
            max_age_s=float(r.get("max_age_s", backlog.get("max_age_s", 10.0))),
            max_batch=int(r.get("max_batch", backlog.get("max_batch", 200_000))),
            max_batch_bytes=int(
                r.get("max_batch_bytes", backlog.get("max_batch_bytes", Region.max_batch_bytes))
            ),
            land_timeout_s=float(
                r.get("land_timeout_s", backlog.get("land_timeout_s", Region.land_timeout_s))
            ),
        )
        for r in raw["regions"]
    )
    codes = [r.code for r in regions]
    if len(set(codes)) != len(codes):
        raise ValueError(f"region codes must be unique, got {codes}")
    for name, options in (raw.get("sinks") or {}).items():
        if (
            not re.fullmatch(r"[a-z][a-z0-9_]*", name)
            or not isinstance(options, dict)
            or not options.get("module")
        ):
            raise ValueError(
                f"sink {name!r}: names are lower_snake_case (they become DAG ids) and each entry needs a 'module'"
            )
    return PipelineConfig(
        project=raw["project"],
        consumer_group=raw["consumer_group"],
        landing_bucket=raw["landing_bucket"],
        warehouse_dataset=raw["datasets"]["warehouse"],
        ops_dataset=raw["datasets"]["ops"],
        solr_core=raw["solr_core"],
        marketing_cloud_data_extension=raw["marketing_cloud"]["data_extension"],
        regions=regions,
        sinks={name: dict(options) for name, options in (raw.get("sinks") or {}).items()},
        sync_max_batches=int(raw.get("sync", {}).get("max_batches", 20)),
        sync_catch_up_every=str(raw.get("sync", {}).get("catch_up_every", "*/5 * * * *")),
        freshness_sla_s=float(raw.get("freshness_sla_s", 300)),
        lag=dict(raw.get("lag") or {}),
        alert_callback=str((raw.get("alerts") or {}).get("on_failure", "")),
        canary={
            "every": "*/15 * * * *",
            "within_s": float(raw.get("freshness_sla_s", 300)),
            "poke_s": 15,
        }
        | dict(raw.get("canary") or {}),
        reconciliation={"at": "30 0 * * *", "start_date": "2026-11-01"}
        | dict(raw.get("reconciliation") or {}),
        warehouse=_warehouse_settings(raw.get("warehouse") or {}),
        sync_lookback_days=int(raw.get("sync", {}).get("lookback_days", 7)),
        retention=_retention_settings(raw.get("retention") or {}),
        marketing_consent=_marketing_consent(raw.get("marketing_consent"), codes),
        pools=(pools := _pools(raw.get("pools"))),
        celery_workers=_celery_workers(raw.get("celery_workers"), pools),
    )


def _retention_settings(raw: dict) -> RetentionSettings:
    unknown = sorted(set(raw) - set(RetentionSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"retention: unknown settings {unknown}; known: {sorted(RetentionSettings.__dataclass_fields__)}"
        )
    return RetentionSettings(**raw)


def _warehouse_settings(raw: dict) -> WarehouseSettings:
    known = set(WarehouseSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"warehouse: unknown setting(s) {unknown}; known: {sorted(known)}")
    return WarehouseSettings(**raw)


@lru_cache(maxsize=4)
def _load(path: str) -> PipelineConfig:
    with open(path, encoding="utf-8") as fh:
        return parse_config(yaml.safe_load(fh))


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    return _load(str(path or os.environ.get("ENROLLMENT_CONFIG") or DEFAULT_CONFIG))
