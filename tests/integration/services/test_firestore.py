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
