"""How the operator page reads: one ``Reader`` per request (the warehouse handle, its window,
a query timeout), sections that never fail the page (a table that does not exist yet reads as
empty; a service that does not answer is an ``error`` in its section), and the status words.

Status words (``classify``): **broken** — a stage failed (a failed run, a ledger row not ok or not
balancing, a batch set aside, a service check not ok); **late** — only a measurement of lateness
(the freshness gate, the lag monitor's age or growth rules); **ok** otherwise."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from enrollment.config import PipelineConfig
from enrollment.view.masking import scrub

if TYPE_CHECKING:
    from enrollment.clients.bigquery import BigQuery, QueryParameter

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


MAX_WINDOW_HOURS = 24 * 31


QUERY_TIMEOUT_S = 30.0


def classify(broken: Sequence[str] = (), late: Sequence[str] = ()) -> dict[str, Any]:
    """A status and why: broken wins over late; each list holds the reasons found."""
    status = BROKEN if broken else LATE if late else OK
    return {"status": status, "why": list(broken) + list(late)}


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


def iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


class Reader:
    """The warehouse as the page reads it: which tables exist (one listing per dataset per
    reader), queries that read nothing when their table is missing."""

    def __init__(self, warehouse: BigQuery, config: PipelineConfig) -> None:
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


def section(
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


def meta(section: dict[str, Any]) -> dict[str, Any]:
    return {k: section[k] for k in ("source", "error", "seconds")}
