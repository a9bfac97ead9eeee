"""JSON Schema (draft 2020-12) of every contract, generated from the field specs and the market
tables, for the upstream teams who emit the events.

``python -m enrollment.contracts.json_schema`` rewrites the committed files under ``schemas/``;
a test fails when the committed files drift from the code. Age limits per market cannot be said
in JSON Schema: they are described in the text and enforced by the validator.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, overload

from enrollment.config import markets_in_force
from enrollment.contracts.spec import (
    BOOLEAN,
    CONDITIONS,
    COUNTRY_PATH,
    EVENT_TYPES,
    FORMATS,
    INTEGER,
    NUMBER_LIMIT,
    SAFE_INTEGER,
    SCHEMA_VERSIONS,
    FieldSpec,
    fields,
)

SCHEMA_DIR = Path(__file__).parent / "schemas"


# A JSON Schema document, or one of its subschemas, as built here (JSON object of JSON values).
JsonObject = dict[str, Any]


_JSON_TYPES = {"string": "string", "number": "number", INTEGER: "integer", BOOLEAN: "boolean"}


def _leaf(spec: FieldSpec) -> JsonObject:
    leaf: JsonObject = {"type": _JSON_TYPES[spec.kind]}
    if spec.description:
        leaf["description"] = spec.description
    if spec.format:
        leaf["pattern"] = FORMATS[spec.format]
    if spec.enum:
        leaf["enum"] = list(spec.enum)
    if spec.kind in ("number", INTEGER):  # what every downstream holds exactly
        leaf["minimum"] = (
            spec.minimum
            if spec.minimum is not None
            else -(SAFE_INTEGER if spec.kind == INTEGER else NUMBER_LIMIT)
        )
        leaf["maximum"] = SAFE_INTEGER if spec.kind == INTEGER else NUMBER_LIMIT
    if spec.kind == "string":
        leaf["maxLength"] = spec.max_length
    if spec.kind == "string" and not (spec.format or spec.enum or spec.by_country):
        leaf["pattern"] = r"\S"  # blank is missing
    if spec.required not in ("always", "never"):
        leaf["description"] = (
            leaf.get("description", "") + f" (mandatory {CONDITIONS[spec.required]})"
        ).strip()
    return leaf


def _nested(path: str, innermost: JsonObject) -> JsonObject:
    """{"properties": {"a": {"properties": {"b": innermost}}}} for path "a.b"."""
    node = innermost
    for part in reversed(path.split(".")):
        node = {"properties": {part: node}}
    return node


def _require(path: str) -> JsonObject:
    *parents, leaf = path.split(".")
    inner = {"required": [leaf]}
    return _nested(".".join(parents), inner) if parents else inner


def _if_value_in(path: str, values: Iterable[str]) -> JsonObject:
    *parents, leaf = path.split(".")
    condition = {"properties": {leaf: {"enum": sorted(values)}}, "required": [leaf]}
    return _nested(".".join(parents), condition) if parents else condition


def schema(event_type: str, version: int) -> JsonObject:
    root: JsonObject = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:enrollment:contract:{event_type}:v{version}",
        "title": f"{event_type} v{version}",
        "description": (
            f"Kafka message value of a {event_type} event, schema version {version};"
            " key: the partner id."
        ),
        "type": "object",
        "properties": {},
        "required": [],
    }
    conditions: list[JsonObject] = []
    for spec in fields(event_type, version):
        node = root
        parts = spec.path.split(".")
        for part in parts[:-1]:
            child = node["properties"].setdefault(
                part, {"type": "object", "properties": {}, "required": []}
            )
            if spec.required == "always" and part not in node["required"]:
                node["required"].append(part)
            node = child
        leaf = parts[-1]
        node["properties"][leaf] = {**node["properties"].get(leaf, {}), **_leaf(spec)}
        if spec.required == "always" and leaf not in node["required"]:
            node["required"].append(leaf)
        conditions += _conditions(spec, event_type)
    root["properties"]["event_type"] = {
        "const": event_type,
        "description": root["properties"]["event_type"].get("description", ""),
    }
    root["properties"]["schema_version"] = {
        "const": version,
        "description": "Version of this contract",
    }
    for region, countries in markets_in_force().countries.items():
        if event_type in COUNTRY_PATH:
            conditions.append(
                {
                    "if": _if_value_in("region", [region]),
                    "then": _nested(COUNTRY_PATH[event_type], {"enum": list(countries)}),
                }
            )
    if event_type == "partner.enrolled":
        ages = ", ".join(
            f"{c} {m.min_age}" for c, m in markets_in_force().rules.items() if m.min_age != 18
        )
        root["description"] += (
            f" Partners must be at least 18 years old at enrollment ({ages})."
            " Data-processing consent must be true where consents are mandatory."
        )
        conditions.append(
            {
                "if": _if_value_in("region", markets_in_force().consent_regions),
                "then": _nested("payload.consents.data_processing", {"const": True}),
            }
        )
    if event_type == "partner.updated":
        root["properties"]["payload"]["properties"]["changes"]["minProperties"] = 1
        root["properties"]["payload"]["required"] = sorted(
            set(root["properties"]["payload"]["required"]) | {"changes"}
        )
    if conditions:  # the 2020-12 metaschema wants a non-empty allOf
        root["allOf"] = conditions
    return _drop_empty_required(root)


def _conditions(spec: FieldSpec, event_type: str) -> list[JsonObject]:
    out: list[JsonObject] = []
    country_path = COUNTRY_PATH.get(event_type)
    if spec.required == "tax_id_market":
        out.append(
            {
                "if": _if_value_in(COUNTRY_PATH[event_type], markets_in_force().tax_id_countries()),
                "then": _require(spec.path),
            }
        )
    elif spec.required == "state_market":
        out.append(
            {
                "if": _if_value_in(COUNTRY_PATH[event_type], markets_in_force().state_countries()),
                "then": _require(spec.path),
            }
        )
    elif spec.required == "consent_region":
        out.append(
            {
                "if": _if_value_in("region", markets_in_force().consent_regions),
                "then": _require(spec.path),
            }
        )
    elif spec.required == "without_first_order":
        out.append(
            {
                "if": {"properties": {"payload": {"not": {"required": ["first_order"]}}}},
                "then": _require(spec.path),
            }
        )
    elif spec.required == "not_cancelled":
        out.append(
            {
                "if": {
                    "properties": {
                        "payload": {
                            "properties": {"action": {"not": {"const": "cancelled"}}},
                            "required": ["action"],
                        }
                    }
                },
                "then": _require(spec.path),
            }
        )
    if spec.by_country and country_path:
        for country, market in markets_in_force().rules.items():
            pattern = getattr(market, spec.by_country)
            if pattern:
                out.append(
                    {
                        "if": _if_value_in(country_path, [country]),
                        "then": _nested(spec.path, {"pattern": pattern}),
                    }
                )
    return out


@overload
def _drop_empty_required(node: JsonObject) -> JsonObject: ...
@overload
def _drop_empty_required(node: object) -> object: ...
def _drop_empty_required(node: object) -> object:
    if isinstance(node, dict):
        return {
            k: _drop_empty_required(v) for k, v in node.items() if not (k == "required" and v == [])
        }
    if isinstance(node, list):
        return [_drop_empty_required(v) for v in node]
    return node


def all_schemas() -> dict[str, JsonObject]:
    return {f"{t}.v{v}.json": schema(t, v) for t in EVENT_TYPES for v in SCHEMA_VERSIONS[t]}


def render(document: JsonObject) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, document in all_schemas().items():
        (SCHEMA_DIR / name).write_text(render(document), encoding="utf-8")
        print(f"wrote {SCHEMA_DIR.name}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
