"""Batch validation: raw Kafka message values in, a table of valid rows and quarantine rows out.

Every input message comes out exactly once: valid, or quarantined with every reason code that
applies (``REASON_CODES`` lists their families). The work is vectorised over the batch:

1. byte-level screening (size, UTF-8, "starts like an object");
2. one bulk parse of the batch as newline-delimited JSON with Arrow, against the parse schema
   derived from the contracts, in windows of lines. A message the bulk parser refuses is cut
   out and the rest of its window is parsed again in bulk;
3. only refused messages take a per-record path: ``json.loads`` decides whether they are JSON at
   all, and fields of the wrong JSON type become ``bad_format:<field>`` reasons;
4. the contract checks (mandatory fields by type, version, region and market; formats; semantic
   rules; duplicate event ids) run as Arrow/NumPy column operations over the parsed table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from .contracts import markets
from .contracts.spec import (
    BOOLEAN,
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
    all_fields,
)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
REASON_CODES = (
    "oversized", "not_utf8", "unparsable", "unknown_event_type", "unknown_schema_version", "duplicate_event_id",
    "missing:<field>", "bad_format:<field>", "sponsor_missing", "country_not_in_region", "under_age",
    "consent_not_granted:<field>", "sponsor_is_self",
)
# Lines per bulk read. Each read costs ~0.6 ms of setup and each refused line one re-read of
# what came before it in its window; with ~0.3 % refusals, sqrt(2·setup/(row cost·rate)) ≈ 350.
PARSE_WINDOW = 384
_ROW_IN_ERROR = re.compile(r"in row (\d+)")
_KIND_TYPE = {STRING: pa.string(), "number": pa.float64(), INTEGER: pa.float64(), BOOLEAN: pa.bool_()}
_MISSING_PATH = {spec.missing_code: spec.path for spec in all_fields().values()} | {
    spec.missing_code: spec.path for specs in PAYLOADS.values() for spec in specs} | {"missing:event_type": "event_type", "missing:schema_version": "schema_version"}
_CORE_ENVELOPE = tuple(f for f in ENVELOPE if f.versions == (1, 2) and f.path not in ("event_type", "schema_version"))


# -- the parse schema, derived from the contracts ---------------------------------------------------
def _schema_tree() -> dict:
    tree: dict = {}
    for path, spec in all_fields().items():
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            assert isinstance(node, dict), f"{path}: {part} is both a field and an object"
        node[leaf] = spec.kind
    return tree


def _arrow_type(node) -> pa.DataType:
    if isinstance(node, dict):
        return pa.struct([pa.field(name, _arrow_type(child)) for name, child in node.items()])
    # Numbers parse as float64: an int64 column refuses 1.5 without saying which row; the
    # integer check is a contract check instead.
    return _KIND_TYPE[node]


SCHEMA_TREE = _schema_tree()
PARSE_SCHEMA: pa.Schema = pa.schema([pa.field(name, _arrow_type(child)) for name, child in SCHEMA_TREE.items()])


@dataclass
class ValidationResult:
    valid: pa.Table  # one row per valid event, in input order; `source_index` = position in the batch
    quarantine: pa.Table  # one row per refused message: `source_index`, `reasons`, `raw`, and what could be read

    @property
    def duplicates(self) -> int:
        """Quarantined only because an earlier message of the batch had the same event id."""
        reasons = self.quarantine.column("reasons").to_pylist()
        return sum(1 for r in reasons if r == ["duplicate_event_id"])


class _Reasons:
    """Reason codes collected as (row indices, code) pairs: cheap to add in bulk."""

    def __init__(self, rows: list | None = None, codes: list | None = None, index: np.ndarray | None = None):
        self.rows: list[np.ndarray] = [] if rows is None else rows
        self.codes: list[str] = [] if codes is None else codes
        self.index = index

    def add(self, rows: np.ndarray, code: str) -> None:
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows):
            rows = rows.astype(np.int64, copy=False)
            self.rows.append(rows if self.index is None else self.index[rows])
            self.codes.append(code)

    def mapped(self, index: np.ndarray) -> _Reasons:
        """The same collector, for a subset of rows: local row k is row index[k] here."""
        return _Reasons(self.rows, self.codes, index if self.index is None else self.index[index])

    def by_row(self) -> dict[int, list[str]]:
        out: dict[int, set[str]] = {}
        for rows, code in zip(self.rows, self.codes):
            for row in rows.tolist():
                out.setdefault(row, set()).add(code)
        return {row: _without_consequences(codes) for row, codes in out.items()}


def _without_consequences(codes: set[str]) -> list[str]:
    """A value of the wrong JSON type is dropped while parsing: report the bad format only,
    not the field's absence that follows from it."""
    bad = [c.removeprefix("bad_format:") for c in codes if c.startswith("bad_format:")]
    if bad:
        codes = {c for c in codes if not any(_MISSING_PATH.get(c, "\0") == p or _MISSING_PATH.get(c, "\0").startswith(p + ".") for p in bad)}
    return sorted(codes)


