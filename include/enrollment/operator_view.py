"""What the operator's page shows, read from where the pipeline records it: plain dicts, ready for
JSON, one function per section. No Airflow here (the plugin adds the DAG runs it can see).

Every figure says where it came from (``source``: ``<dataset>.<table>`` or ``kafka``), so the page
links it. A table that does not exist yet (a fresh stack) reads as empty; a section whose service
does not answer says so in ``error`` and stays empty — the page never fails as a whole.

Queries are written for BigQuery's bill: constant partition filters (literal timestamps computed
here, so the planner prunes), aggregated in SQL, ``LIMIT`` on every list, named columns only.
Nothing returned holds a personal value: quarantined messages are masked again on read
(``pii.mask_raw``: rows written before masking existed), partner ids are masked everywhere
(``mask_partner_ids``), free texts (ledger and health details) scrubbed the same way.

Status words (``classify``): **broken** — a stage failed (a failed run, a ledger row not ok or not
balancing, a batch set aside, a service check not ok); **late** — only a measurement of lateness
(the freshness gate, the lag monitor's age or growth rules); **ok** otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from .config import PipelineConfig
from .pii import TAX_ID_SHAPED, mask_keys, mask_raw
from .warehouse import sql_timestamp as ts

if TYPE_CHECKING:
    from .warehouse import QueryParameter, Warehouse

log = logging.getLogger(__name__)

BROKEN, LATE, OK = "broken", "late", "ok"
STALE = "stale"  # a measurement too old to say anything (shown grey, never counted as broken)
HEALTH_STALE_S = 15 * 60  # environment_health runs every 5 minutes: three missed runs
LEDGER_LOOKBACK_DAYS = 7  # the batches shown and the sinks' backlog: the sync plans' lookback
BATCHES_SHOWN = 10
EXAMPLES_PER_REASON = 3
EXAMPLE_REASONS = (
    12  # examples of the most frequent reasons only (a window can hold a hundred field-level codes)
)
# Of a quarantined message shown (cut before masking: the lexer masks a value cut short too).
EXAMPLE_BYTES = 2048
MAX_WINDOW_HOURS = 24 * 31
QUERY_TIMEOUT_S = 30.0
# A partner (or sponsor) id: two letters of the region and ten of the id (enrollment.simulator); a
# word of that shape anywhere in a text is masked, whatever key it came under.
PARTNER_ID = re.compile(r"\b([A-Z]{2})[0-9A-Z]{10}\b")
# Shown to every viewer of the page, so beyond what quarantine masks (tax ids, birth dates,
# emails, phones): names and the whole address too, by shape.
PAGE_MASKED_KEYS = frozenset(
    {
        "firstname",
        "lastname",
        "name",
        "fullname",
        "address",
        "line1",
        "line2",
        "street",
        "postalcode",
        "zip",
        "city",
    }
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
EMAIL = re.compile(r"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+\.[A-Za-z]{2,}")


class RegionBacklog(TypedDict):
    """One region's Kafka backlog as the page shows it (``kafka_backlog``)."""

    pending: int
    oldest_pending_age_s: float | None
    partitions: int


# -- pure helpers (unit tested) -------------------------------------------------------------------
def classify(broken: Sequence[str] = (), late: Sequence[str] = ()) -> dict[str, Any]:
    """A status and why: broken wins over late; each list holds the reasons found."""
    status = BROKEN if broken else LATE if late else OK
    return {"status": status, "why": list(broken) + list(late)}


def mask_partner_id(value: str | None) -> str | None:
    """``AB1234567890`` → ``AB••••••••••``: the region prefix stays (it says where), the id does
    not."""
    if not value:
        return value
    return value[:2] + "•" * max(0, len(value) - 2)


def mask_partner_ids(text: str) -> str:
    return PARTNER_ID.sub(lambda m: m.group(1) + "•" * 10, text)


