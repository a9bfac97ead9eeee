"""Validation's first steps, message by message: bytes screened (size, strict UTF-8, nesting
depth, repeated keys), the fast path (a strict typed decode into the message's own contract), the
per-record path for what the fast path refuses (plain values, each field of the contract kept or
a reason), and one Arrow table of everything that could be read."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, TypeAlias

import msgspec
import numpy as np
import pyarrow as pa
from msgspec.structs import astuple

from enrollment.contracts.spec import (
    BOOLEAN,
    INTEGER,
    MAX_NESTING,
    NUMBER_LIMIT,
    SAFE_INTEGER,
    STRING,
)
from enrollment.ingest.validation.reasons import Reasons
from enrollment.ingest.validation.trees import (
    CONTRACT_DECODERS,
    CONTRACT_TREES,
    CONTRACT_TYPES,
    ENCODER,
    ENVELOPE_TREE,
    HEAD,
    PLAIN,
    STRUCT_TYPE,
    Event,
    Rows,
    Tree,
)

log = logging.getLogger(__name__)


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


def screen(message: bytes, max_bytes: int) -> str | None:
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


def _repeats_a_key(message: bytes, encoded: bytes | None = None) -> bool:
    """Whether an object of this (valid JSON) message repeats a key. Without escapes, ``":``
    ends exactly the keys, so a compact message with as many keys as the encoding of its decoding
    (``encoded``: no key twice, nulls and foreign fields left out) repeats none; a message holding
    a repeated string might. Only the others take the exact, slow check."""
    if b"\\" not in message and not _QUOTE_SPACE.search(message):
        if encoded is not None and message.count(b'":') == encoded.count(b'":'):
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


Contract: TypeAlias = tuple[str, int]


def decoded(message: bytes) -> tuple[Contract, Any] | None:
    """The message's contract and the message decoded into it (a Struct of that contract's
    fields); None when the per-record path must decide (any refusal, of any kind)."""
    try:
        head = HEAD.decode(message)
        contract = (head.event_type, head.schema_version)
        decoder = CONTRACT_DECODERS.get(contract)
        if decoder is None or type(head.schema_version) is not int:
            return None  # type or version absent, unknown or mistyped: the per-record path names it
        event = decoder.decode(message)
    except (msgspec.MsgspecError, RecursionError, ValueError, TypeError):
        return None
    encoded = ENCODER.encode(event)
    if encoded != message and _repeats_a_key(message, encoded):
        return None
    return contract, event  # type: ignore[return-value]  # a decoder's key: a str and an int


def fast(message: bytes) -> Event | None:
    """The event as a dict of its own contract's fields (type and version), nulls left out; None
    when the per-record path must decide."""
    found = decoded(message)
    return None if found is None else msgspec.to_builtins(found[1])


def per_record(message: bytes, bad: list[str]) -> Event | None:
    """The message's own-contract fields as plain values, wrong ones turned into reasons; None
    when it is not one JSON object."""
    try:
        obj = PLAIN.decode(message)
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


# Messages decoded before their rows are built: small enough a share to stay in the CPU's caches
# while their fields are read (measured: reading them from a whole batch costs twice as much).
CHUNK = 4096


def read(messages: list[bytes], max_bytes: int, reasons: Reasons) -> tuple[pa.Table, Rows]:
    """Steps 1–4 over a batch: every readable message as a row of one table (grouped by contract,
    not in input order), and each row's position in ``messages``; the others get their
    reasons."""
    built: dict[Contract, list[pa.StructArray]] = {}
    built_at: dict[Contract, list[int]] = {}
    plain: list[Event] = []  # what the per-record path read
    plain_at: list[int] = []
    for lo in range(0, len(messages), CHUNK):
        groups: dict[Contract, tuple[list[Any], list[int]]] = {}
        for i in range(lo, min(lo + CHUNK, len(messages))):
            message = messages[i]
            # What screen() passes at a glance (ASCII is UTF-8; too few brackets to nest deeply),
            # tested here: this loop runs for every message.
            if not (
                len(message) <= max_bytes
                and message.isascii()
                and message.count(b"[") + message.count(b"{") <= MAX_NESTING
            ):
                terminal = screen(message, max_bytes)
                if terminal is not None:
                    reasons.add_one(i, terminal)
                    continue
            found = decoded(message)
            if found is not None:
                contract, event = found
                if contract in groups:
                    groups[contract][0].append(event)
                    groups[contract][1].append(i)
                else:
                    groups[contract] = ([event], [i])
                continue
            bad: list[str] = []
            read_plainly = per_record(message, bad)
            if read_plainly is None:
                reasons.add_one(i, "unparsable")
                continue
            for code in bad:
                reasons.add_one(i, code)
            plain.append(read_plainly)
            plain_at.append(i)
        for contract, (events, at) in groups.items():
            try:
                rows = _rows(events, CONTRACT_TREES[contract], CONTRACT_TYPES[contract])
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
                # A defect: the dicts' path keeps every message it can.
                log.error(
                    "validation: Arrow refused decoded messages (%s); taking them as dicts",
                    type(exc).__name__,
                )
                plain.extend(msgspec.to_builtins(events))
                plain_at.extend(at)
                continue
            built.setdefault(contract, []).append(rows)
            built_at.setdefault(contract, []).extend(at)
    parts = [_widened(pa.concat_arrays(rows), STRUCT_TYPE) for rows in built.values()]
    positions = [np.asarray(a, dtype=np.int64) for a in built_at.values()]
    rows, held = tabulate(plain)
    parts.append(rows)
    positions.append(np.asarray(plain_at, dtype=np.int64)[held])
    for k in np.setdiff1d(np.arange(len(plain)), held):
        reasons.add_one(plain_at[k], "validator_error")
    # Rows stay grouped by contract: the valid ones are put in input order when they are taken
    # out, one copy fewer of the batch.
    return pa.Table.from_struct_array(pa.concat_arrays(parts)), np.concatenate(positions)


def _rows(events: list[Any], tree: Tree, struct: pa.StructType) -> pa.StructArray:
    """Decoded events of one contract (Structs of one class) as Arrow rows: the Structs as
    tuples, transposed into one tuple per field (both in C, twice as fast as a pass per field)."""
    children: list[pa.Array] = []
    columns = zip(*map(astuple, events), strict=True)
    for (_, node), field, values in zip(tree.items(), struct, columns, strict=True):
        if not isinstance(node, dict):
            children.append(pa.array(values, field.type))
            continue
        absent = [v is None for v in values]
        if not any(absent):
            children.append(_rows(list(values), node, field.type))
        elif all(absent):
            children.append(pa.nulls(len(values), field.type))
        else:
            empty = type(next(v for v in values if v is not None))()
            rows = _rows([empty if v is None else v for v in values], node, field.type)
            children.append(
                pa.StructArray.from_arrays(
                    rows.flatten(), fields=list(field.type), mask=pa.array(absent, pa.bool_())
                )
            )
    return pa.StructArray.from_arrays(children, fields=list(struct))


def _widened(rows: pa.StructArray, struct: pa.StructType) -> pa.StructArray:
    """Rows of one contract with the fields of every contract (null where not its own)."""
    children: list[pa.Array] = []
    for field in struct:
        k = rows.type.get_field_index(field.name)
        if k < 0:
            children.append(pa.nulls(len(rows), field.type))
        elif isinstance(field.type, pa.StructType):
            children.append(_widened(rows.field(k), field.type))
        else:
            children.append(rows.field(k))
    return pa.StructArray.from_arrays(
        children, fields=list(struct), mask=rows.is_null() if rows.null_count else None
    )


def tabulate(readable: list[Event]) -> tuple[pa.StructArray, Rows]:
    """Messages read as dicts, as rows of the parse schema; positions (into ``readable``) of
    those it holds."""
    try:
        return pa.array(readable, type=STRUCT_TYPE), np.arange(len(readable))
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
            rows.append(pa.array([item], type=STRUCT_TYPE))
            kept.append(k)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            continue
    if not rows:
        return pa.array([], type=STRUCT_TYPE), np.zeros(0, dtype=np.int64)
    return pa.concat_arrays(rows), np.array(kept, dtype=np.int64)
