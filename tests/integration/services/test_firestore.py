"""Firestore: a batch of 500 writes (the per-commit limit) and reading every document back."""

import uuid

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from enrollment.clients.services import firestore_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_batch_write_and_read_back(stack):
    client = firestore_client(stack.project)
    collection = client.collection(f"test_partners_{uuid.uuid4().hex[:8]}")
    batch = client.batch()
    for i in range(500):
        batch.set(
            collection.document(uuid.uuid4().hex), {"n": i, "region": "APAC" if i % 2 else "EMEA"}
        )
    batch.commit()
    try:
        docs = list(collection.stream())
        assert sorted(d.to_dict()["n"] for d in docs) == list(range(500))
        emea = collection.where(filter=FieldFilter("region", "==", "EMEA"))
        assert emea.count().get()[0][0].value == 250
    finally:
        for chunk in range(0, len(docs), 500):
            cleanup = client.batch()
            for d in docs[chunk : chunk + 500]:
                cleanup.delete(d.reference)
            cleanup.commit()


def test_the_sinks_writes_are_the_clients_own_create_and_update(stack):
    """The Firestore sink builds its writes as raw protobufs (the client's per-value wrappers cost
    most of its CPU): a document it creates, then updates, reads back exactly as one written with
    the client's ``create`` and ``update`` of the same profile — every type a profile holds
    (strings, nulls, ints, timestamps, the address map) — and a stale update time is refused."""
    from datetime import UTC, datetime

    from google.api_core.exceptions import FailedPrecondition

    from enrollment.sinks.firestore import FirestoreSink, profile

    client = firestore_client(stack.project)
    name = f"test_protos_{uuid.uuid4().hex[:8]}"
    sink, own = FirestoreSink(client, collection=name), client.collection(f"{name}_own")
    pid = f"EM{uuid.uuid4().hex[:10].upper()}"

    def partner(version: int, **fields) -> dict:
        return {
            "partner_id": pid,
            "partner_version": version,
            "first_name": "Zoë",
            "last_name": "O'Brien",
            "email": None,
            "status": "active",
            "enrolled_at": datetime(2026, 12, 7, 5, 56, 41, 123456, tzinfo=UTC),
            "updated_at": datetime(2026, 12, 7, 6, 0, tzinfo=UTC),
            "address_line1": "1 Main St",
            "address_state": None,
            "first_name_version": version,
        } | fields

    first = partner(1)
    assert sink.write([first], {}).written == 1
    own.document(pid).create(profile(first))
    written, expected = sink.collection.document(pid).get(), own.document(pid).get()
    assert (
        written.to_dict()
        == expected.to_dict()
        == profile(first)
        | {
            "enrolled_at": first["enrolled_at"],
            "updated_at": first["updated_at"],
        }
    )

    second = partner(2, status="terminated", terminated_at=datetime(2026, 12, 8, tzinfo=UTC))
    assert sink.write([second], {}).written == 1
    own.document(pid).update(
        profile(second), option=client.write_option(last_update_time=expected.update_time)
    )
    assert sink.collection.document(pid).get().to_dict() == own.document(pid).get().to_dict()
    assert sink.collection.document(pid).get().get("status") == "terminated"

    stale = sink.protos.update(
        sink.collection.document(pid)._document_path, profile(first), written.update_time
    )
    batch = client.batch()
    batch._add_write_pbs([stale])
    with pytest.raises(FailedPrecondition):
        batch.commit()
    assert sink.collection.document(pid).get().get("partner_version") == 2
    for ref in (sink.collection.document(pid), own.document(pid)):
        ref.delete()
