"""The published JSON Schemas: generated from the code, committed, and in agreement with it."""

import json

import jsonschema
import pytest

from enrollment.contracts.json_schema import SCHEMA_DIR, all_schemas, render
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator


def test_committed_schemas_match_the_code():
    generated = {name: render(doc) for name, doc in all_schemas().items()}
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in generated if committed.get(name) != generated[name])
    extra = sorted(set(committed) - set(generated))
    assert not stale and not extra, (
        f"schemas drifted from the code: {stale}, no longer produced: {extra}; "
        "run `python -m enrollment.contracts.json_schema` and commit the result"
    )


def test_there_is_a_schema_per_contract_and_version():
    assert sorted(all_schemas()) == sorted(
        f"{t}.v{v}.json"
        for t in (
            "partner.enrolled",
            "partner.updated",
            "partner.terminated",
            "order.placed",
            "subscription.changed",
        )
        for v in (1, 2)
    )


@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMA_DIR.glob("*.json")))
def test_every_published_schema_is_valid_against_its_metaschema(name):
    """What a schema registry or a strict validator checks first (an empty ``allOf`` is not)."""
    document = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(document, default=None)
    assert validator is jsonschema.Draft202012Validator, document.get("$schema")
    validator.check_schema(document)


@pytest.fixture(scope="module")
def validators():
    return {name: jsonschema.Draft202012Validator(doc) for name, doc in all_schemas().items()}


def test_valid_events_conform_and_faulty_ones_mostly_do_not(validators):
    """The schema says what the validator says, except what JSON Schema cannot express
    (minimum age, self-sponsorship, calendar dates, duplicates, size)."""
    sim = Simulator(seed=21, faults=FaultRates(missing=0.15, bad_format=0.15))
    conform, refuse = [], []
    for message in sim.take(3000):
        doc = json.loads(message.value)
        validator = validators.get(f"{doc.get('event_type')}.v{doc.get('schema_version')}.json")
        verdict = validator is not None and validator.is_valid(
            doc
        )  # no schema for a missing type or version
        (conform if message.expected["outcome"] == "valid" else refuse).append(
            (verdict, message.expected["reasons"])
        )
    assert conform and all(ok for ok, _ in conform)
    wrongly_accepted = [
        reasons
        for ok, reasons in refuse
        if ok and not reasons[0].startswith("bad_format:payload.date_of_birth")
    ]
    assert refuse and wrongly_accepted == []