def scrub(text: str | None, limit: int = 300) -> str | None:
    """A free text (a ledger detail, a failure message) fit to show: emails, partner ids and
    tax-id-shaped digit runs masked, cut to ``limit`` characters."""
    if text is None:
        return None
    text = EMAIL.sub(lambda m: re.sub(r"[A-Za-z0-9]", "x", m.group()), str(text))
    text = TAX_ID_SHAPED.sub(lambda m: re.sub(r"\d", "#", m.group()), text)
    text = mask_partner_ids(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def masked_example(raw: bytes | None) -> str | None:
    """A quarantined message as the page shows it: masked again (``pii.mask_raw``), partner ids
    masked, decoded leniently (a refused message may not be UTF-8)."""
    if raw is None:
        return None
    masked = mask_raw(bytes(raw))
    assert masked is not None  # bytes in, bytes out
    text = masked.decode("utf-8", "replace")
    text = mask_keys(text, PAGE_MASKED_KEYS)
    return _CONTROL.sub("\ufffd", mask_partner_ids(text))


def check_status(service: str, ok: bool, checked_at: datetime, now: datetime) -> dict[str, Any]:
    """An environment check's status: its verdict while it is recent; **stale** once the checks
    stopped (``HEALTH_STALE_S``) — a failure from an hour ago says nothing about the service now."""
    age = (
        now - (checked_at if checked_at.tzinfo else checked_at.replace(tzinfo=UTC))
    ).total_seconds()
    if age > HEALTH_STALE_S:
        return {
            "status": STALE,
            "why": [
                f"{service}: last checked {age / 60:.0f} min ago (environment_health not running?)"
            ],
        }
    return classify([] if ok else [f"{service}: check failed"])


def minute_series(
    rows: Sequence[dict[str, Any]], now: datetime, minutes: int = 60
) -> list[dict[str, Any]]:
    """``rows`` ({"minute": datetime, "events": n}) on a dense series of the last ``minutes``
    minutes ending with ``now``'s (missing minutes are 0: a chart shows a stall as a gap to
    zero)."""
    end = now.replace(second=0, microsecond=0)
    by_minute: defaultdict[datetime, int] = defaultdict(int)
    for r in rows:
        m = r["minute"]
        if m.tzinfo is None:
            m = m.replace(tzinfo=UTC)
        by_minute[m.replace(second=0, microsecond=0)] += int(r["events"] or 0)
    return [
        {
            "minute": (end - timedelta(minutes=i)).isoformat(),
            "events": by_minute.get(end - timedelta(minutes=i), 0),
        }
        for i in range(minutes - 1, -1, -1)
    ]


def window_bounds(window_hours: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[since, until) of a window ending now, at most 31 days; whole seconds (literal in SQL)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    hours = min(max(float(window_hours), 1 / 60), MAX_WINDOW_HOURS)
    return now - timedelta(hours=hours), now + timedelta(seconds=1)


def balance(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row's balance: offsets_in = valid + quarantined + duplicates + skipped +
    recovered."""
    parts = {
        k: int(row.get(k) or 0)
        for k in ("valid", "quarantined", "duplicates", "skipped", "recovered")
    }
    offsets = int(row.get("offsets_in") or 0)
    return {"offsets_in": offsets, **parts, "balanced": offsets == sum(parts.values())}


def parse_seen(seen: str | None) -> dict[str, float]:
    """The canary's ``seen`` column (``bigquery:1.2s,firestore:3s``) as destination → seconds."""
    out = {}
    for part in (seen or "").split(","):
        name, _, secs = part.partition(":")
        try:
            out[name.strip()] = float(secs.strip().rstrip("s"))
        except ValueError:
            continue
    return out


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


# -- reading ---------------------------------------------------------------------------------------
class Reader:
    """The warehouse as the page reads it: which tables exist (one listing per dataset per
    reader), queries that read nothing when their table is missing."""

    def __init__(self, warehouse: Warehouse, config: PipelineConfig) -> None:
        self.w, self.config = warehouse, config
        self._have: dict[str, set[str]] = {}

    def source(self, name: str, ops: bool = True) -> str:
        return f"{self.config.ops_dataset if ops else self.config.warehouse_dataset}.{name}"

    def exists(self, name: str, ops: bool = True) -> bool:
        from google.api_core.exceptions import NotFound

        dataset = self.config.ops_dataset if ops else self.config.warehouse_dataset
        if dataset not in self._have:
            try:
                self._have[dataset] = {
                    t.table_id for t in self.w.client.list_tables(f"{self.w.project}.{dataset}")
                }
            except NotFound:
                self._have[dataset] = set()
        return name in self._have[dataset]

    def columns(self, name: str, ops: bool = True) -> set[str]:
        table = self.w.table(name, ops=ops).strip("`")
        return {f.name for f in self.w.client.get_table(table).schema}

    def run(self, sql: str, params: Sequence[QueryParameter] | None = None) -> list[dict[str, Any]]:
        """A read, given up after ``QUERY_TIMEOUT_S`` (a page waits seconds, not the writers'
        minutes)."""
        from google.cloud import bigquery

        job = self.w.client.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params or [])
        )
        try:
            return [dict(r) for r in job.result(timeout=QUERY_TIMEOUT_S)]
        except TimeoutError:
            job.cancel()
            raise

    def ledger_has_recovered(self) -> bool:
        """Ledgers from before recovery have no ``recovered`` column (read as 0). The emulator does
        not always list added columns: a probe query decides when the schema says no."""
        if "recovered" in self.columns("ledger"):
            return True
        try:
            self.run(f"SELECT recovered FROM {self.w.table('ledger', ops=True)} WHERE FALSE")
            return True
        except Exception:
            return False


def _section(
    source: str, body: Callable[[], dict[str, Any]], empty: dict[str, Any]
) -> dict[str, Any]:
    """Runs one section; a failure (a service down, a table half made) is an empty section with
    the error's kind, never an exception to the page."""
    t0 = time.monotonic()
    try:
        out = body()
        error: str | None = None
    except Exception as exc:
        log.warning(
            "operator view: %s unavailable: %s", source, scrub(f"{type(exc).__name__}: {exc}")
        )
        out, error = empty, scrub(f"{type(exc).__name__}: {exc}", 200)
    return {"source": source, "error": error, "seconds": round(time.monotonic() - t0, 3), **out}


# -- regions ---------------------------------------------------------------------------------------
def kafka_backlog(
    bootstrap: str, config: PipelineConfig, now: float | None = None
) -> dict[str, Any]:
    """Per region: records the consumer group has not landed yet and the oldest one's age (from
    Kafka: committed offsets, end offsets, the first pending record's timestamp)."""
    from .lag import kafka_lag

    def body() -> dict[str, Any]:
        out: dict[str, RegionBacklog] = {
            r.code: {"pending": 0, "oldest_pending_age_s": None, "partitions": 0}
            for r in config.regions
        }
        for row in kafka_lag(bootstrap, config, now):
            region = out[row.region]
            region["pending"] += row.pending
            region["partitions"] += 1
            if row.oldest_age_s is not None and row.pending:
                region["oldest_pending_age_s"] = max(
                    region["oldest_pending_age_s"] or 0.0, round(row.oldest_age_s, 1)
                )
        return {"regions": out}

    return _section("kafka", body, {"regions": {}})


def ledger_batches(
    reader: Reader, regions: list[str], per_region: int = BATCHES_SHOWN, now: datetime | None = None
) -> dict[str, Any]:
    """The last ``per_region`` batches of each region (by when the ledger first recorded them, last
    ``LEDGER_LOOKBACK_DAYS`` days), each with every stage's row and its balance."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        if not reader.exists("ledger"):
            return {"regions": {r: [] for r in regions}}
        from google.cloud import bigquery

        since = ts(now - timedelta(days=LEDGER_LOOKBACK_DAYS))
        recovered = "COALESCE(L.recovered, 0)" if reader.ledger_has_recovered() else "0"
        table = reader.w.table("ledger", ops=True)
        rows = reader.run(
            f"""WITH B AS (
                SELECT region, batch_id, MIN(recorded_at) AS first_at FROM {table}
                WHERE recorded_at >= {since} AND region IN UNNEST(@regions) """
            """GROUP BY region, batch_id
                QUALIFY ROW_NUMBER() OVER (PARTITION BY region """
            """ORDER BY first_at DESC, batch_id DESC) <= @n)
            SELECT L.region, L.batch_id, L.stage, L.offsets_in, L.valid, L.quarantined, """
            f"""L.duplicates, COALESCE(L.skipped, 0) AS skipped,
                   {recovered} AS recovered, L.ok, L.detail, L.recorded_at, B.first_at
            FROM {table} L JOIN B ON B.region = L.region AND B.batch_id = L.batch_id
            WHERE L.recorded_at >= {since}
            ORDER BY B.first_at DESC, L.batch_id, L.recorded_at """
            f"LIMIT {len(regions) * per_region * 20}",
            [
                bigquery.ArrayQueryParameter("regions", "STRING", regions),
                bigquery.ScalarQueryParameter("n", "INT64", per_region),
            ],
        )
        out: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in regions}
        for r in rows:
            batch = out[r["region"]].setdefault(
                r["batch_id"],
                {"batch_id": r["batch_id"], "first_recorded_at": _iso(r["first_at"]), "stages": {}},
            )
            batch["stages"][r["stage"]] = {
                **balance(r),
                "ok": bool(r["ok"]),
                "detail": scrub(r["detail"]),
                "recorded_at": _iso(r["recorded_at"]),
            }
        for batches in out.values():
            for b in batches.values():
                main = (
                    b["stages"].get("recovered")
                    or b["stages"].get("warehouse")
                    or b["stages"].get("land")
                    or next(iter(b["stages"].values()))
                )
                b.update(
                    {
                        k: main[k]
                        for k in (
                            "offsets_in",
                            "valid",
                            "quarantined",
                            "duplicates",
                            "skipped",
                            "recovered",
                        )
                    }
                )
                b["balanced"] = all(s["balanced"] for s in b["stages"].values())
                broken = [f"stage {name}: not ok" for name, s in b["stages"].items() if not s["ok"]]
                broken += [
                    f"stage {name}: does not balance"
                    for name, s in b["stages"].items()
                    if not s["balanced"]
                ]
                b.update(classify(broken))
        return {"regions": {region: list(batches.values()) for region, batches in out.items()}}

    return _section(reader.source("ledger"), body, {"regions": {}})


def events_per_minute(
    reader: Reader, regions: list[str], now: datetime | None = None, minutes: int = 60
) -> dict[str, Any]:
    """Valid events landed per minute over the last hour, per region: the ledger's ``land`` rows
    summed by the minute they were recorded (one row per batch: cheap at any volume)."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        series = {r: minute_series([], now, minutes) for r in regions}
        if not reader.exists("ledger"):
            return {"regions": series}
        since = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        rows = reader.run(
            "SELECT region, TIMESTAMP_TRUNC(recorded_at, MINUTE) AS minute, SUM(valid) AS events"
            f"""
            FROM {reader.w.table("ledger", ops=True)}
            WHERE recorded_at >= {ts(since)} AND stage = 'land' GROUP BY region, minute """
            f"ORDER BY minute LIMIT {minutes * 50}"
        )
        for region in regions:
            series[region] = minute_series([r for r in rows if r["region"] == region], now, minutes)
        return {"regions": series}

    return _section(reader.source("ledger"), body, {"regions": {}})


def freshness(reader: Reader, regions: list[str], now: datetime | None = None) -> dict[str, Any]:
    """Per region, the newest warehoused batch's freshness as the warehouse cycle measured it
    (``<ops>.metrics``, source ``ingest``): its oldest and newest event's age when queryable."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        out: dict[str, dict[str, Any] | None] = {r: None for r in regions}
        if not reader.exists("metrics"):
            return {"regions": out}
        rows = reader.run(
            f"""SELECT region, batch_id, measured_at,
                MAX(IF(name = 'freshness_oldest_s', value, NULL)) AS oldest_event_age_s,
                MAX(IF(name = 'freshness_newest_s', value, NULL)) AS newest_event_age_s
            FROM {reader.w.table("metrics", ops=True)}
            WHERE measured_at >= {ts(now - timedelta(days=LEDGER_LOOKBACK_DAYS))} """
            """AND source = 'ingest'
              AND name IN ('freshness_oldest_s', 'freshness_newest_s') """
            """AND NOT STARTS_WITH(batch_id, 'recovery-')
            GROUP BY region, batch_id, measured_at
            QUALIFY ROW_NUMBER() OVER (PARTITION BY region """
            """ORDER BY measured_at DESC, batch_id DESC) = 1
            LIMIT 100"""
        )
        for r in rows:
            if r["region"] in out:
                out[r["region"]] = {
                    "batch_id": r["batch_id"],
                    "measured_at": _iso(r["measured_at"]),
                    "oldest_event_age_s": r["oldest_event_age_s"],
                    "newest_event_age_s": r["newest_event_age_s"],
                }
        return {"regions": out}

    return _section(reader.source("metrics"), body, {"regions": {}})


def regions_overview(
    reader: Reader,
    bootstrap: str,
    config: PipelineConfig,
    now: datetime | None = None,
    per_region: int = BATCHES_SHOWN,
) -> dict[str, Any]:
    """The region section: Kafka backlog, freshness, events per minute and the last batches, with
    each region's status from what they show (the plugin adds failed runs)."""

    now = now or datetime.now(UTC)
    codes = [r.code for r in config.regions]
    rules = config.lag
    backlog = kafka_backlog(bootstrap, config, now.timestamp())
    fresh = freshness(reader, codes, now)
    rate = events_per_minute(reader, codes, now)
    batches = ledger_batches(reader, codes, per_region, now)
    regions = []
    for code in codes:
        kafka = backlog["regions"].get(code) or {}
        last = fresh["regions"].get(code)
        mine = batches["regions"].get(code) or []
        broken = [
            f"batch {b['batch_id']}: {'; '.join(b['why'])}" for b in mine if b["status"] == BROKEN
        ]
        late = []
        if (kafka.get("oldest_pending_age_s") or 0) > rules.max_age_s:
            late.append(
                f"oldest pending record {kafka['oldest_pending_age_s']:.0f} s old "
                f"(> {rules.max_age_s:g} s)"
            )
        if last and (last.get("oldest_event_age_s") or 0) > config.freshness_sla_s:
            late.append(
                f"last batch's oldest event queryable after {last['oldest_event_age_s']:.0f} s "
                f"(SLA {config.freshness_sla_s:g} s)"
            )
        regions.append(
            {
                "code": code,
                "pending": kafka.get("pending"),
                "oldest_pending_age_s": kafka.get("oldest_pending_age_s"),
                "freshness": last,
                "events_per_minute": (rate["regions"].get(code) or []),
                "batches": mine,
                **classify(broken, late),
            }
        )
    return {
        "regions": regions,
        "freshness_sla_s": config.freshness_sla_s,
        "max_pending_age_s": rules.max_age_s,
        "sources": {
            "pending": backlog,
            "freshness": _meta(fresh),
            "events_per_minute": _meta(rate),
            "batches": _meta(batches),
        },
    }


def _meta(section: dict[str, Any]) -> dict[str, Any]:
    return {k: section[k] for k in ("source", "error", "seconds")}


# -- sinks -----------------------------------------------------------------------------------------
def sinks_overview(
    reader: Reader, config: PipelineConfig, window_hours: float = 24, now: datetime | None = None
) -> dict[str, Any]:
    """Per sink and region: warehoused batches not synced yet (the sync plans' anti-join, last
    ``LEDGER_LOOKBACK_DAYS`` days), the last committed batch (``<ops>.sink_watermarks``), the last
    failed sync ledger row, rows in the sink quarantine over the window; and the last canary."""
    now = now or datetime.now(UTC)
    sinks = list(config.sinks)
    codes = [r.code for r in config.regions]
    since_ledger = ts(now - timedelta(days=LEDGER_LOOKBACK_DAYS))

    def behind() -> dict[str, Any]:
        out: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in sinks}
        if not reader.exists("ledger"):
            return {"sinks": out}
        from google.cloud import bigquery

        table = reader.w.table("ledger", ops=True)
        rows = reader.run(
            f"""SELECT sink, L.region, COUNT(*) AS behind, MIN(L.recorded_at) AS oldest
            FROM {table} L CROSS JOIN UNNEST(@sinks) AS sink
            LEFT JOIN (SELECT DISTINCT batch_id, stage FROM {table} """
            f"""WHERE recorded_at >= {since_ledger} AND STARTS_WITH(stage, 'sync_')) S
              ON S.batch_id = L.batch_id AND S.stage = CONCAT('sync_', sink)
            WHERE L.recorded_at >= {since_ledger} AND L.stage = 'warehouse' AND L.ok """
            f"""AND S.batch_id IS NULL
            GROUP BY sink, L.region LIMIT 1000""",
            [bigquery.ArrayQueryParameter("sinks", "STRING", sinks)],
        )
        for r in rows:
            out[r["sink"]][r["region"]] = {
                "behind": r["behind"],
                "oldest_waiting_since": _iso(r["oldest"]),
            }
        return {"sinks": out}

    def failures() -> dict[str, Any]:
        out: dict[str, dict[str, Any] | None] = {s: None for s in sinks}
        if not reader.exists("ledger"):
            return {"sinks": out}
        rows = reader.run(
            "SELECT stage, region, batch_id, detail, recorded_at "
            f"""FROM {reader.w.table("ledger", ops=True)}
            WHERE recorded_at >= {since_ledger} AND STARTS_WITH(stage, 'sync_') AND NOT ok
            QUALIFY ROW_NUMBER() OVER (PARTITION BY stage ORDER BY recorded_at DESC) = 1 """
            "LIMIT 100"
        )
        for r in rows:
            sink = r["stage"][len("sync_") :]
            if sink in out:
                out[sink] = {
                    "region": r["region"],
                    "batch_id": r["batch_id"],
                    "reason": scrub(r["detail"]),
                    "at": _iso(r["recorded_at"]),
                }
        return {"sinks": out}

    def watermarks() -> dict[str, Any]:
        out: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in sinks}
        if not reader.exists("sink_watermarks"):
            return {"sinks": out}
        for r in reader.run(
            "SELECT sink, region, batch_id, warehoused_at, synced_at "
            f"FROM {reader.w.table('sink_watermarks', ops=True)} LIMIT 1000"
        ):
            if r["sink"] in out:
                out[r["sink"]][r["region"]] = {
                    "batch_id": r["batch_id"],
                    "warehoused_at": _iso(r["warehoused_at"]),
                    "synced_at": _iso(r["synced_at"]),
                }
        return {"sinks": out}

    def refused() -> dict[str, Any]:
        out: dict[str, dict[str, int]] = {s: {} for s in sinks}
        if not reader.exists("sink_quarantine", ops=False):
            return {"sinks": out}
        since, until = window_bounds(window_hours, now)
        rows = reader.run(
            f"""SELECT sink, region, COUNT(*) AS n FROM {reader.w.table("sink_quarantine")}
            WHERE recorded_at >= {ts(since)} AND recorded_at < {ts(until)} """
            "GROUP BY sink, region LIMIT 1000"
        )
        for r in rows:
            if r["sink"] in out:
                out[r["sink"]][r["region"]] = r["n"]
        return {"sinks": out, "since": since.isoformat(), "until": until.isoformat()}

    parts = {
        "behind": _section(reader.source("ledger"), behind, {"sinks": {}}),
        "failure": _section(reader.source("ledger"), failures, {"sinks": {}}),
        "committed": _section(reader.source("sink_watermarks"), watermarks, {"sinks": {}}),
        "quarantined": _section(
            reader.source("sink_quarantine", ops=False), refused, {"sinks": {}}
        ),
    }
    result = []
    for sink in sinks:
        per_region = []
        for code in codes:
            b = (parts["behind"]["sinks"].get(sink) or {}).get(code) or {
                "behind": 0,
                "oldest_waiting_since": None,
            }
            per_region.append(
                {
                    "region": code,
                    **b,
                    "committed": (parts["committed"]["sinks"].get(sink) or {}).get(code),
                    "quarantined": (parts["quarantined"]["sinks"].get(sink) or {}).get(code, 0),
                }
            )
        failure = parts["failure"]["sinks"].get(sink)
        rules_late = [
            f"{r['region']}: {r['behind']} batches behind"
            for r in per_region
            if r["behind"] > config.lag.max_sink_batches
        ]
        result.append(
            {
                "sink": sink,
                "regions": per_region,
                "behind": sum(r["behind"] for r in per_region),
                "quarantined": sum(r["quarantined"] for r in per_region),
                "last_failure": failure,
                **classify(
                    [f"batch {failure['batch_id']} set aside: {failure['reason']}"]
                    if failure
                    else [],
                    rules_late,
                ),
            }
        )
    return {
        "sinks": result,
        "sources": {k: _meta(v) for k, v in parts.items()},
        "canary": canaries(reader, config, now),
    }


