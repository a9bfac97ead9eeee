"""The sink interface: what every downstream sync (Firestore, Solr, Marketing Cloud, yours) does.

A sink receives the **current state** of the partners a run of batches touched, one row per
partner (the warehouse has already coalesced them: the newest version wins, a late older version
only fills empty fields), and writes it idempotently within its service's limits:

- ``write(partners, enrolled)`` returns a ``SinkResult`` with what the service acknowledged;
  a partner is either written, unchanged (the service already holds this version or a newer
  one), or rejected with the service's message (those go to the sink quarantine, not lost).
- ``verify(partners, result)`` reads back from the service and returns the problems found (empty
  when everything written is there); the sync gate fails the task with them.
- ``audit(partners)`` reads back what the service holds *now* for these partners, whoever wrote
  it: partner id → what is wrong. The daily reconciliation and the canary use it; sinks whose
  ``verify`` reads the service's state (not the run's receipts) build one on the other.

``partners`` rows carry the warehouse's ``partners`` columns (``partner_id``, ``partner_version``,
``status`` — ``active``, ``terminated`` or ``None`` while only updates arrived —, names, address,
…); ``enrolled`` maps the ids whose enrollment event is in this run's batches to the batch
that carried it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from enrollment.core.partners import PARTNER_COLUMNS

Partner = dict[str, Any]  # one row of the warehouse's partners table

_T = TypeVar("_T")

# The fields whose filling counts in a revision: the warehouse's partner columns before consent
# (revisions were defined before consent was carried; counting it would change every revision).
STATE_FIELDS = PARTNER_COLUMNS[: PARTNER_COLUMNS.index("marketing_consent")]


def revision(partner: Partner) -> int:
    """A number that grows with every change of a partner's state; sinks guard their writes with it.

    ``partner_version`` alone misses changes: an older event arriving late fills a field no newer
    event has set, without a new version. The warehouse keeps, per field, the version that set it
    (``<field>_version``); those only ever grow, and every change of state raises at least one, so
    their sum orders every state the warehouse can hold. A row without field versions (a test's,
    a benchmark's) counts each filled field at the partner's version."""
    version = int(partner["partner_version"])
    total = 0
    for f in STATE_FIELDS:
        set_at = partner.get(f"{f}_version")
        total += (
            int(set_at) if set_at is not None else (version if partner.get(f) is not None else 0)
        )
    return total


@dataclass
class SinkResult:
    sink: str
    partners: int = 0
    written: int = 0
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(
        default_factory=list
    )  # (partner id, the service's message)
    receipts: list[str] = field(
        default_factory=list
    )  # ids the service gave back to check later (MC request ids)
    extra: dict[str, int] = field(
        default_factory=dict
    )  # sink-specific counts (journey events fired, documents removed…)

    def accounted(self) -> bool:
        return self.partners == self.written + self.unchanged + len(self.rejected)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SinkResult:
        return cls(**{**data, "rejected": [tuple(r) for r in data.get("rejected", [])]})

    def summary(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in sorted(self.extra.items()))
        return (
            f"partners {self.partners}: written {self.written}, unchanged {self.unchanged}, "
            f"rejected {len(self.rejected)}{extra}"
        )


class Sink(ABC):
    """One downstream service. Subclasses set ``name`` and implement ``write`` and ``verify``."""

    name: str = ""
    # Whether a sync run may write and read back several regions at once (threads). A sink whose
    # service mis-serves concurrent writers says False, and its regions go one after another.
    regions_at_once: bool = True
    # Whether the service itself refuses a partner's state older than the one it holds (a
    # revision guard: Firestore's update precondition, Solr's version constraint). A sink that
    # says False is handed the warehouse's current state by replays and resyncs, read again after
    # each write until nothing newer was committed meanwhile: a stale state never has the last
    # word (``SyncRun.write``).
    guards_revisions: bool = False

    @abstractmethod
    def write(self, partners: Sequence[Partner], enrolled: Mapping[str, str]) -> SinkResult: ...

    @abstractmethod
    def verify(self, partners: Sequence[Partner], result: SinkResult) -> list[str]: ...

    def audit(self, partners: Sequence[Partner]) -> dict[str, str]:
        """Partner id → what the service holds wrong (missing, older, other status); empty when
        all is there."""
        raise NotImplementedError(f"sink {self.name} cannot be audited: implement audit(partners)")

    def erase(self, partner_ids: Sequence[str]) -> dict[str, int]:
        """Removes the partners from the service for good (an erasure request); counts, never
        ids."""
        raise NotImplementedError(
            f"sink {self.name} cannot erase partners: implement erase(partner_ids)"
        )

    def close(self) -> None:  # noqa: B027 (optional: not every sink holds a client)
        """Releases clients; called once the run is over."""


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def iso(value: object) -> str | None:
    """Timestamps and dates as ISO-8601 (UTC ``Z`` for timestamps), None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


_NAMED = re.compile(r"^[A-Z]{2}[0-9A-Z]{10}: ")
_TIMES = "×"  # as in "3 × missing"


def summarise(problems: Iterable[str], limit: int = 5) -> str:
    """Problems counted by kind, without the partner ids that start them ("<id>: <problem>"):
    what a gate's error, a log line or an alert may say. The ids are in the sink quarantine or
    the reconciliation table, where access is controlled."""
    kinds = Counter(_NAMED.sub("", p) for p in problems)
    more = f" (and {len(kinds) - limit} more kinds)" if len(kinds) > limit else ""
    return (
        "; ".join(f"{n} {_TIMES} {kind}" if n > 1 else kind for kind, n in kinds.most_common(limit))
        + more
    )