# -- 1. byte-level screening -------------------------------------------------------------------------
_OK, _NOT_UTF8, _NOT_OBJECT = 0, 1, 2


def _classify(message: bytes) -> int:
    try:
        message.decode("utf-8")  # measured: 0.2 µs a message, faster than one decode of the batch
    except UnicodeDecodeError:
        return _NOT_UTF8
    # Anything that does not start like a JSON object (empty, scalars, arrays) is not an event.
    return _OK if message[:1] == b"{" or message.lstrip()[:1] == b"{" else _NOT_OBJECT


def _screen(messages: Sequence[bytes], max_bytes: int, reasons: _Reasons) -> np.ndarray:
    """Indices of the messages worth parsing; the others get their terminal reason."""
    lengths = np.fromiter(map(len, messages), dtype=np.int64, count=len(messages))
    oversized = lengths > max_bytes
    reasons.add(oversized, "oversized")
    candidates = np.flatnonzero(~oversized)
    verdict = np.fromiter(map(_classify, (messages[i] for i in candidates)), dtype=np.int8, count=len(candidates))
    reasons.add(candidates[verdict == _NOT_UTF8], "not_utf8")
    reasons.add(candidates[verdict == _NOT_OBJECT], "unparsable")
    return candidates[verdict == _OK]


# -- 2. bulk parse with cut-out of refused messages --------------------------------------------------
def _read(buffer: pa.Buffer, lo: int, hi: int, starts: np.ndarray) -> pa.Table:
    view = buffer.slice(int(starts[lo]), int(starts[hi] - starts[lo]))
    return pa_json.read_json(
        pa.BufferReader(view),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=view.size + 1),  # one block: row numbers are absolute
        parse_options=pa_json.ParseOptions(explicit_schema=PARSE_SCHEMA, unexpected_field_behavior="ignore"))


def _lines_containing(joined: bytes, starts: np.ndarray, words: tuple[bytes, ...]) -> set[int]:
    found: set[int] = set()
    for word in words:
        pos = joined.find(word)
        while pos != -1:
            line = int(np.searchsorted(starts, pos, side="right")) - 1
            found.add(line)
            pos = joined.find(word, int(starts[line + 1]))
    return found


def _bulk_parse(lines: list[bytes]) -> tuple[list[tuple[int, pa.Table]], list[int]]:
    """Parses lines (one message each) in bulk; returns (first line, table) pieces and refused lines."""
    # A raw newline inside a JSON text can only be whitespace: blank it so one message is one line.
    lines = [m if b"\n" not in m and b"\r" not in m else m.replace(b"\n", b" ").replace(b"\r", b" ") for m in lines]
    starts = np.concatenate(([0], np.cumsum([len(m) + 1 for m in lines])))
    joined = b"\n".join(lines) + b"\n"
    buffer = pa.py_buffer(joined)
    pieces: list[tuple[int, pa.Table]] = []
    # The bulk parser accepts NaN and Infinity, which JSON does not: lines holding those words
    # (rare; also inside strings) take the strict per-record path.
    refused: list[int] = sorted(_lines_containing(joined, starts, (b"NaN", b"Infinity")))
    # Windows bound the cost of a refusal: the reader scans its whole input before parsing, so
    # cutting a message out of one huge input would rescan the batch each time.
    bounds = sorted(set(range(0, len(lines), PARSE_WINDOW)) | set(refused) | {r + 1 for r in refused} | {len(lines)})
    stack = [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if lo not in set(refused)]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        try:
            table = _read(buffer, lo, hi, starts)
        except pa.ArrowInvalid as exc:
            found = _ROW_IN_ERROR.search(str(exc))
            bad = lo + int(found.group(1)) if found else hi
            if hi - lo == 1:
                refused.append(lo)
            elif bad >= hi:  # no usable row number: find the culprit by halving
                mid = (lo + hi) // 2
                stack += [(lo, mid), (mid, hi)]
            else:
                # The parser counts objects, not lines, and blames the row after trailing
                # garbage: the reported line and the one before go to the per-record path
                # (which accepts a good one), the lines around them back to bulk parsing.
                first_suspect = max(lo, bad - 1)
                refused += range(first_suspect, bad + 1)
                stack += [(lo, first_suspect), (bad + 1, hi)]
            continue
        if table.num_rows == hi - lo:
            pieces.append((lo, table))
        elif hi - lo == 1:
            refused.append(lo)
        else:  # a line held more than one object: find it by halving
            mid = (lo + hi) // 2
            stack += [(lo, mid), (mid, hi)]
    return pieces, refused


