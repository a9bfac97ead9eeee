"""A quarantine re-processing request: the window (a month at most), regions and reasons asked,
checked before anything is read; the reasons a row must have to be a candidate."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment.core.errors import RequestError

MAX_WINDOW = timedelta(days=31)  # a month of quarantine partitions at most per run


DEFAULT_WINDOW = timedelta(days=7)


EXCLUDED_BY_DEFAULT = "duplicate_event_id"  # an in-batch copy is never a message to bring back


_EN_DASH = "–"  # joins the window's two ends


def _known_reason(code: str) -> bool:
    """A reason code the validator can give (``missing`` and ``missing:payload.email`` both are)."""
    # lazy: a request is checked where pyarrow need not load (the DAG's params)
    from enrollment.ingest.validation.reasons import REASON_CODES

    for known in REASON_CODES:
        stem = known.split(":<", 1)[0]
        if code in (known, stem) or (known.endswith(">") and code.startswith(stem + ":")):
            return True
    return False


def _instant(value: object, name: str) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RequestError(
                f"{name}: {value!r} is not an ISO 8601 date-time (e.g. 2026-11-23T00:00:00Z)"
            ) from None
    else:
        raise RequestError(
            f"{name}: expected an ISO 8601 date-time string, got {type(value).__name__}"
        )
    return (
        at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    )  # naive: UTC, as the form says


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RequestError(f"{name}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class RecoveryRequest:
    regions: tuple[str, ...]
    since: datetime
    until: datetime
    reasons: tuple[str, ...]  # empty: every reason but duplicate_event_id
    dry_run: bool = True
    unknown_reasons: tuple[
        str, ...
    ] = ()  # filters no validator reason has: allowed (older codes), reported

    @classmethod
    def parse(
        cls, params: Mapping[str, Any], regions: Sequence[str], now: datetime | None = None
    ) -> RecoveryRequest:
        """The run's params (``region``, ``since``, ``until``, ``reasons``, ``dry_run``) checked."""
        now = now or datetime.now(UTC)
        region = str(params.get("region") or "ALL").strip().upper()
        if region != "ALL" and region not in regions:
            raise RequestError(
                f"region: {region!r} is not a region of the pipeline "
                f"(one of ALL, {', '.join(regions)})"
            )
        until = _instant(params.get("until"), "until") or now
        since = _instant(params.get("since"), "since") or until - DEFAULT_WINDOW
        if since >= until:
            raise RequestError(f"since {since.isoformat()} is not before until {until.isoformat()}")
        if until - since > MAX_WINDOW:
            raise RequestError(
                f"the window {since.isoformat()} {_EN_DASH} {until.isoformat()} "
                f"spans {(until - since).days} days; "
                f"at most {MAX_WINDOW.days} days per run (run once per month of quarantine)"
            )
        raw = params.get("reasons") or []
        if isinstance(raw, str):
            raw = [r for r in raw.split(",")]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(r, str) for r in raw):
            raise RequestError(f"reasons: expected a list of reason codes, got {raw!r}")
        reasons = tuple(dict.fromkeys(r.strip() for r in raw if r.strip()))
        return cls(
            regions=tuple(regions) if region == "ALL" else (region,),
            since=since,
            until=until,
            reasons=reasons,
            dry_run=_flag(params.get("dry_run", True), "dry_run"),
            unknown_reasons=tuple(r for r in reasons if not _known_reason(r)),
        )

    def matches(self, reasons: str) -> bool:
        return matches(reasons, self.reasons)

    def describe(self) -> dict[str, Any]:
        return {
            "regions": list(self.regions),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "reasons": list(self.reasons),
            "dry_run": self.dry_run,
            "unknown_reasons": list(self.unknown_reasons),
        }


def matches(reasons: str, filters: Sequence[str]) -> bool:
    """A quarantine row's reasons (comma-joined) match when one equals a filter or starts with
    ``<filter>:``; no filter: any reason but ``duplicate_event_id``."""
    codes = [r for r in (reasons or "").split(",") if r]
    if not filters:
        return any(c != EXCLUDED_BY_DEFAULT for c in codes)
    return any(c == f or c.startswith(f + ":") for c in codes for f in filters)


def reasons_regex(filters: Sequence[str]) -> str | None:
    """``matches`` as a regular expression over the comma-joined column (None: no filter), so the
    window's rows are filtered where they are stored."""
    if not filters:
        return None
    return "(^|,)(" + "|".join(re.escape(f) for f in filters) + ")(:[^,]*)?(,|$)"
