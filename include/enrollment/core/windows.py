"""Time windows written as constant filters: BigQuery prunes partitions on a literal timestamp
(a subquery or a parameter it may not), so every bounded read says its window this way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta


@dataclass(frozen=True)
class Window:
    """The arrival days a cycle may read: [lo, hi), constants aligned on days (partitions)."""

    lo: datetime
    hi: datetime

    @classmethod
    def around(cls, first: datetime, last: datetime, days_before: int) -> Window:
        def day(t: datetime) -> datetime:
            return datetime(t.year, t.month, t.day, tzinfo=UTC)

        return cls(day(first) - timedelta(days=days_before), day(last) + timedelta(days=1))

    def sql(self, column: str) -> str:
        return (
            f"{column} >= TIMESTAMP '{self.lo:%Y-%m-%d}' "
            f"AND {column} < TIMESTAMP '{self.hi:%Y-%m-%d}'"
        )

    @property
    def days(self) -> int:
        return (self.hi - self.lo).days


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def day_start(at: datetime) -> datetime:
    return datetime(at.year, at.month, at.day, tzinfo=UTC)
