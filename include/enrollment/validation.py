"""Batch validation: raw Kafka message values in, a table of valid rows and quarantine rows out.

Total: for any list of byte strings ``validate_batch`` returns, and every message comes out
exactly once, valid or quarantined with every reason code that applies (``REASON_CODES`` lists
their families). A message's outcome depends on its own bytes only, except ``duplicate_event_id``
(an earlier message of the batch has the same id).

1. byte screening: size, UTF-8 (strict: an encoded surrogate is not UTF-8), nesting depth;
2. a strict decode of each message (msgspec: RFC 8259 — no NaN or Infinity literals, no raw
   control characters or lone surrogate escapes in strings; integers exact) straight into its
   own contract, chosen by its type and version: only that contract's fields are typed and kept
   (the fast path);
3. what the fast path refuses takes the per-record path: a strict decode to plain values, then
   each field of the event's own contract (type *and* version) is kept or becomes a reason. It
   decides everything the fast path decides, only slower (a property test holds them equal);
4. every readable message, reduced to the fields of its own contract (foreign fields are never
   typed or carried; they stay in the raw event), becomes a row of one Arrow table;
5. the contract checks (mandatory fields by type, version, region and market; formats, calendar
   dates, lengths and ranges every downstream holds; semantic rules; duplicate event ids) run as
   Arrow/NumPy column operations over that table.

``validate_guarded`` is the last line of defence of ``land``: should validation raise after all,
the batch is bisected and the culprits quarantined as ``validator_error`` with their raw bytes.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, TypeAlias, TypedDict

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .contracts import markets
from .contracts.spec import (
    BOOLEAN,
    COUNTRY_PATH,
    ENVELOPE,
    EVENT_TYPES,
    FORMATS,
    INTEGER,
    MAX_NESTING,
    NUMBER_LIMIT,
    PAYLOADS,
    REGIONS,
    SAFE_INTEGER,
    SCHEMA_VERSIONS,
    STRING,
    FieldSpec,
    all_fields,
    fields,
)

log = logging.getLogger(__name__)

# A decoded message (or what of it is kept): a JSON object.
Event: TypeAlias = dict[str, Any]
# A contract as a tree: field name -> its kind (a leaf) or the tree of a nested object.
Tree: TypeAlias = dict[str, "Tree | str"]
Mask: TypeAlias = npt.NDArray[np.bool_]  # one flag per row
Rows: TypeAlias = npt.NDArray[np.int64]  # row positions

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
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
_KIND_TYPE = {STRING: pa.string(), "number": pa.float64(), INTEGER: pa.int64(), BOOLEAN: pa.bool_()}
_MISSING_PATH = (
    {spec.missing_code: spec.path for spec in all_fields().values()}
    | {spec.missing_code: spec.path for specs in PAYLOADS.values() for spec in specs}
    | {"missing:event_type": "event_type", "missing:schema_version": "schema_version"}
)
_CORE_ENVELOPE = tuple(
    f for f in ENVELOPE if f.versions == (1, 2) and f.path not in ("event_type", "schema_version")
)
# Raw control characters are invalid JSON; escaped ones decode into text no field may hold.
_CONTROL = r"[\x00-\x1f\x7f]"


# -- the contracts as trees: the parse schema and one typed decoder per contract ----------------
def _tree(specs: Iterable[FieldSpec]) -> Tree:
    tree: Tree = {}
    for spec in specs:
        node = tree
        *parents, leaf = spec.path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            assert isinstance(child, dict), f"{spec.path}: {part} is both a field and an object"
            node = child
        node[leaf] = spec.kind
    return tree


def _arrow_type(node: Tree | str) -> pa.DataType:
    if isinstance(node, dict):
        return pa.struct([pa.field(name, _arrow_type(child)) for name, child in node.items()])
    return _KIND_TYPE[node]


SCHEMA_TREE = _tree(all_fields().values())
PARSE_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, _arrow_type(child)) for name, child in SCHEMA_TREE.items()]
)
# What the per-record path keeps of a message: its own contract's fields, or (type or version
# unknown) the envelope's.
CONTRACT_TREES: dict[tuple[str, int], Tree] = {
    (t, v): _tree(fields(t, v)) for t in EVENT_TYPES for v in SCHEMA_VERSIONS[t]
}
ENVELOPE_TREE = _tree(
    _CORE_ENVELOPE + tuple(f for f in ENVELOPE if f.path in ("event_type", "schema_version"))
)

# Type forms (Annotated[...]) as values: typing has no static type for them (PEP 747 is to come).
_PY_KIND: dict[str, Any] = {
    STRING: str,
    BOOLEAN: bool,
    INTEGER: Annotated[int, msgspec.Meta(ge=-SAFE_INTEGER, le=SAFE_INTEGER)],
    # Strictly inside: the decoder turns an integer into a float first, so 2^53 + 1 would arrive
    # rounded to 2^53; a value at the edge takes the per-record path, which sees the integer.
    "number": Annotated[float, msgspec.Meta(gt=-NUMBER_LIMIT, lt=NUMBER_LIMIT)],
}


def _typed_dict(name: str, tree: Tree) -> type:
    annotations: dict[str, object] = {}
    for key, node in tree.items():
        kind = _typed_dict(f"{name}_{key}", node) if isinstance(node, dict) else _PY_KIND[node]
        annotations[key] = kind | None
    return TypedDict(  # type: ignore[operator,no-any-return]  # fields known at run time only
        name, annotations, total=False
    )


class _Head(msgspec.Struct):
    event_type: object = None
    schema_version: object = None


_HEAD = msgspec.json.Decoder(_Head)
# One decoder per contract (type and version): it types that contract's fields and no other.
# Looked up with whatever a message holds as its type and version, hence the key's type.
_CONTRACT_DECODERS: dict[tuple[object, object], msgspec.json.Decoder[Event]] = {
    key: msgspec.json.Decoder(_typed_dict("C_" + re.sub(r"\W", "_", f"{key[0]}_v{key[1]}"), tree))
    for key, tree in CONTRACT_TREES.items()
}
_PLAIN = msgspec.json.Decoder(float_hook=float)  # 1e400 is JSON: infinite here, refused where typed
_ENCODER = msgspec.json.Encoder()
_STRUCT_TYPE = pa.struct(list(PARSE_SCHEMA))


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


class _Reasons:
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

    def mapped(self, index: Rows) -> _Reasons:
        """The same collector, for a subset of rows: local row k is row index[k] here."""
        return _Reasons(self.rows, self.codes, index if self.index is None else self.index[index])

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


# -- 1. byte screening -------------------------------------------------------------------------
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_OPEN, _CLOSE = np.zeros(256, np.int8), np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_CLOSE[[ord("]"), ord("}")]] = 1


def nesting_depth(message: bytes) -> int:
    """The deepest nesting of arrays and objects, strings skipped (an upper bound on bad JSON)."""
    skeleton = np.frombuffer(_STRINGS.sub(b"", message), dtype=np.uint8)
    if not len(skeleton):
        return 0
    return int(np.cumsum(_OPEN[skeleton].astype(np.int32) - _CLOSE[skeleton]).max(initial=0))


def _screen(message: bytes, max_bytes: int) -> str | None:
    """The terminal reason of a message not worth decoding, or None."""
    if len(message) > max_bytes:
        return "oversized"
    try:
        message.decode("utf-8")  # measured: 0.2 µs a message
    except UnicodeDecodeError:
        return "not_utf8"
    # A depth bound of our own: the decoder's depends on the caller's stack.
    if (
        message.count(b"[") + message.count(b"{") > MAX_NESTING
        and nesting_depth(message) > MAX_NESTING
    ):
        return "too_deep"
    return None


def _no_repeats(pairs: list[tuple[str, Any]]) -> Event:
    if len(pairs) != len({key for key, _ in pairs}):
        raise _RepeatedKey
    return dict(pairs)


class _RepeatedKey(ValueError):
    pass


_QUOTE_SPACE = re.compile(rb'"[ \t\r\n]')


def _repeats_a_key(message: bytes, decoded: Event | None = None) -> bool:
    """Whether an object of this (valid JSON) message repeats a key. Without escapes, ``":``
    ends exactly the keys, so a compact message with as many keys as its decoding (nulls kept,
    foreign fields dropped) repeats none; a message holding a repeated string might. Only the
    others take the exact, slow check."""
    if b"\\" not in message and not _QUOTE_SPACE.search(message):
        if decoded is not None and message.count(b'":') == _ENCODER.encode(decoded).count(b'":'):
            return False
        strings = message.split(b'"')[1::2]
        if len(strings) == len(set(strings)):
            return False
    try:
        json.loads(message, object_pairs_hook=_no_repeats)
    except _RepeatedKey:
        return True
    except (ValueError, RecursionError):
        return False  # msgspec decided it is JSON; its verdict stands
    return False


# -- 2. the fast path ---------------------------------------------------------------------------
def _fast(message: bytes) -> Event | None:
    """The event as a dict of its own contract's fields (type and version); None when the
    per-record path must decide (any refusal, of any kind)."""
    try:
        head = _HEAD.decode(message)
        decoder = _CONTRACT_DECODERS.get((head.event_type, head.schema_version))
        if decoder is None or type(head.schema_version) is not int:
            return None  # type or version absent, unknown or mistyped: the per-record path names it
        event = decoder.decode(message)
    except (msgspec.MsgspecError, RecursionError, ValueError, TypeError):
        return None
    if _ENCODER.encode(event) != message and _repeats_a_key(message, event):
        return None
    return event


# -- 3. the per-record path ---------------------------------------------------------------------
def _per_record(message: bytes, bad: list[str]) -> Event | None:
    """The message's own-contract fields as plain values, wrong ones turned into reasons; None
    when it is not one JSON object."""
    try:
        obj = _PLAIN.decode(message)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return None
    if not isinstance(obj, dict) or _repeats_a_key(message):
        return None
    event_type, version = obj.get("event_type"), obj.get("schema_version")
    if isinstance(version, float) and version.is_integer() and abs(version) <= SAFE_INTEGER:
        version = int(version)
    tree = (
        CONTRACT_TREES.get((event_type, version), ENVELOPE_TREE)
        if isinstance(event_type, str) and type(version) is int
        else ENVELOPE_TREE
    )
    return _coerce(obj, tree, "", bad)


def _coerce(obj: Event, tree: Tree, prefix: str, bad: list[str]) -> Event:
    """Keeps what the tree types; a value of the wrong JSON type or beyond range becomes a
    reason."""
    out: Event = {}
    for name, kind in tree.items():
        value = obj.get(name)
        if value is None:
            continue
        path = f"{prefix}{name}"
        if isinstance(kind, dict):
            if isinstance(value, dict):
                out[name] = _coerce(value, kind, path + ".", bad)
            else:
                bad.append(f"bad_format:{path}")
        elif kind == STRING:
            if isinstance(value, str):
                out[name] = value
            else:
                bad.append(f"bad_format:{path}")
        elif kind == BOOLEAN:
            if isinstance(value, bool):
                out[name] = value
            else:
                bad.append(f"bad_format:{path}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            bad.append(f"bad_format:{path}")
        elif kind == INTEGER:
            if isinstance(value, float) and not value.is_integer():
                bad.append(f"bad_format:{path}")
            elif abs(value) > SAFE_INTEGER:
                bad.append(f"out_of_range:{path}")
            else:
                out[name] = int(value)
        elif (isinstance(value, int) and abs(value) > NUMBER_LIMIT) or abs(value) > NUMBER_LIMIT:
            bad.append(f"out_of_range:{path}")
        else:
            out[name] = float(value)
    return out


# -- 4. one table of what could be read ---------------------------------------------------------
def _tabulate(readable: list[Event]) -> tuple[pa.Table, Rows]:
    """The readable messages as one table; positions (into ``readable``) of those it holds."""
    try:
        return pa.Table.from_struct_array(pa.array(readable, type=_STRUCT_TYPE)), np.arange(
            len(readable)
        )
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        # A defect: keep every message we can.
        log.error(
            "validation: Arrow refused decoded messages (%s); converting them one by one",
            type(exc).__name__,
        )
    rows: list[pa.Array] = []
    kept: list[int] = []
    for k, item in enumerate(readable):
        try:
            rows.append(pa.array([item], type=_STRUCT_TYPE))
            kept.append(k)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            continue
    if not rows:
        return PARSE_SCHEMA.empty_table(), np.zeros(0, dtype=np.int64)
    return pa.Table.from_struct_array(pa.concat_arrays(rows)), np.array(kept, dtype=np.int64)


# -- 5. contract checks, vectorised ------------------------------------------------------------
class _Columns:
    """Flattened columns of the parsed table by dotted path, with NumPy views cached. A view of
    some rows (``of(rows)``) takes only the leaves its checks read, when they read them."""

    def __init__(
        self,
        table: pa.Table,
        escaped: Mask,
        parent: _Columns | None = None,
        rows: pa.Array | None = None,
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
        return _Columns(self.table, self.escaped[rows], self, pa.array(rows, pa.int64()))

    def arrow(self, path: str) -> pa.Array:
        if path not in self._cols:
            if self.parent is not None:
                self._cols[path] = self.parent.arrow(path).take(self.rows)
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
                ok = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)
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
        return _np(pc.greater(pc.utf8_length(self.arrow(path)), max_chars))

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
            at = pc.cast(arr.take(pa.array(edge)), pa.timestamp("us", tz="UTC"))
            low, high = (
                pa.scalar(_EARLIEST, pa.timestamp("us", tz="UTC")),
                pa.scalar(_LATEST, pa.timestamp("us", tz="UTC")),
            )
            out[edge] = _np(pc.or_(pc.less(at, low), pc.greater(at, high)))
        self._cache[key] = out
        return out


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
        for country, market in markets.active().rules.items():
            pattern = getattr(market, spec.by_country)
            if pattern:
                ok &= ~(_np(pc.equal(market_country, country)) & ~cols.matches(spec.path, pattern))
    return ok


@lru_cache(maxsize=4)
def _market_pairs(registry: markets.Markets) -> pa.Array:
    return pa.array(registry.pairs())


def _market_country(cols: _Columns, event_type: str) -> pa.Array:
    """The row's country where it is one of its region's markets, else ''."""
    country = pc.fill_null(cols.arrow(COUNTRY_PATH[event_type]), "")
    pair = pc.binary_join_element_wise(pc.fill_null(cols.arrow("region"), ""), country, "|")
    return pc.if_else(pc.is_in(pair, value_set=_market_pairs(markets.active())), country, "")


def _condition(cols: _Columns, name: str, market_country: pa.Array | None) -> Mask:
    if name == "always":
        return np.ones(cols.n, dtype=bool)
    if name == "never":
        return np.zeros(cols.n, dtype=bool)
    if name == "tax_id_market":
        return _np(
            pc.is_in(market_country, value_set=pa.array(markets.active().tax_id_countries()))
        )
    if name == "state_market":
        return _np(pc.is_in(market_country, value_set=pa.array(markets.active().state_countries())))
    if name == "consent_region":
        return cols.isin("region", markets.active().consent_regions)
    if name == "without_first_order":
        return ~cols.present("payload.first_order.order_id", STRING)
    if name == "not_cancelled":
        return cols.present("payload.action", STRING) & ~cols.equals("payload.action", "cancelled")
    raise KeyError(name)


def _check_fields(
    cols: _Columns,
    specs: Iterable[FieldSpec],
    applies: Mask,
    reasons: _Reasons,
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


def _check(table: pa.Table, escaped: Mask, reasons: _Reasons) -> None:
    cols = _Columns(table, escaped)
    has_type = cols.present("event_type", STRING)
    reasons.add(~has_type, "missing:event_type")
    reasons.add(has_type & ~cols.isin("event_type", EVENT_TYPES), "unknown_event_type")
    version = cols.numbers("schema_version")
    has_version = cols.present("schema_version", INTEGER)
    # A mistyped one was dropped (and named) while decoding.
    reasons.add(has_type & ~has_version, "missing:schema_version")
    _check_fields(cols, _CORE_ENVELOPE, np.ones(cols.n, dtype=bool), reasons, None)

    # Payload checks run on each type's own rows: rare types cost little, frequent ones no more.
    for event_type in EVENT_TYPES:
        of_type = cols.equals("event_type", event_type) & has_version
        supported = of_type & np.isin(version, SCHEMA_VERSIONS[event_type])
        reasons.add(of_type & ~supported, "unknown_schema_version")
        rows = np.flatnonzero(supported)
        if len(rows):
            _check_type(event_type, cols.of(rows), version[rows], reasons.mapped(rows))

    # Duplicates: a later message with an event id already seen in this batch.
    has_id = cols.present("event_id", STRING)
    codes = pc.fill_null(pc.dictionary_encode(cols.arrow("event_id")).indices, -1).to_numpy(
        zero_copy_only=False
    )
    _, first = np.unique(np.where(has_id, codes, -1), return_index=True)
    repeated = np.ones(cols.n, dtype=bool)
    repeated[first] = False
    reasons.add(has_id & repeated, "duplicate_event_id")


def _check_type(
    event_type: str, cols: _Columns, version: npt.NDArray[np.float64], reasons: _Reasons
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


def _check_enrollment(cols: _Columns, market_country: pa.Array, reasons: _Reasons) -> None:
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
        rules = markets.active().rules
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
        cols.isin("region", markets.active().consent_regions) & refused,
        "consent_not_granted:payload.consents.data_processing",
    )
    reasons.add(
        _np(pc.equal(cols.arrow("payload.sponsor_id"), cols.arrow("partner_id"))), "sponsor_is_self"
    )


# -- the call ----------------------------------------------------------------------------------
VALID_COLUMNS = (
    "event_id",
    "event_type",
    "region",
    "source_system",
    "partner_id",
    "correlation_id",
)


def validate_batch(
    messages: Sequence[bytes | None], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ValidationResult:
    """Validates raw message values; every message comes out once, valid or quarantined."""
    values = [m if isinstance(m, bytes) else bytes(m) if m is not None else b"" for m in messages]
    reasons = _Reasons()
    readable: list[Event] = []
    index: list[int] = []
    # Hundreds of thousands of small dicts, no cycles among them: the cyclic collector would only
    # rescan them again and again (measured: a third of the decode time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _decode_all(values, max_message_bytes, reasons, readable, index)
    finally:
        if collecting:
            gc.enable()
    return _validated(values, reasons, readable, index)


def _decode_all(
    messages: list[bytes],
    max_message_bytes: int,
    reasons: _Reasons,
    readable: list[Event],
    index: list[int],
) -> None:
    for i, message in enumerate(messages):
        terminal = _screen(message, max_message_bytes)
        if terminal is not None:
            reasons.add_one(i, terminal)
            continue
        event = _fast(message)
        if event is None:
            bad: list[str] = []
            event = _per_record(message, bad)
            if event is None:
                reasons.add_one(i, "unparsable")
                continue
            for code in bad:
                reasons.add_one(i, code)
        readable.append(event)
        index.append(i)


def _validated(
    messages: list[bytes], reasons: _Reasons, readable: list[Event], index: list[int]
) -> ValidationResult:
    parsed, held = _tabulate(readable)
    source_index = (
        np.asarray(index, dtype=np.int64)[held] if len(held) else np.zeros(0, dtype=np.int64)
    )
    for k in np.setdiff1d(np.arange(len(readable)), held):
        reasons.add_one(index[k], "validator_error")
    escaped = np.fromiter(
        (b"\\" in messages[i] for i in source_index), dtype=bool, count=len(source_index)
    )
    _check(parsed, escaped, reasons.mapped(source_index))
    by_row = reasons.by_row()

    bad_rows = np.isin(source_index, np.fromiter(by_row, dtype=np.int64, count=len(by_row)))
    valid = _valid_table(parsed.filter(pa.array(~bad_rows)), source_index[~bad_rows])
    quarantine = _quarantine_table(messages, by_row, parsed, source_index)
    if valid.num_rows + quarantine.num_rows != len(messages):
        raise AssertionError("validation: a message was lost or doubled")
    return ValidationResult(valid=valid, quarantine=quarantine)


def validate_guarded(
    messages: Sequence[bytes | None], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ValidationResult:
    """``validate_batch``, and should it raise, the batch bisected: the halves that validate are
    kept, each message that alone makes it raise is quarantined as ``validator_error`` with its
    raw bytes. The region never stops on input; the error is logged (no message content)."""
    try:
        return validate_batch(messages, max_message_bytes)
    except Exception as exc:
        log.error(
            "validation raised %s on a batch of %d messages; bisecting to quarantine the culprits",
            type(exc).__name__,
            len(messages),
        )
    results: list[tuple[int, ValidationResult]] = []
    culprits: list[int] = []

    def split(lo: int, hi: int) -> None:
        if lo >= hi:
            return
        try:
            results.append((lo, validate_batch(messages[lo:hi], max_message_bytes)))
            return
        except Exception:
            if hi - lo == 1:
                culprits.append(lo)
                return
        mid = (lo + hi) // 2
        split(lo, mid)
        split(mid, hi)

    split(0, len(messages))
    log.error("validation: %d message(s) quarantined as validator_error", len(culprits))
    return _combined(messages, results, culprits)


def _combined(
    messages: Sequence[bytes | None],
    results: list[tuple[int, ValidationResult]],
    culprits: list[int],
) -> ValidationResult:
    """Parts validated apart, as one result: indices shifted, duplicates across parts found
    again."""

    def shifted(table: pa.Table, offset: int) -> pa.Table:
        column = table.schema.get_field_index("source_index")
        return table.set_column(
            column, "source_index", pc.add(table.column("source_index"), offset)
        )

    valid = pa.concat_tables(
        [shifted(r.valid, lo) for lo, r in results]
        or [_valid_table(PARSE_SCHEMA.empty_table(), np.zeros(0, np.int64))]
    )
    quarantine = [shifted(r.quarantine, lo) for lo, r in results]

    def refused(indices: list[int], reason: str, known: pa.Table | None = None) -> pa.Table:
        return pa.table(
            {
                "source_index": pa.array(indices, pa.int64()),
                "reasons": pa.array([[reason]] * len(indices), pa.list_(pa.string())),
                "raw": pa.array([messages[i] or b"" for i in indices], pa.binary()),
                **{
                    name: known.column(name)
                    if known is not None
                    else pa.nulls(len(indices), pa.string())
                    for name in ("event_id", "event_type", "partner_id", "region")
                },
            },
            schema=QUARANTINE_SCHEMA,
        )

    quarantine.append(refused(culprits, "validator_error"))
    # An id first seen in an earlier part makes later copies duplicates, as in one batch.
    valid = valid.sort_by("source_index")
    ids = valid.column("event_id").to_pylist()
    seen: set[str | None] = set()
    repeat: list[int] = []
    for k, event_id in enumerate(ids):
        if event_id in seen:
            repeat.append(k)
        seen.add(event_id)
    if repeat:
        moved = valid.take(pa.array(repeat))
        quarantine.append(
            refused(moved.column("source_index").to_pylist(), "duplicate_event_id", moved)
        )
        keep = np.ones(valid.num_rows, dtype=bool)
        keep[repeat] = False
        valid = valid.filter(pa.array(keep))
    return ValidationResult(
        valid=valid, quarantine=pa.concat_tables(quarantine).sort_by("source_index")
    )


def _valid_table(parsed: pa.Table, source_index: Rows) -> pa.Table:
    columns = {"source_index": pa.array(source_index, pa.int64())}
    for name in VALID_COLUMNS:
        columns[name] = parsed.column(name)
    columns["schema_version"] = pc.cast(parsed.column("schema_version"), pa.int16())
    columns["partner_version"] = pc.cast(parsed.column("partner_version"), pa.int64())
    columns["occurred_at"] = pc.cast(parsed.column("occurred_at"), pa.timestamp("us", tz="UTC"))
    columns["payload"] = parsed.column("payload")
    return pa.table(columns)


QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_index", pa.int64()),
        ("reasons", pa.list_(pa.string())),
        ("raw", pa.binary()),
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("partner_id", pa.string()),
        ("region", pa.string()),
    ]
)


def _quarantine_table(
    messages: list[bytes], by_index: dict[int, list[str]], parsed: pa.Table, source_index: Rows
) -> pa.Table:
    indices = np.array(sorted(by_index), dtype=np.int64)
    # What could be read of each refused message (nothing for those that never parsed).
    position = np.searchsorted(source_index, indices)
    readable = (
        (position < len(source_index))
        & (source_index[np.minimum(position, max(len(source_index) - 1, 0))] == indices)
        if len(source_index)
        else np.zeros(len(indices), bool)
    )
    take = pa.array(np.where(readable, position, 0), pa.int64(), mask=~readable)
    known = (
        parsed.select(["event_id", "event_type", "partner_id", "region"]).take(take)
        if len(source_index)
        else None
    )
    return pa.table(
        {
            "source_index": pa.array(indices, pa.int64()),
            "reasons": pa.array([by_index[int(i)] for i in indices], pa.list_(pa.string())),
            "raw": pa.array([messages[int(i)] for i in indices], pa.binary()),
            **{
                name: known.column(name)
                if known is not None
                else pa.nulls(len(indices), pa.string())
                for name in ("event_id", "event_type", "partner_id", "region")
            },
        },
        schema=QUARANTINE_SCHEMA,
    )
