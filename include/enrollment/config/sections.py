"""The configuration's sections as frozen dataclasses: a setting's default is its field's default
here, the one place. ``parse`` builds them from a file; nothing here reads one."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from enrollment.config.markets import Markets


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Backlog:
    """When a region's ingest wakes and how much one batch takes (``backlog:``; a region may
    override any of them in its own entry)."""

    min_records: int = 20_000  # this many records pending wake the region's ingest
    max_age_s: float = 10.0  # ... or the oldest pending one this old
    max_batch: int = 200_000  # offsets one batch claims at most
    # A batch stops reading here and shrinks to what it read (memory of one task).
    max_batch_bytes: int = 256 * 1024 * 1024
    land_timeout_s: float = 900.0  # the ingest task's execution_timeout
    # One ingest run lands batch after batch (a train) while another is worth it within
    # max_age_s, for at most train_s seconds or train_batches batches: the task's start-up is
    # paid once a train, and a new configuration or deployment reaches a region within train_s.
    train_s: float = 120.0
    train_batches: int = 40

    def __post_init__(self) -> None:
        if (
            min(self.min_records, self.max_batch, self.max_batch_bytes, self.train_batches) < 1
            or min(self.max_age_s, self.land_timeout_s, self.train_s) <= 0
        ):
            raise ConfigError(f"backlog settings must be positive, got {self}")
        if self.train_s >= self.land_timeout_s:
            raise ConfigError(
                f"backlog: train_s ({self.train_s:g}) must be shorter than land_timeout_s "
                f"({self.land_timeout_s:g}), which bounds the whole train"
            )


@dataclass(frozen=True)
class Region:
    """One SAP Commerce region, declared once in ``regions:``: everything that reads regions
    (contracts, simulator, ingest, lag monitor, reconciliation, canary, sinks) reads this."""

    code: str
    topic: str
    partitions: int
    countries: tuple[str, ...]  # where it sells (ISO 3166-1 alpha-2); each needs market rules
    consent_required: bool = False  # enrollments must record consents (GDPR and neighbours)
    partner_prefix: str = ""  # the first two letters of its partner ids; default: the code's
    share: float = 0.1  # its relative share of the events (the simulator's mix)
    min_records: int = Backlog.min_records
    max_age_s: float = Backlog.max_age_s
    max_batch: int = Backlog.max_batch
    max_batch_bytes: int = Backlog.max_batch_bytes
    land_timeout_s: float = Backlog.land_timeout_s
    train_s: float = Backlog.train_s
    train_batches: int = Backlog.train_batches

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Z0-9]{1,15}", self.code):
            raise ConfigError(f"regions: code {self.code!r} must be 2-16 capitals or digits")
        if not self.partner_prefix:
            object.__setattr__(self, "partner_prefix", self.code[:2])
        if not re.fullmatch(r"[A-Z]{2}", self.partner_prefix):
            raise ConfigError(f"regions: {self.code}: partner_prefix must be two capitals")
        if self.partitions < 1 or self.share <= 0:
            raise ConfigError(f"regions: {self.code}: partitions >= 1 and share > 0")
        if not self.countries:
            raise ConfigError(
                f"regions: {self.code} names no countries; add `countries: [..]` (the markets "
                "it sells in, each with market rules)"
            )


# Upper bounds of a manual run's parameters: one batch is held in one task's memory.
MAX_BATCH_LIMIT = 2_000_000


MAX_BATCH_BYTES_LIMIT = 1024 * 1024 * 1024


# The Airflow pool (1 slot) of every task that writes the warehouse tables (see ``pools:``).
WAREHOUSE_POOL = "warehouse_writer"


# Airflow's own queue (``[operators] default_queue``): what a task without a queue of ours goes to.
DEFAULT_QUEUE = "default"


# An erasure request (enrollment.ops.erasure): its legal grounds, and how many partners one run
# takes.
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
    # Wrap the cycle's writes in BEGIN/COMMIT TRANSACTION (BigQuery: yes; the emulator copies
    # every table it touches).
    transaction: bool = False
    # cron: a cycle runs this often even when no pending record wakes it (the pending trigger
    # wakes it for every batch landed or requeued, and again after 10 minutes for one left).
    catch_up_every: str = "*/5 * * * *"
    job_timeout_s: float = (
        600.0  # one BigQuery job awaited longer than this is cancelled (a hang, not work)
    )
    cycle_timeout_s: float = 1800.0  # the cycle task's execution_timeout
    # A batch that fails its gate in this many cycles is set aside (one alert), not retried for
    # ever: every later cycle would fail on it and page every minute.
    set_aside_after: int = 3

    def __post_init__(self) -> None:
        if self.set_aside_after < 1:
            raise ConfigError(f"warehouse: set_aside_after must be >= 1, got {self}")
        if self.max_cycle_rows < 1 or self.dedup_window_days < 0:
            raise ConfigError(
                f"warehouse: max_cycle_rows must be >= 1 and dedup_window_days >= 0, got {self}"
            )
        if self.job_timeout_s <= 0 or self.cycle_timeout_s < self.job_timeout_s:
            raise ConfigError(
                "warehouse: job_timeout_s must be > 0 and cycle_timeout_s >= job_timeout_s, "
                f"got {self}"
            )


@dataclass(frozen=True)
class RetentionSettings:
    """How long what is only transient is kept; applied by the ``housekeeping`` DAG (the emulators
    ignore bucket lifecycle rules and table expiration, so the pipeline does not rely on them)."""

    # Hand-over objects: a cycle's (what the sinks read; a sync that finds one gone reads the
    # warehouse) and a sync's (the partners it gave a sink: read in the same run only).
    handover_days: int = 2
    claims_days: int = 35  # claim records: reconciliation and replay find a day's batches by them
    staging_hours: int = (
        6  # staging tables a killed cycle, reconciliation or sync left (each drops its own)
    )
    at: str = "15 3 * * *"  # cron (UTC) of the housekeeping DAG

    def __post_init__(self) -> None:
        if self.handover_days < 1 or self.claims_days < 2 or self.staging_hours < 1:
            raise ConfigError(
                "retention: handover_days >= 1, claims_days >= 2 (a day is reconciled the day "
                f"after) and staging_hours >= 1, got {self}"
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
            raise ConfigError(
                f"pools: {self.name!r} needs a lower_snake_case name, slots >= 1 and a "
                f"description, got {self}"
            )

    def task_args(self) -> dict[str, Any]:
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
            raise ConfigError(
                f"celery_workers: {self.name!r} needs a lower-case name, at least one queue and "
                f"concurrency >= 1, got {self}"
            )


# The pools every deployment has, whatever its configuration says (their tasks name them).
POOLS_REQUIRED = ("ingest", "sinks", "monitors", "maintenance", WAREHOUSE_POOL)


# Who may receive marketing e-mail, per region: ``opt_in`` (only a partner whose consent is true)
# or ``opt_out`` (anyone whose consent is not false: never stated counts as not objected).
MARKETING_CONSENT_RULES = ("opt_in", "opt_out")


DEFAULT_MARKETING_CONSENT = "opt_out"  # the one default: a region the configuration does not name


@dataclass(frozen=True)
class MarketingConsent:
    """The marketing-consent rule of each region. Regions whose contract requires a recorded
    consent (``consent_required: true`` in ``regions:``) are ``opt_in`` whatever is configured;
    the others follow
    the configuration (``regions``, else ``default``)."""

    default: str = DEFAULT_MARKETING_CONSENT
    regions: dict[str, str] = field(default_factory=dict)  # region code -> rule
    required: tuple[str, ...] = ()  # regions whose contract requires consent: always opt_in

    def __post_init__(self) -> None:
        for where, rule in [("default", self.default), *self.regions.items()]:
            if rule not in MARKETING_CONSENT_RULES:
                raise ConfigError(
                    f"marketing_consent: {where} is {rule!r}; known rules: "
                    f"{', '.join(MARKETING_CONSENT_RULES)}"
                )
        forced = sorted(
            r for r in self.regions if r in self.required and self.regions[r] != "opt_in"
        )
        if forced:
            raise ConfigError(
                f"marketing_consent: {forced} must be opt_in: the contract requires a recorded "
                "consent there (consent_required)"
            )

    def rule(self, region: str | None) -> str:
        code = (region or "").upper()
        return "opt_in" if code in self.required else self.regions.get(code, self.default)

    def contactable(self, region: str | None, consent: bool | None) -> bool:
        """May marketing reach this partner: opt_in wants consent true, opt_out anything but
        false."""
        return consent is True if self.rule(region) == "opt_in" else consent is not False


@dataclass(frozen=True)
class Datasets:
    warehouse: str  # event history, current state, quarantine
    ops: str  # ledger, health, metrics


@dataclass(frozen=True)
class SyncSettings:
    """Each sink's sync (``sync:``): batches per region and run, the catch-up cron, and how far
    back a sync looks for warehoused batches without the sink's ledger row."""

    max_batches: int = 20
    catch_up_every: str = "*/5 * * * *"
    lookback_days: int = 7
    # A sync run plans, writes, gates and commits again while batches wait, for at most train_s
    # seconds (a train, as the ingest's): one task's start-up for many rounds. 0: one round.
    train_s: float = 120.0
    # When nothing waits, the train waits up to linger_s for the warehouse's next cycle (a cycle
    # marks each commit in the landing bucket; a look every poll_s costs a metadata read), so the
    # next cycle's batches ride this train rather than a new task. 0: the train ends at once.
    linger_s: float = 30.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if (
            self.max_batches < 1
            or self.lookback_days < 1
            or min(self.train_s, self.linger_s) < 0
            or self.poll_s <= 0
        ):
            raise ConfigError(
                "sync: max_batches and lookback_days must be >= 1, train_s and linger_s >= 0, "
                f"poll_s > 0, got {self}"
            )