def canaries(reader: Reader, config: PipelineConfig, now: datetime | None = None) -> dict[str, Any]:
    """The last canary trace per region (``<ops>.canary``): seconds until visible in the warehouse
    and each sink, what it has not reached. The canary partner's id is not shown."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        out: dict[str, dict[str, Any] | None] = {r.code: None for r in config.regions}
        if not reader.exists("canary"):
            return {"regions": out}
        rows = reader.run(
            "SELECT region, injected_at, traced_at, seen, missing, seconds, ok "
            f"""FROM {reader.w.table("canary", ops=True)}
            WHERE injected_at >= {ts(now - timedelta(days=2))}
            QUALIFY ROW_NUMBER() OVER (PARTITION BY region ORDER BY injected_at DESC) = 1 """
            "LIMIT 100"
        )
        for r in rows:
            if r["region"] in out:
                out[r["region"]] = {
                    "injected_at": _iso(r["injected_at"]),
                    "traced_at": _iso(r["traced_at"]),
                    "seen": parse_seen(r["seen"]),
                    "missing": [m for m in (r["missing"] or "").split(",") if m],
                    "seconds": r["seconds"],
                    "ok": bool(r["ok"]),
                }
        return {"regions": out}

    return _section(reader.source("canary"), body, {"regions": {}})


# -- quarantine ------------------------------------------------------------------------------------
def quarantine_overview(
    reader: Reader,
    config: PipelineConfig,
    window_hours: float = 24,
    now: datetime | None = None,
    region: str | None = None,
    examples: int = EXAMPLES_PER_REASON,
) -> dict[str, Any]:
    """Quarantined messages that reached Kafka in the window, by region and reason code (a message
    with two reasons counts under each; ``messages`` counts each once), up to ``examples`` masked
    examples per reason, and what recovery brought back (``<ops>.recovered``, when it exists)."""
    since, until = window_bounds(window_hours, now)
    bounds = f"kafka_timestamp >= {ts(since)} AND kafka_timestamp < {ts(until)}"
    where_region = "AND region = @region" if region else ""

    def params() -> list[QueryParameter]:
        from google.cloud import bigquery

        return [bigquery.ScalarQueryParameter("region", "STRING", region)] if region else []

    def counts() -> dict[str, Any]:
        if not reader.exists("quarantine", ops=False):
            return {"by_reason": [], "messages": {}}
        table = reader.w.table("quarantine")
        by_reason = reader.run(
            f"""SELECT region, reason, COUNT(*) AS n FROM {table}, """
            f"""UNNEST(SPLIT(reasons, ',')) AS reason
            WHERE {bounds} {where_region} GROUP BY region, reason """
            "ORDER BY n DESC, region, reason LIMIT 1000",
            params(),
        )
        messages = reader.run(
            f"SELECT region, COUNT(*) AS n FROM {table} WHERE {bounds} {where_region} "
            "GROUP BY region LIMIT 100",
            params(),
        )
        return {
            "by_reason": [
                {"region": r["region"], "reason": r["reason"], "count": r["n"]} for r in by_reason
            ],
            "messages": {r["region"]: r["n"] for r in messages},
        }

    def sample(top: list[str]) -> dict[str, Any]:
        if not reader.exists("quarantine", ops=False) or not top:
            return {"examples": []}
        from google.cloud import bigquery

        rows = reader.run(
            "SELECT reason, region, batch_id, kafka_partition, kafka_offset, kafka_timestamp, "
            """event_type, partner_id,
                raw, reasons
            FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY reason """
            """ORDER BY kafka_timestamp DESC, kafka_offset DESC) AS rn
                  FROM (SELECT Q.*, reason FROM """
            f"""{reader.w.table("quarantine")} Q, UNNEST(SPLIT(Q.reasons, ',')) AS reason
                        WHERE {bounds} {where_region}) WHERE reason IN UNNEST(@top))
            WHERE rn <= {int(examples)} ORDER BY reason, kafka_timestamp DESC """
            f"LIMIT {len(top) * int(examples)}",
            [*params(), bigquery.ArrayQueryParameter("top", "STRING", top)],
        )
        return {
            "examples": [
                {
                    "reason": r["reason"],
                    "reasons": r["reasons"].split(","),
                    "region": r["region"],
                    "batch_id": r["batch_id"],
                    "kafka_partition": r["kafka_partition"],
                    "kafka_offset": r["kafka_offset"],
                    "kafka_timestamp": _iso(r["kafka_timestamp"]),
                    "event_type": r["event_type"],
                    "partner_id": mask_partner_id(r["partner_id"]),
                    "message": masked_example(
                        r["raw"][:EXAMPLE_BYTES] if r["raw"] is not None else None
                    ),
                }
                for r in rows
            ]
        }

    def recovered() -> dict[str, Any]:
        if not reader.exists("recovered"):
            return {"by_reason": [], "exists": False}
        rows = reader.run(
            "SELECT region, reason, COUNT(*) AS n "
            f"""FROM {reader.w.table("recovered", ops=True)}, UNNEST(SPLIT(reasons, ',')) AS reason
            WHERE recovered_at >= {ts(since)} AND recovered_at < {ts(until)} {where_region}
            GROUP BY region, reason ORDER BY n DESC LIMIT 1000""",
            params(),
        )
        return {
            "by_reason": [
                {"region": r["region"], "reason": r["reason"], "count": r["n"]} for r in rows
            ],
            "exists": True,
        }

    counted = _section(
        reader.source("quarantine", ops=False), counts, {"by_reason": [], "messages": {}}
    )
    totals: dict[str, int] = defaultdict(int)
    for r in counted["by_reason"]:
        totals[r["reason"]] += r["count"]
    top = [
        reason
        for reason, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:EXAMPLE_REASONS]
    ]
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "region": region,
        "counts": counted,
        "examples": _section(
            reader.source("quarantine", ops=False), lambda: sample(top), {"examples": []}
        ),
        "recovered": _section(
            reader.source("recovered"), recovered, {"by_reason": [], "exists": False}
        ),
    }


# -- health ----------------------------------------------------------------------------------------
def health_overview(reader: Reader, now: datetime | None = None) -> dict[str, Any]:
    """The last environment check per service (``<ops>.health``, the environment_health DAG)."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        if not reader.exists("health"):
            return {"services": []}
        rows = reader.run(
            "SELECT service, ok, seconds, detail, run_id, checked_at "
            f"""FROM {reader.w.table("health", ops=True)}
            WHERE checked_at >= {ts(now - timedelta(days=2))}
            QUALIFY ROW_NUMBER() OVER (PARTITION BY service ORDER BY checked_at DESC) = 1 """
            "ORDER BY service LIMIT 100"
        )
        return {
            "services": [
                {
                    "service": r["service"],
                    "ok": bool(r["ok"]),
                    "seconds": r["seconds"],
                    "detail": scrub(r["detail"]),
                    "run_id": r["run_id"],
                    "checked_at": _iso(r["checked_at"]),
                    **check_status(r["service"], bool(r["ok"]), r["checked_at"], now),
                }
                for r in rows
            ]
        }

    return _section(reader.source("health"), body, {"services": []})


