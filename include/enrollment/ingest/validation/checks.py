"""The contract's checks, vectorised: mandatory fields by type, version, region and market;
formats, calendar dates, lengths and ranges every downstream holds; semantic rules (an enrollment's
age, consent by region) — Arrow and NumPy column operations over the batch's table, each adding
its reason to the rows it refuses."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from enrollment.config import Markets, markets_in_force
from enrollment.contracts.spec import (
    COUNTRY_PATH,
    ENVELOPE,
    EVENT_TYPES,
    FORMATS,
    INTEGER,
    PAYLOADS,
    REGIONS,
    SCHEMA_VERSIONS,
    STRING,
    FieldSpec,
)
from enrollment.ingest.validation.reasons import Reasons
from enrollment.ingest.validation.trees import CORE_ENVELOPE, Mask, Rows

# Raw control characters are invalid JSON; escaped ones decode into text no field may hold.
_CONTROL = r"[\x00-\x1f\x7f]"


class _Columns:
    """Flattened columns of the parsed table by dotted path, with NumPy views cached. A view of
    some rows (``of(rows)``) takes only the leaves its checks read, when they read them."""

    def __init__(
        self,
        table: pa.Table,
        escaped: Mask,
        parent: _Columns | None = None,
        rows: Rows | None = None,
    ) -> None:
        self.table = table
        # Rows whose raw text holds a backslash: only they can hold control characters.
        self.escaped = escaped
        self.parent, self.rows = parent, rows
        self.n: int = len(rows) if rows is not None else table.num_rows
        self._cols: dict[str, pa.Array] = {}
        self._top: dict[str, pa.Array] = {}  # top-level columns, combined
        self._cache: dict[tuple[str, ...], Mask] = {}
        self._calendar: dict[str, tuple[Mask, Mask]] = {}

    def of(self, rows: Rows) -> _Columns:
        return _Columns(self.table, self.escaped[rows], self, rows)

    def arrow(self, path: str) -> pa.Array:
        if path not in self._cols:
            if self.parent is not None and self.rows is not None:
                # Rows grouped by contract: a type's rows are often one run, a slice (no copy).
                rows = self.rows
                if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                    sliced = self.parent.arrow(path).slice(int(rows[0]), len(rows))
                    self._cols[path] = sliced
                else:
                    self._cols[path] = self.parent.arrow(path).take(pa.array(rows))
            else:
                head, *rest = path.split(".")
                if head not in self._top:  # combining a nested column copies it: once per column
                    self._top[head] = self.table.column(head).combine_chunks()
                arr = self._top[head]
                for part in rest:
                    arr = pc.struct_field(arr, part)
                self._cols[path] = arr
        return self._cols[path]

    def present(self, path: str, kind: str) -> Mask:
        key = ("present", path)
        if key not in self._cache:
            arr = self.arrow(path)
            if kind == STRING:
                # Not blank: the class of whitespace utf8_trim_whitespace trims, without copying.
                ok = pc.and_(pc.greater(pc.binary_length(arr), 0), pc.invert(pc.utf8_is_space(arr)))
            else:
                ok = pc.is_valid(arr)
            self._cache[key] = _np(ok)
        return self._cache[key]

    def equals(self, path: str, value: str) -> Mask:
        return _np(pc.equal(self.arrow(path), value))

    def isin(self, path: str, values: Iterable[str]) -> Mask:
        return _np(
            pc.is_in(self.arrow(path), value_set=pa.array(list(values), type=self.arrow(path).type))
        )

    def matches(self, path: str, pattern: str) -> Mask:
        key = ("re", path, pattern)
        if key not in self._cache:
            self._cache[key] = _np(pc.match_substring_regex(self.arrow(path), pattern))
        return self._cache[key]

    def numbers(self, path: str) -> npt.NDArray[np.float64]:
        values: npt.NDArray[np.float64] = (
            self.arrow(path).to_numpy(zero_copy_only=False).astype(np.float64)
        )
        return values

    def too_long(self, path: str, max_chars: int) -> Mask:
        # No more characters than bytes: only values of more bytes are counted.
        arr = self.arrow(path)
        out = _np(pc.greater(pc.binary_length(arr), max_chars))
        rows = np.flatnonzero(out)
        if len(rows):
            out[rows] = _np(pc.greater(pc.utf8_length(arr.take(pa.array(rows))), max_chars))
        return out

    def control(self, path: str) -> Mask:
        out = np.zeros(self.n, dtype=bool)
        rows = np.flatnonzero(self.escaped)
        if len(rows):
            out[rows] = _np(
                pc.match_substring_regex(self.arrow(path).take(pa.array(rows)), _CONTROL)
            )
        return out

    def calendar(self, path: str) -> tuple[Mask, Mask]:
        """For values that start like a date: (a real calendar date, of year 0000). Only days
        from the 29th on can be impossible, so only they are parsed."""
        if path not in self._calendar:
            arr = self.arrow(path)
            year, day = pc.utf8_slice_codeunits(arr, 0, 4), pc.utf8_slice_codeunits(arr, 8, 10)
            year_zero = _np(pc.equal(year, "0000"))
            real = np.ones(self.n, dtype=bool)
            rows = np.flatnonzero(
                _np(pc.greater_equal(day, "29")) & self.matches(path, r"^\d{4}-\d{2}-\d{2}")
            )
            if len(rows):
                take = pa.array(rows)
                parsed = pc.strptime(
                    pc.utf8_slice_codeunits(arr.take(take), 0, 10),
                    format="%Y-%m-%d",
                    unit="s",
                    error_is_null=True,
                )
                real[rows] = _np(pc.equal(pc.day(parsed), pc.cast(day.take(take), pa.int64())))
            self._calendar[path] = (real, year_zero)
        return self._calendar[path]

    def instant_out_of_range(self, path: str) -> Mask:
        """Well-formed instants whose UTC time leaves 0001-01-01..9999-12-31 (an offset at either
        end)."""
        key = ("out_of_range", path)
        if key in self._cache:
            return self._cache[key]
        arr = self.arrow(path)
        year = pc.utf8_slice_codeunits(arr, 0, 4)
        real, year_zero = self.calendar(path)
        out = year_zero.copy()
        edge = np.flatnonzero(
            _np(pc.is_in(year, value_set=pa.array(["0001", "9999"])))
            & real
            & self.matches(path, FORMATS["timestamp"])
        )
        if len(edge):
            at = instants(arr.take(pa.array(edge)))
            low, high = (
                pa.scalar(_EARLIEST, pa.timestamp("us", tz="UTC")),
                pa.scalar(_LATEST, pa.timestamp("us", tz="UTC")),
            )
            out[edge] = _np(pc.or_(pc.less(at, low), pc.greater(at, high)))
        self._cache[key] = out
        return out


def instants(arr: pa.Array) -> pa.Array:
    """Well-formed RFC 3339 strings as UTC microseconds: a fraction longer than 6 digits is cut
    (the warehouse holds microseconds; cut, never rounded into the next second)."""
    micros = pa.timestamp("us", tz="UTC")
    try:
        return pc.cast(arr, micros)
    except pa.ArrowInvalid:  # a longer fraction: cut it (the regex costs 7x the cast, hence here)
        return pc.cast(pc.replace_substring_regex(arr, r"(\.\d{6})\d+", r"\1"), micros)


def _np(boolean: pa.Array) -> Mask:
    flags: Mask = pc.fill_null(boolean, False).to_numpy(zero_copy_only=False)
    return flags


_EARLIEST, _LATEST = (
    pd.Timestamp("0001-01-01T00:00:00Z").to_pydatetime(),
    pd.Timestamp("9999-12-31T23:59:59.999999Z").to_pydatetime(),
)


def _valid_dates(cols: _Columns, path: str) -> Mask:
    """Calendar-valid ISO dates from 0001-01-01 (2023-02-30 matches the pattern but is no date)."""
    real, year_zero = cols.calendar(path)
    return cols.matches(path, FORMATS["date"]) & real & ~year_zero


def _format_ok(cols: _Columns, spec: FieldSpec, market_country: pa.Array | None) -> Mask:
    """True where the value (if present) is well formed; rows without a value pass."""
    ok = np.ones(cols.n, dtype=bool)
    if spec.format in ("date", "timestamp"):
        ok &= cols.matches(spec.path, FORMATS[spec.format]) & cols.calendar(spec.path)[0]
    elif spec.format:
        ok &= cols.matches(spec.path, FORMATS[spec.format])
    if spec.enum:
        ok &= cols.isin(spec.path, spec.enum)
    if spec.minimum is not None:
        # Numbers arrive finite and integers whole: decoding refused the rest.
        with np.errstate(invalid="ignore"):
            ok &= ~(cols.numbers(spec.path) < spec.minimum)
    if spec.by_country and market_country is not None:
        for country, market in markets_in_force().rules.items():
            pattern = getattr(market, spec.by_country)
            if pattern:
                ok &= ~(_np(pc.equal(market_country, country)) & ~cols.matches(spec.path, pattern))
    return ok


@lru_cache(maxsize=4)
def _market_pairs(registry: Markets) -> pa.Array:
    return pa.array(registry.pairs())


def _market_country(cols: _Columns, event_type: str) -> pa.Array:
    """The row's country where it is one of its region's markets, else ''."""
    country = pc.fill_null(cols.arrow(COUNTRY_PATH[event_type]), "")
    pair = pc.binary_join_element_wise(pc.fill_null(cols.arrow("region"), ""), country, "|")
    return pc.if_else(pc.is_in(pair, value_set=_market_pairs(markets_in_force())), country, "")


def _condition(cols: _Columns, name: str, market_country: pa.Array | None) -> Mask:
    if name == "always":
        return np.ones(cols.n, dtype=bool)
    if name == "never":
        return np.zeros(cols.n, dtype=bool)
    if name == "tax_id_market":
        return _np(
            pc.is_in(market_country, value_set=pa.array(markets_in_force().tax_id_countries()))
        )
    if name == "state_market":
        return _np(
            pc.is_in(market_country, value_set=pa.array(markets_in_force().state_countries()))
        )
    if name == "consent_region":
        return cols.isin("region", markets_in_force().consent_regions)
    if name == "without_first_order":
        return ~cols.present("payload.first_order.order_id", STRING)
    if name == "not_cancelled":
        return cols.present("payload.action", STRING) & ~cols.equals("payload.action", "cancelled")
    raise KeyError(name)


def _check_fields(
    cols: _Columns,
    specs: Iterable[FieldSpec],
    applies: Mask,
    reasons: Reasons,
    market_country: pa.Array | None,
) -> None:
    for spec in specs:
        present = cols.present(spec.path, spec.kind)
        required = applies & _condition(cols, spec.required, market_country)
        reasons.add(required & ~present, spec.missing_code)
        given = applies & present
        if spec.checked_format:
            reasons.add(given & ~_format_ok(cols, spec, market_country), spec.format_code)
        if spec.kind == STRING:
            reasons.add(given & cols.control(spec.path), spec.format_code)
            reasons.add(given & cols.too_long(spec.path, spec.max_length), spec.too_long_code)
        if spec.format in ("date", "timestamp"):
            out = (
                cols.calendar(spec.path)[1]
                if spec.format == "date"
                else cols.instant_out_of_range(spec.path)
            )
            reasons.add(given & out, spec.range_code)


def check(table: pa.Table, escaped: Mask, reasons: Reasons, order: Rows | None = None) -> None:
    """Adds the reasons of every row; ``order``: the rows in input order (default: as they
    are), which decides which of two equal event ids comes first."""
    cols = _Columns(table, escaped)
    has_type = cols.present("event_type", STRING)
    reasons.add(~has_type, "missing:event_type")
    reasons.add(has_type & ~cols.isin("event_type", EVENT_TYPES), "unknown_event_type")
    version = cols.numbers("schema_version")
    has_version = cols.present("schema_version", INTEGER)
    # A mistyped one was dropped (and named) while decoding.
    reasons.add(has_type & ~has_version, "missing:schema_version")
    _check_fields(cols, CORE_ENVELOPE, np.ones(cols.n, dtype=bool), reasons, None)

    # Payload checks run on each type's own rows: rare types cost little, frequent ones no more.
    for event_type in EVENT_TYPES:
        of_type = cols.equals("event_type", event_type) & has_version
        supported = of_type & np.isin(version, SCHEMA_VERSIONS[event_type])
        reasons.add(of_type & ~supported, "unknown_schema_version")
        rows = np.flatnonzero(supported)
        if len(rows):
            _check_type(event_type, cols.of(rows), version[rows], reasons.mapped(rows))

    # Duplicates: a later message with an event id already seen in this batch.
    # Codes number the ids in order of first appearance: an id seen before has a code no
    # greater than the largest before it.
    if order is None:
        order = np.arange(cols.n)
    ids = cols.arrow("event_id").take(pa.array(order))
    codes = pc.fill_null(pc.dictionary_encode(ids).indices, -1).to_numpy(zero_copy_only=False)
    codes = np.where(cols.present("event_id", STRING)[order], codes, -1)
    before = np.maximum.accumulate(np.concatenate(([-1], codes[:-1]))) if cols.n else codes
    reasons.add(order[(codes >= 0) & (codes <= before)], "duplicate_event_id")


def _check_type(
    event_type: str, cols: _Columns, version: npt.NDArray[np.float64], reasons: Reasons
) -> None:
    market_country = _market_country(cols, event_type) if event_type in COUNTRY_PATH else None
    for v in SCHEMA_VERSIONS[event_type]:
        applies = version == v
        if applies.any():
            specs = [s for s in PAYLOADS[event_type] if v in s.versions] + [
                s for s in ENVELOPE if s.versions == (v,)
            ]
            _check_fields(cols, specs, applies, reasons, market_country)
    if market_country is not None:
        path = COUNTRY_PATH[event_type]
        country_given = (
            cols.isin("region", REGIONS)
            & cols.present(path, STRING)
            & cols.matches(path, FORMATS["country"])
        )
        reasons.add(country_given & _np(pc.equal(market_country, "")), "country_not_in_region")
    if event_type == "partner.enrolled":
        _check_enrollment(cols, market_country, reasons)
    elif event_type == "partner.updated":
        changed = np.zeros(cols.n, dtype=bool)
        for spec in PAYLOADS[event_type]:
            if spec.path.startswith("payload.changes."):
                changed |= cols.present(spec.path, spec.kind)
        reasons.add(~changed, "missing:payload.changes")


def _ymd(arr: pa.Array) -> npt.NDArray[np.int64]:
    ymd: npt.NDArray[np.int64] = (
        pc.year(arr).to_numpy(zero_copy_only=False) * 10000
        + pc.month(arr).to_numpy(zero_copy_only=False) * 100
        + pc.day(arr).to_numpy(zero_copy_only=False)
    )
    return ymd


def _check_enrollment(cols: _Columns, market_country: pa.Array, reasons: Reasons) -> None:
    # An age is judged only against a real instant.
    both = (
        _valid_dates(cols, "payload.date_of_birth")
        & cols.matches("occurred_at", FORMATS["timestamp"])
        & cols.calendar("occurred_at")[0]
        & ~cols.instant_out_of_range("occurred_at")
    )
    if both.any():
        rows = pa.array(np.flatnonzero(both))
        dob = pc.strptime(
            cols.arrow("payload.date_of_birth").take(rows),
            format="%Y-%m-%d",
            unit="s",
            error_is_null=True,
        )
        at = pc.strptime(
            pc.utf8_slice_codeunits(cols.arrow("occurred_at").take(rows), 0, 10),
            format="%Y-%m-%d",
            unit="s",
            error_is_null=True,
        )
        rules = markets_in_force().rules
        min_age = (
            pd.Series(market_country.take(rows).to_pandas())
            .map(lambda c: rules[c].min_age if c else 18)
            .to_numpy(dtype=np.int64)
        )
        too_young = np.zeros(cols.n, dtype=bool)
        too_young[np.flatnonzero(both)] = _ymd(dob) + min_age * 10000 > _ymd(at)
        reasons.add(too_young, "under_age")
    refused = _np(pc.equal(cols.arrow("payload.consents.data_processing"), False))
    reasons.add(
        cols.isin("region", markets_in_force().consent_regions) & refused,
        "consent_not_granted:payload.consents.data_processing",
    )
    reasons.add(
        _np(pc.equal(cols.arrow("payload.sponsor_id"), cols.arrow("partner_id"))), "sponsor_is_self"
    )
