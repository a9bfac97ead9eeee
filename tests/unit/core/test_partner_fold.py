"""Partner-state folding without services: within a batch (``partner_changes``) and across batches
(``fold_partners``), each field takes the value of the newest event that set it, with that
event's version; a follower (consent version, consent time) moves with its leader, nulls included;
the result does not depend on the order the batches arrive in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment.core.partners import PARTNER_SCHEMA, fold_partners, partner_changes
from enrollment.ingest.shape import landed_schemas

T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
VALID_SCHEMA = landed_schemas()[0]


def event(pid: str, version: int, kind: str = "partner.updated", batch: str = "b1", **fields):
    """One valid landed row; ``occurred_at`` grows with the version unless given."""
    return {
        "batch_id": batch,
        "event_id": f"{pid}-{version}-{kind}",
        "event_type": kind,
        "partner_id": pid,
        "partner_version": version,
        "region": "EMEA",
        "occurred_at": T0 + timedelta(minutes=version),
        "kafka_timestamp": T0 + timedelta(minutes=version),
        **fields,
    }


def table(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=VALID_SCHEMA)


def state(t: pa.Table) -> dict[str, dict]:
    return {r["partner_id"]: r for r in t.to_pylist()}


def test_an_update_landed_before_its_enrollment_keeps_the_newer_values_and_fills_the_rest():
    [p] = state(
        partner_changes(
            table(
                event("EM1", 2, email="new@example.de", batch="b1"),
                event("EM1", 1, "partner.enrolled", first_name="Ana", email="old@example.de"),
            )
        )
    ).values()
    assert (p["email"], p["email_version"]) == ("new@example.de", 2)
    assert (p["first_name"], p["first_name_version"]) == ("Ana", 1), "only the enrollment set it"
    assert (p["status"], p["status_version"]) == ("active", 1)
    assert p["enrolled_at"] == T0 + timedelta(minutes=1)
    assert p["partner_version"] == 2 and p["last_event_id"] == "EM1-2-partner.updated"
    assert p["updated_at"] == T0 + timedelta(minutes=2)
    assert p["phone"] is None and p["phone_version"] is None, "no event set it"


def test_a_termination_sets_the_status_and_its_time_and_orders_are_not_partner_events():
    changes = partner_changes(
        table(
            event("EM1", 1, "partner.enrolled", first_name="Ana"),
            event("EM1", 3, "partner.terminated"),
            event("EM2", 7, "order.placed", currency="EUR"),
        )
    )
    found = state(changes)
    assert list(found) == ["EM1"], "an order changes no partner state"
    assert (found["EM1"]["status"], found["EM1"]["status_version"]) == ("terminated", 3)
    assert found["EM1"]["terminated_at"] == T0 + timedelta(minutes=3)
    assert found["EM1"]["enrolled_at"] == T0 + timedelta(minutes=1)


def test_a_batch_without_partner_events_gives_no_rows_in_the_partners_schema():
    changes = partner_changes(table(event("EM2", 7, "order.placed")))
    assert changes.num_rows == 0
    assert changes.column_names == [c for c, _ in PARTNER_SCHEMA]
    assert fold_partners([changes, changes]).num_rows == 0
    assert fold_partners([]).column_names == [c for c, _ in PARTNER_SCHEMA]


def test_a_withdrawn_consent_takes_the_nulls_of_its_own_statement():
    given_at = T0 + timedelta(minutes=1)
    rows = [
        event(
            "EM1",
            1,
            "partner.enrolled",
            marketing_consent=True,
            consent_version="terms-2025",
            consent_captured_at=given_at,
        ),
        event("EM1", 2, marketing_consent=False),  # withdrawn: no version, no capture time
    ]
    for folded in (
        partner_changes(table(*rows)),
        fold_partners([partner_changes(table(rows[0])), partner_changes(table(rows[1]))]),
        fold_partners([partner_changes(table(rows[1])), partner_changes(table(rows[0]))]),
    ):
        [p] = folded.to_pylist()
        assert p["marketing_consent"] is False and p["marketing_consent_version"] == 2
        assert p["consent_version"] is None and p["consent_captured_at"] is None, (
            "the follower must not keep the values of the consent it replaced"
        )
        assert p["consent_version_version"] == 2 and p["consent_captured_at_version"] == 2


def test_an_older_batch_arriving_late_only_fills_fields_no_newer_event_set():
    newer = partner_changes(table(event("EM1", 3, email="new@example.de", batch="b2")))
    older = partner_changes(
        table(event("EM1", 2, email="old@example.de", phone="+49301234567", batch="b1"))
    )
    [p] = fold_partners([newer, older]).to_pylist()
    assert (p["email"], p["email_version"]) == ("new@example.de", 3)
    assert (p["phone"], p["phone_version"]) == ("+49301234567", 2)
    assert (p["partner_version"], p["batch_id"]) == (3, "b2"), "the newest event's batch"


def test_a_batch_landed_before_the_consent_columns_folds_with_them_null():
    old = partner_changes(
        table(event("EM1", 1, "partner.enrolled", first_name="Ana"))
    ).drop_columns(["marketing_consent", "marketing_consent_version"])
    new = partner_changes(table(event("EM1", 2, marketing_consent=True)))
    [p] = fold_partners([old, new]).to_pylist()
    assert (p["first_name"], p["marketing_consent"], p["partner_version"]) == ("Ana", True, 2)


FIELDS = {
    "first_name": st.sampled_from(["Ana", "José", "Li"]),
    "email": st.sampled_from(["a@example.de", "b@example.de"]),
    "phone": st.sampled_from(["+49301234567", "+4930999"]),
    "country": st.sampled_from(["DE", "FR"]),
    "sponsor_id": st.sampled_from(["EMSPONSOR001", "EMSPONSOR002"]),
}


@st.composite
def histories(draw):
    """Events of a few partners, each version of a partner once, spread over 1-4 batches."""
    events = []
    for pid in draw(st.lists(st.sampled_from(["EM1", "EM2", "EM3"]), min_size=1, unique=True)):
        versions = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6, unique=True))
        for version in versions:
            kind = draw(
                st.sampled_from(["partner.enrolled", "partner.updated", "partner.terminated"])
            )
            fields = {
                name: draw(st.none() | values)
                for name, values in FIELDS.items()
                if draw(st.booleans())
            }
            if draw(st.booleans()):
                consent = draw(st.booleans())
                fields |= {
                    "marketing_consent": consent,
                    "consent_version": draw(st.none() | st.just("terms-2025")) if consent else None,
                    "consent_captured_at": T0 if consent else None,
                }
            events.append(event(pid, version, kind, **fields))
    batches = draw(st.integers(1, 4))
    for e in events:
        e["batch_id"] = f"b{draw(st.integers(0, batches - 1))}"
    return events


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), data=st.data())
def test_folding_batches_in_any_order_equals_folding_every_event_at_once(events, data):
    by_batch: dict[str, list[dict]] = {}
    for e in events:
        by_batch.setdefault(e["batch_id"], []).append(e)
    order = data.draw(st.permutations(sorted(by_batch)))
    folded = fold_partners([partner_changes(table(*by_batch[b])) for b in order])
    at_once = partner_changes(table(*sorted(events, key=lambda e: e["partner_version"])))
    assert folded.sort_by("partner_id").to_pylist() == at_once.sort_by("partner_id").to_pylist()
    for p in at_once.to_pylist():
        mine = [e for e in events if e["partner_id"] == p["partner_id"]]
        assert p["partner_version"] == max(e["partner_version"] for e in mine)
        for column in ("email", "first_name", "phone"):
            setters = [e for e in mine if e.get(column) is not None]
            newest = max(setters, key=lambda e: e["partner_version"]) if setters else None
            assert p[column] == (newest[column] if newest else None), column
            assert p[f"{column}_version"] == (newest["partner_version"] if newest else None)


def test_an_erased_partners_anonymised_events_change_no_partner():
    """A replay that restores an erased partner's batch reads its anonymised events (partner id
    ``erased``): they must not make a partner of that name."""
    from enrollment.core.partners import ERASED

    changes = partner_changes(
        table(
            event(ERASED, 10_000, "partner.enrolled", country="ZA"),
            event(ERASED, 10_001),
            event("EM1", 2, "partner.enrolled"),
        )
    )
    assert changes.column("partner_id").to_pylist() == ["EM1"]
    assert partner_changes(table(event(ERASED, 3))).num_rows == 0
