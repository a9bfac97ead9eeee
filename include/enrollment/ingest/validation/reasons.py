"""What validation says of a message: the reason codes (one per problem, by family), and the
result of a batch (``ValidationResult``: the valid rows, the quarantined ones with every reason
that applies)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from enrollment.contracts.spec import PAYLOADS, all_fields
from enrollment.ingest.validation.trees import Mask, Rows

REASON_CODES = (
    "oversized",
    "not_utf8",
    "unparsable",
    "too_deep",
    "unknown_event_type",
    "unknown_schema_version",
    "duplicate_event_id",
    "missing:<field>",
    "bad_format:<field>",
    "too_long:<field>",
    "out_of_range:<field>",
    "sponsor_missing",
    "country_not_in_region",
    "under_age",
    "consent_not_granted:<field>",
    "sponsor_is_self",
    "validator_error",
)


_MISSING_PATH = (
    {spec.missing_code: spec.path for spec in all_fields().values()}
    | {spec.missing_code: spec.path for specs in PAYLOADS.values() for spec in specs}
    | {"missing:event_type": "event_type", "missing:schema_version": "schema_version"}
)


@dataclass
class ValidationResult:
    # One row per valid event, in input order; `source_index` = position in the batch.
    valid: pa.Table
    # One row per refused message: `source_index`, `reasons`, `raw`, and what could be read.
    quarantine: pa.Table

    @property
    def duplicates(self) -> int:
        """Quarantined only because an earlier message of the batch had the same event id."""
        reasons = self.quarantine.column("reasons").to_pylist()
        return sum(1 for r in reasons if r == ["duplicate_event_id"])


class Reasons:
    """Reason codes collected as (row indices, code) pairs: cheap to add in bulk."""

    def __init__(
        self,
        rows: list[Rows] | None = None,
        codes: list[str] | None = None,
        index: Rows | None = None,
    ) -> None:
        self.rows: list[Rows] = [] if rows is None else rows
        self.codes: list[str] = [] if codes is None else codes
        self.index = index

    def add(self, rows: Mask | Rows, code: str) -> None:
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows):
            rows = rows.astype(np.int64, copy=False)
            self.rows.append(rows if self.index is None else self.index[rows])
            self.codes.append(code)

    def add_one(self, row: int, code: str) -> None:
        self.add(np.array([row], dtype=np.int64), code)

    def mapped(self, index: Rows) -> Reasons:
        """The same collector, for a subset of rows: local row k is row index[k] here."""
        return Reasons(self.rows, self.codes, index if self.index is None else self.index[index])

    def by_row(self) -> dict[int, list[str]]:
        out: dict[int, set[str]] = {}
        for rows, code in zip(self.rows, self.codes, strict=True):
            for row in rows.tolist():
                out.setdefault(row, set()).add(code)
        return {row: _without_consequences(codes) for row, codes in out.items()}


_DROPPING = ("bad_format:", "out_of_range:")


def _without_consequences(codes: set[str]) -> list[str]:
    """A value of the wrong JSON type or beyond range is dropped while parsing: report that, not
    the field's absence that follows from it."""
    bad = [c.split(":", 1)[1] for c in codes if c.startswith(_DROPPING)]
    if bad:
        codes = {
            c
            for c in codes
            if not any(
                _MISSING_PATH.get(c, "\0") == p or _MISSING_PATH.get(c, "\0").startswith(p + ".")
                for p in bad
            )
        }
    return sorted(codes)