def overview(
    warehouse: Warehouse,
    bootstrap: str,
    config: PipelineConfig,
    window_hours: float = 24,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every section of the page (the plugin adds the DAG runs and an overall status)."""
    now = now or datetime.now(UTC)
    reader = Reader(warehouse, config)
    return {
        "generated_at": now.isoformat(),
        "window_hours": window_hours,
        "project": warehouse.project,
        "regions": regions_overview(reader, bootstrap, config, now),
        "sinks": sinks_overview(reader, config, window_hours, now),
        "quarantine": quarantine_overview(reader, config, window_hours, now),
        "health": health_overview(reader, now),
    }


def region_detail(
    warehouse: Warehouse,
    bootstrap: str,
    config: PipelineConfig,
    code: str,
    window_hours: float = 24,
    now: datetime | None = None,
    per_region: int = 30,
) -> dict[str, Any]:
    """One region: its row of the overview with more batches, and its quarantine."""
    now = now or datetime.now(UTC)
    region = config.region(code)
    reader = Reader(warehouse, config)
    one = dataclasses.replace(config, regions=(region,))
    regions = regions_overview(reader, bootstrap, one, now, per_region)
    return {
        "generated_at": now.isoformat(),
        "window_hours": window_hours,
        "project": warehouse.project,
        "region": regions["regions"][0],
        "sources": regions["sources"],
        "freshness_sla_s": regions["freshness_sla_s"],
        "quarantine": quarantine_overview(reader, config, window_hours, now, region=region.code),
    }
