"""The event contracts as trees, for the validator: the Arrow schema every readable message is
parsed into (one column per contract field of every type and version), and one typed msgspec
decoder per contract (type and version), which the fast path decodes each message with (into
Structs of that contract's fields)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from enrollment.contracts.spec import (
    BOOLEAN,
    ENVELOPE,
    EVENT_TYPES,
    INTEGER,
    NUMBER_LIMIT,
    SAFE_INTEGER,
    SCHEMA_VERSIONS,
    STRING,
    FieldSpec,
    all_fields,
    fields,
)

# A decoded message (or what of it is kept): a JSON object.
Event: TypeAlias = dict[str, Any]


# A contract as a tree: field name -> its kind (a leaf) or the tree of a nested object.
Tree: TypeAlias = dict[str, "Tree | str"]


Mask: TypeAlias = npt.NDArray[np.bool_]  # one flag per row


Rows: TypeAlias = npt.NDArray[np.int64]  # row positions


DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024


_KIND_TYPE = {STRING: pa.string(), "number": pa.float64(), INTEGER: pa.int64(), BOOLEAN: pa.bool_()}


CORE_ENVELOPE = tuple(
    f for f in ENVELOPE if f.versions == (1, 2) and f.path not in ("event_type", "schema_version")
)


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
    CORE_ENVELOPE + tuple(f for f in ENVELOPE if f.path in ("event_type", "schema_version"))
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


def _struct(name: str, tree: Tree) -> type[msgspec.Struct]:
    # Structs, not dicts: they decode faster, are read per field cheaply and, holding no cycles,
    # need no tracking by the cyclic collector. Encoded, an absent or null field is left out.
    fields: list[tuple[str, Any, None]] = []
    for key, node in tree.items():
        kind = _struct(f"{name}_{key}", node) if isinstance(node, dict) else _PY_KIND[node]
        fields.append((key, kind | None, None))
    return msgspec.defstruct(name, fields, gc=False, omit_defaults=True)


class _Head(msgspec.Struct):
    event_type: object = None
    schema_version: object = None


HEAD = msgspec.json.Decoder(_Head)


# One decoder per contract (type and version): it types that contract's fields and no other.
# Looked up with whatever a message holds as its type and version, hence the key's type.
CONTRACT_DECODERS: dict[tuple[object, object], msgspec.json.Decoder[Any]] = {
    key: msgspec.json.Decoder(_struct("C_" + re.sub(r"\W", "_", f"{key[0]}_v{key[1]}"), tree))
    for key, tree in CONTRACT_TREES.items()
}


# Each contract's own fields as Arrow types: what its decoded rows are built into first.
CONTRACT_TYPES: dict[tuple[str, int], pa.StructType] = {
    key: _arrow_type(tree) for key, tree in CONTRACT_TREES.items()
}


PLAIN = msgspec.json.Decoder(float_hook=float)  # 1e400 is JSON: infinite here, refused where typed


ENCODER = msgspec.json.Encoder()


STRUCT_TYPE = pa.struct(list(PARSE_SCHEMA))