# -- 3. the per-record path for what the bulk parser refused ------------------------------------------
def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _coerce(obj: dict, tree: dict, prefix: str, bad: list[str]) -> dict:
    """Keeps what matches the parse schema; a value of the wrong JSON type becomes a reason."""
    out = {}
    for name, kind in tree.items():
        if name not in obj or obj[name] is None:
            continue
        value, path = obj[name], f"{prefix}{name}"
        if isinstance(kind, dict):
            if isinstance(value, dict):
                out[name] = _coerce(value, kind, path + ".", bad)
            else:
                bad.append(f"bad_format:{path}")
        elif kind == STRING:
            out[name] = value if isinstance(value, str) else bad.append(f"bad_format:{path}")
        elif kind == BOOLEAN:
            out[name] = value if isinstance(value, bool) else bad.append(f"bad_format:{path}")
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            out[name] = value if ok else bad.append(f"bad_format:{path}")
    return {k: v for k, v in out.items() if v is not None}


def _per_record(messages: Sequence[bytes], indices: list[int], reasons: _Reasons) -> tuple[list[int], list[bytes]]:
    """Returns the messages that are JSON objects, coerced to the schema, with their indices."""
    kept, lines = [], []
    for i in indices:
        try:
            obj = json.loads(messages[i], parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            reasons.add(np.array([i]), "unparsable")
            continue
        bad: list[str] = []
        coerced = _coerce(obj, SCHEMA_TREE, "", bad)
        for code in bad:
            reasons.add(np.array([i]), code)
        kept.append(i)
        lines.append(json.dumps(coerced, ensure_ascii=False, allow_nan=False).encode())
    return kept, lines


# -- 4. contract checks, vectorised --------------------------------------------------------------------
class _Columns:
    """Flattened columns of the parsed table by dotted path, with NumPy views cached. A view of
    some rows (``of(rows)``) takes only the leaves its checks read, when they read them."""

    def __init__(self, table: pa.Table, parent: _Columns | None = None, rows: pa.Array | None = None):
        self.table = table
        self.parent, self.rows = parent, rows
        self.n = len(rows) if rows is not None else table.num_rows
        self._cols: dict[str, pa.Array] = {}
        self._cache: dict[tuple, np.ndarray] = {}

    def of(self, rows: np.ndarray) -> _Columns:
        return _Columns(self.table, self, pa.array(rows, pa.int64()))

    def arrow(self, path: str) -> pa.Array:
        if path not in self._cols:
            if self.parent is not None:
                self._cols[path] = self.parent.arrow(path).take(self.rows)
            else:
                head, *rest = path.split(".")
                arr = self.table.column(head).combine_chunks()
                for part in rest:
                    arr = pc.struct_field(arr, part)
                self._cols[path] = arr
        return self._cols[path]

    def present(self, path: str, kind: str) -> np.ndarray:
        key = ("present", path)
        if key not in self._cache:
            arr = self.arrow(path)
            if kind == STRING:
                ok = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)
            else:
                ok = pc.is_valid(arr)
            self._cache[key] = _np(ok)
        return self._cache[key]

    def equals(self, path: str, value) -> np.ndarray:
        return _np(pc.equal(self.arrow(path), value))

    def isin(self, path: str, values) -> np.ndarray:
        return _np(pc.is_in(self.arrow(path), value_set=pa.array(list(values), type=self.arrow(path).type)))

    def matches(self, path: str, pattern: str) -> np.ndarray:
        key = ("re", path, pattern)
        if key not in self._cache:
            self._cache[key] = _np(pc.match_substring_regex(self.arrow(path), pattern))
        return self._cache[key]

    def numbers(self, path: str) -> np.ndarray:
        return self.arrow(path).to_numpy(zero_copy_only=False)