@dataclass(frozen=True)
class LagRules:
    """The lag monitor's alert rules (``lag:``): pending records growing at each of the last
    ``grow_minutes`` measurements, a pending record older than ``max_age_s``, a sink more than
    ``max_sink_batches`` behind, or its oldest warehoused batch not synced older than
    ``sink_late_s`` (late) or ``sink_broken_s`` (broken)."""

    grow_minutes: int = 5
    max_age_s: float = 300.0
    max_sink_batches: int = 30
    sink_late_s: float = 3600.0
    sink_broken_s: float = 86400.0

    def __post_init__(self) -> None:
        if (
            self.grow_minutes < 1
            or self.max_age_s <= 0
            or self.max_sink_batches < 1
            or not 0 < self.sink_late_s <= self.sink_broken_s
        ):
            raise ConfigError(
                f"lag: every rule must be positive and sink_late_s <= sink_broken_s, got {self}"
            )


@dataclass(frozen=True)
class CanarySettings:
    """The canary (``canary:``): one enrollment per region every ``every`` (cron, UTC), traced
    every ``poke_s`` until visible everywhere; the run fails after ``within_s``."""

    every: str = "*/15 * * * *"
    within_s: float = 120.0  # the goal: visible everywhere within two minutes
    poke_s: float = 15.0

    def __post_init__(self) -> None:
        if self.within_s <= 0 or not 0 < self.poke_s <= self.within_s:
            raise ConfigError(f"canary: 0 < poke_s <= within_s, got {self}")