def _np(boolean: pa.Array) -> np.ndarray:
    return pc.fill_null(boolean, False).to_numpy(zero_copy_only=False)


def _valid_dates(cols: _Columns, path: str) -> np.ndarray:
    """Calendar-valid ISO dates (2023-02-30 matches the pattern but is no date)."""
    arr = cols.arrow(path)
    parsed = pc.strptime(arr, format="%Y-%m-%d", unit="s", error_is_null=True)
    return cols.matches(path, FORMATS["date"]) & _np(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), arr))


def _format_ok(cols: _Columns, spec: FieldSpec, market_country: pa.Array | None) -> np.ndarray:
    """True where the value (if present) is well formed; rows without a value pass."""
    ok = np.ones(cols.n, dtype=bool)
    if spec.format == "date":
        ok &= _valid_dates(cols, spec.path)
    elif spec.format:
        ok &= cols.matches(spec.path, FORMATS[spec.format])
    if spec.enum:
        ok &= cols.isin(spec.path, spec.enum)
    if spec.kind in ("number", INTEGER):
        values = cols.numbers(spec.path)
        ok &= ~(~np.isfinite(values) & cols.present(spec.path, spec.kind))
        with np.errstate(invalid="ignore"):
            if spec.minimum is not None:
                ok &= ~(values < spec.minimum)
            if spec.kind == INTEGER:
                ok &= ~(np.isfinite(values) & (values != np.floor(values)))
    if spec.by_country and market_country is not None:
        for country, market in markets.MARKETS.items():
            pattern = getattr(market, spec.by_country)
            if pattern:
                ok &= ~(_np(pc.equal(market_country, country)) & ~cols.matches(spec.path, pattern))
    return ok


_MARKET_PAIRS = pa.array(sorted(f"{r}|{c}" for r, cs in markets.REGION_COUNTRIES.items() for c in cs))


def _market_country(cols: _Columns, event_type: str) -> pa.Array:
    """The row's country where it is one of its region's markets, else ''."""
    country = pc.fill_null(cols.arrow(COUNTRY_PATH[event_type]), "")
    pair = pc.binary_join_element_wise(pc.fill_null(cols.arrow("region"), ""), country, "|")
    return pc.if_else(pc.is_in(pair, value_set=_MARKET_PAIRS), country, "")


def _condition(cols: _Columns, name: str, market_country: pa.Array | None) -> np.ndarray:
    if name == "always":
        return np.ones(cols.n, dtype=bool)
    if name == "never":
        return np.zeros(cols.n, dtype=bool)
    if name == "tax_id_market":
        return _np(pc.is_in(market_country, value_set=pa.array(markets.tax_id_countries())))
    if name == "state_market":
        return _np(pc.is_in(market_country, value_set=pa.array(markets.state_countries())))
    if name == "consent_region":
        return cols.isin("region", markets.CONSENT_REGIONS)
    if name == "without_first_order":
        return ~cols.present("payload.first_order.order_id", STRING)
    if name == "not_cancelled":
        return cols.present("payload.action", STRING) & ~cols.equals("payload.action", "cancelled")
    raise KeyError(name)


def _check_fields(cols: _Columns, specs, applies: np.ndarray, reasons: _Reasons, market_country: pa.Array | None) -> None:
    for spec in specs:
        present = cols.present(spec.path, spec.kind)
        required = applies & _condition(cols, spec.required, market_country)
        reasons.add(required & ~present, spec.missing_code)
        if spec.checked_format:
            reasons.add(applies & present & ~_format_ok(cols, spec, market_country), spec.format_code)


def _check(table: pa.Table, reasons: _Reasons) -> None:
    cols = _Columns(table)
    has_type = cols.present("event_type", STRING)
    reasons.add(~has_type, "missing:event_type")
    reasons.add(has_type & ~cols.isin("event_type", EVENT_TYPES), "unknown_event_type")
    version = cols.numbers("schema_version")
    has_version = cols.present("schema_version", INTEGER)
    integral = has_version & (version == np.floor(np.nan_to_num(version)))
    reasons.add(has_type & ~has_version, "missing:schema_version")
    reasons.add(has_version & ~integral, "bad_format:schema_version")
    _check_fields(cols, _CORE_ENVELOPE, np.ones(cols.n, dtype=bool), reasons, None)

    # Payload checks run on each type's own rows: rare types cost little, frequent ones no more.
    for event_type in EVENT_TYPES:
        of_type = cols.equals("event_type", event_type) & integral
        supported = of_type & np.isin(version, SCHEMA_VERSIONS[event_type])
        reasons.add(of_type & ~supported, "unknown_schema_version")
        rows = np.flatnonzero(supported)
        if len(rows):
            _check_type(event_type, cols.of(rows), version[rows], reasons.mapped(rows))

    # Duplicates: a later message with an event id already seen in this batch.
    has_id = cols.present("event_id", STRING)
    codes = pc.fill_null(pc.dictionary_encode(cols.arrow("event_id")).indices, -1).to_numpy(zero_copy_only=False)
    _, first = np.unique(np.where(has_id, codes, -1), return_index=True)
    repeated = np.ones(cols.n, dtype=bool)
    repeated[first] = False
    reasons.add(has_id & repeated, "duplicate_event_id")


def _check_type(event_type: str, cols: _Columns, version: np.ndarray, reasons: _Reasons) -> None:
    market_country = _market_country(cols, event_type) if event_type in COUNTRY_PATH else None
    for v in SCHEMA_VERSIONS[event_type]:
        applies = version == v
        if applies.any():
            specs = [s for s in PAYLOADS[event_type] if v in s.versions] + [s for s in ENVELOPE if s.versions == (v,)]
            _check_fields(cols, specs, applies, reasons, market_country)
    if market_country is not None:
        path = COUNTRY_PATH[event_type]
        country_given = cols.isin("region", REGIONS) & cols.present(path, STRING) & cols.matches(path, FORMATS["country"])
        reasons.add(country_given & _np(pc.equal(market_country, "")), "country_not_in_region")
    if event_type == "partner.enrolled":
        _check_enrollment(cols, market_country, reasons)
    elif event_type == "partner.updated":
        changed = np.zeros(cols.n, dtype=bool)
        for spec in PAYLOADS[event_type]:
            if spec.path.startswith("payload.changes."):
                changed |= cols.present(spec.path, spec.kind)
        reasons.add(~changed, "missing:payload.changes")


def _ymd(arr: pa.Array) -> np.ndarray:
    return (pc.year(arr).to_numpy(zero_copy_only=False) * 10000 + pc.month(arr).to_numpy(zero_copy_only=False) * 100
            + pc.day(arr).to_numpy(zero_copy_only=False))


def _check_enrollment(cols: _Columns, market_country: pa.Array, reasons: _Reasons) -> None:
    both = _valid_dates(cols, "payload.date_of_birth") & cols.matches("occurred_at", FORMATS["timestamp"])
    if both.any():
        rows = pa.array(np.flatnonzero(both))
        dob = pc.strptime(cols.arrow("payload.date_of_birth").take(rows), format="%Y-%m-%d", unit="s")
        at = pc.strptime(pc.utf8_slice_codeunits(cols.arrow("occurred_at").take(rows), 0, 10), format="%Y-%m-%d", unit="s")
        min_age = pd.Series(market_country.take(rows).to_pandas()).map(lambda c: markets.MARKETS[c].min_age if c else 18).to_numpy(dtype=np.int64)
        too_young = np.zeros(cols.n, dtype=bool)
        too_young[np.flatnonzero(both)] = _ymd(dob) + min_age * 10000 > _ymd(at)
        reasons.add(too_young, "under_age")
    refused = _np(pc.equal(cols.arrow("payload.consents.data_processing"), False))
    reasons.add(cols.isin("region", markets.CONSENT_REGIONS) & refused, "consent_not_granted:payload.consents.data_processing")
    reasons.add(_np(pc.equal(cols.arrow("payload.sponsor_id"), cols.arrow("partner_id"))), "sponsor_is_self")