@dataclass(frozen=True)
class ReconciliationSettings:
    """The daily reconciliation (``reconciliation:``): its cron (UTC) and the first day a
    catch-up covers (ISO date)."""

    at: str = "30 0 * * *"
    start_date: str = "2026-11-20"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.start_date):
            raise ConfigError(f"reconciliation: start_date must be YYYY-MM-DD, got {self}")


@dataclass(frozen=True)
class Alerts:
    """Where failures go besides the task log (``alerts:``): ``on_failure`` is "module:function",
    called with the curated alert payload (docs/configuration.md, "Alerts"); empty: the log only."""

    on_failure: str = ""

    def __post_init__(self) -> None:
        if self.on_failure and not re.fullmatch(r"[\w.]+:\w+", self.on_failure):
            raise ConfigError(
                f"alerts: on_failure must be 'module:function', got {self.on_failure!r}"
            )


@dataclass(frozen=True)
class SinkSettings(Mapping[str, Any]):
    """One sink (``sinks:``): the module with its ``build(options, endpoints)``, the services its
    tasks check first (``needs``), and the sink's own options (its module reads them). It reads
    as the mapping of its entry, which is what ``build_sink`` hands the module."""

    name: str
    module: str
    needs: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name) or not self.module:
            raise ConfigError(
                f"sinks: {self.name!r}: names are lower_snake_case (they become DAG ids) and "
                "each entry needs a 'module'"
            )

    def _entry(self) -> dict[str, Any]:
        return {"module": self.module, "needs": list(self.needs), **self.options}

    def __getitem__(self, key: str) -> Any:
        return self._entry()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry())

    def __len__(self) -> int:
        return len(self._entry())


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
    markets: Markets  # the regions' countries and their market rules (the contracts read it)
    sinks: dict[str, SinkSettings] = field(default_factory=dict)
    sync_max_batches: int = SyncSettings.max_batches
    sync_catch_up_every: str = SyncSettings.catch_up_every
    freshness_sla_s: float = 60.0  # the goal: queryable within a minute
    lag: LagRules = field(default_factory=LagRules)
    alert_callback: str = Alerts.on_failure  # "module:function" (alerts.on_failure)
    canary: CanarySettings = field(default_factory=CanarySettings)
    reconciliation: ReconciliationSettings = field(default_factory=ReconciliationSettings)
    warehouse: WarehouseSettings = field(default_factory=WarehouseSettings)
    sync_lookback_days: int = SyncSettings.lookback_days
    sync_train_s: float = SyncSettings.train_s
    sync_linger_s: float = SyncSettings.linger_s
    sync_poll_s: float = SyncSettings.poll_s
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    marketing_consent: MarketingConsent = field(default_factory=MarketingConsent)
    # The parser fills it: the embedded file's pools when a file names none.
    pools: dict[str, Pool] = field(default_factory=dict)
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