# -- the call --------------------------------------------------------------------------------------------
VALID_COLUMNS = ("event_id", "event_type", "region", "source_system", "partner_id", "correlation_id")


def validate_batch(messages: Sequence[bytes | None], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ValidationResult:
    """Validates raw message values; every message comes out once, valid or quarantined."""
    messages = [m if m is not None else b"" for m in messages]
    reasons = _Reasons()
    candidates = _screen(messages, max_message_bytes, reasons)

    pieces, refused_lines = _bulk_parse([messages[i] for i in candidates])
    tables = [(candidates[lo:lo + t.num_rows], t) for lo, t in pieces]
    kept, coerced_lines = _per_record(messages, sorted(int(candidates[k]) for k in refused_lines), reasons)
    if kept:
        recovered, lost = _bulk_parse(coerced_lines)
        for k in lost:  # JSON the bulk parser still refuses after coercion: not an event we can read
            reasons.add(np.array([kept[k]]), "unparsable")
        tables += [(np.asarray(kept[lo:lo + t.num_rows], dtype=np.int64), t) for lo, t in recovered]

    empty = PARSE_SCHEMA.empty_table()
    parsed = pa.concat_tables([t for _, t in tables] or [empty]).combine_chunks()
    source_index = np.concatenate([idx for idx, _ in tables]) if tables else np.zeros(0, dtype=np.int64)
    order = np.argsort(source_index, kind="stable")
    parsed, source_index = parsed.take(pa.array(order)), source_index[order]

    _check(parsed, reasons.mapped(source_index))
    by_row = reasons.by_row()

    bad_rows = np.isin(source_index, np.fromiter(by_row, dtype=np.int64, count=len(by_row)))
    valid = _valid_table(parsed.filter(pa.array(~bad_rows)), source_index[~bad_rows])
    quarantine = _quarantine_table(messages, by_row, parsed, source_index)
    assert valid.num_rows + quarantine.num_rows == len(messages), "a message was lost or doubled"
    return ValidationResult(valid=valid, quarantine=quarantine)


def _valid_table(parsed: pa.Table, source_index: np.ndarray) -> pa.Table:
    columns = {"source_index": pa.array(source_index, pa.int64())}
    for name in VALID_COLUMNS:
        columns[name] = parsed.column(name)
    columns["schema_version"] = pc.cast(parsed.column("schema_version"), pa.int16())
    columns["partner_version"] = pc.cast(parsed.column("partner_version"), pa.int64())
    columns["occurred_at"] = pc.cast(parsed.column("occurred_at"), pa.timestamp("us", tz="UTC"))
    columns["payload"] = parsed.column("payload")
    return pa.table(columns)


QUARANTINE_SCHEMA = pa.schema([
    ("source_index", pa.int64()), ("reasons", pa.list_(pa.string())), ("raw", pa.binary()),
    ("event_id", pa.string()), ("event_type", pa.string()), ("partner_id", pa.string()), ("region", pa.string()),
])


def _quarantine_table(messages, by_index: dict[int, list[str]], parsed: pa.Table, source_index: np.ndarray) -> pa.Table:
    indices = np.array(sorted(by_index), dtype=np.int64)
    # What could be read of each refused message (nothing for those that never parsed).
    position = np.searchsorted(source_index, indices)
    readable = (position < len(source_index)) & (source_index[np.minimum(position, max(len(source_index) - 1, 0))] == indices) if len(source_index) else np.zeros(len(indices), bool)
    take = pa.array(np.where(readable, position, 0), pa.int64(), mask=~readable)
    known = parsed.select(["event_id", "event_type", "partner_id", "region"]).take(take) if len(source_index) else None
    return pa.table({
        "source_index": pa.array(indices, pa.int64()),
        "reasons": pa.array([by_index[int(i)] for i in indices], pa.list_(pa.string())),
        "raw": pa.array([messages[int(i)] for i in indices], pa.binary()),
        **{name: known.column(name) if known is not None else pa.nulls(len(indices), pa.string()) for name in ("event_id", "event_type", "partner_id", "region")},
    }, schema=QUARANTINE_SCHEMA)
