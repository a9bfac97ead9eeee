"""Erasure's pure parts: requests refused with messages that never repeat an id; landed tables
anonymised row for row (counts kept), whatever the rows hold; tokens, not ids, in the ledger."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrollment.core.partners import ERASED
from enrollment.core.pii import Keyring
from enrollment.ingest.suppression import anonymise_landed, erased_among
from enrollment.ops.erasure.request import ErasureRequest

KEYRING = Keyring.from_secret("k1", "a-test-key-of-enough-length")
VICTIM, OTHER = "DE0000000001", "DE0000000002"


def test_a_request_is_checked_and_its_errors_never_repeat_an_id():
    request = ErasureRequest.parse([VICTIM, VICTIM, OTHER], "gdpr_art17", "DPO-1")
    assert request.partner_ids == (VICTIM, OTHER)
    assert ErasureRequest.parse(f"{VICTIM}, {OTHER}", "other", "T#1").partner_ids == (
        VICTIM,
        OTHER,
    )
    for ids, reason, ticket in (
        ([], "gdpr_art17", "T"),
        (["not-an-id"], "gdpr_art17", "T"),
        ([VICTIM], "because", "T"),
        ([VICTIM], "gdpr_art17", ""),
        ([VICTIM], "gdpr_art17", "x" * 65),
        ([f"DE{i:010d}" for i in range(101)], "other", "T"),
    ):
        with pytest.raises(ValueError) as refused:
            ErasureRequest.parse(ids, reason, ticket)
        assert "not-an-id" not in str(refused.value) and VICTIM not in str(refused.value)
    # The same request is the same erasure; the id is derived from tokens, never from the ids.
    assert request.erasure_id(KEYRING) == ErasureRequest.parse(
        [OTHER, VICTIM], "other", "DPO-1"
    ).erasure_id(KEYRING)
    assert all(VICTIM not in t for t in request.tokens(KEYRING))


def _valid(ids: list[str]) -> pa.Table:
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(len(ids))],
            "partner_id": ids,
            "email": [f"{p}@example.com" for p in ids],
            "first_name": ["Ann"] * len(ids),
            "country": ["DE"] * len(ids),
            "total_amount": [1.5] * len(ids),
        }
    )


def test_landed_tables_are_anonymised_row_for_row():
    valid = _valid([VICTIM, OTHER, VICTIM])
    raw = pa.table(
        {
            "event_id": ["e0", "e1", "e2"],
            "event_json": [
                json.dumps(
                    {
                        "event_id": f"e{i}",
                        "event_type": "partner.updated",
                        "partner_id": p,
                        "payload": {"email": "x@y.z"},
                    }
                )
                for i, p in enumerate([VICTIM, OTHER, VICTIM])
            ],
        }
    )
    quarantine = pa.table(
        {
            "partner_id": [None, OTHER],
            "raw": [f'{{"partner_id": "{VICTIM}", "email": '.encode(), b"{}"],
            "reasons": ["unparsable", "missing:payload.email"],
        }
    )
    changes = pa.table({"partner_id": [VICTIM, OTHER], "email": ["a", "b"]})
    (v, r, q, c), counts = anonymise_landed(valid, raw, quarantine, changes, {VICTIM})
    assert (v.num_rows, r.num_rows, q.num_rows) == (3, 3, 2), (
        "rows stay: the ledger's counts stay true"
    )
    assert counts == {"events": 2, "quarantined": 1, "partner_changes": 1}
    assert v.column("partner_id").to_pylist() == [ERASED, OTHER, ERASED]
    assert (
        v.column("email").to_pylist() == [None, f"{OTHER}@example.com", None]
        and v.column("total_amount").to_pylist() == [1.5] * 3
    )
    assert [json.loads(t).get("payload") for t in r.column("event_json").to_pylist()] == [
        None,
        {"email": "x@y.z"},
        None,
    ]
    assert json.loads(r.column("event_json")[0].as_py()) == {
        "event_id": "e0",
        "event_type": "partner.updated",
        "partner_id": "erased",
        "erased": True,
    }
    assert q.column("raw").to_pylist() == [None, b"{}"] and q.column("reasons").to_pylist() == [
        "unparsable",
        "missing:payload.email",
    ]
    assert c.column("partner_id").to_pylist() == [OTHER]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.sampled_from([VICTIM, OTHER]), st.text(max_size=20)), max_size=12
    ),
    st.lists(
        st.one_of(
            st.none(),
            st.binary(max_size=60),
            st.builds(lambda b: b + VICTIM.encode(), st.binary(max_size=20)),
        ),
        max_size=12,
    ),
)
def test_anonymising_is_total_and_leaves_no_mention(partner_ids, raws):
    valid = _valid([p or "" for p in partner_ids]).set_column(
        1, "partner_id", pa.array(partner_ids, pa.string())
    )
    raw = pa.table(
        {
            "event_id": valid.column("event_id"),
            "event_json": [json.dumps({"partner_id": p, "event_id": "x"}) for p in partner_ids],
        }
    )
    quarantine = pa.table(
        {
            "partner_id": pa.array([None] * len(raws), pa.string()),
            "raw": pa.array(raws, pa.binary()),
        }
    )
    (v, r, q, _), _ = anonymise_landed(
        valid,
        raw,
        quarantine,
        pa.table({"partner_id": pa.array(partner_ids, pa.string())}),
        {VICTIM},
    )
    assert v.num_rows == len(partner_ids) and q.num_rows == len(raws)
    assert VICTIM not in json.dumps(v.to_pylist() + r.to_pylist(), default=str)
    assert not any(VICTIM.encode() in b for b in q.column("raw").to_pylist() if b)


def test_erased_partners_are_found_by_token_under_any_key():
    rotated = Keyring.from_secret(
        "k2", "the-next-key-of-enough-length", {"k1": "a-test-key-of-enough-length"}
    )
    tokens = frozenset([KEYRING.token(VICTIM, "partner_id")])
    assert erased_among([VICTIM, OTHER], rotated, tokens) == {VICTIM}
    assert erased_among([VICTIM], rotated, frozenset()) == set()


def test_the_verify_step_reads_an_empty_landed_object_as_holding_nothing():
    """A batch that quarantined nothing lands an empty quarantine object: the erasure's verify
    counts nothing in it (it raised ArrowNotImplementedError on the empty column before) and
    still counts what the batch's other objects hold."""
    import io

    import pyarrow.parquet as pq

    from enrollment.ingest.suppression import raw_mentions
    from enrollment.ops.erasure.scrub import remaining_in_batch
    from tests.unit.fakes import FakeBucket

    def parquet(table: pa.Table) -> bytes:
        out = io.BytesIO()
        pq.write_table(table, out)
        return out.getvalue()

    empty = pa.chunked_array([], pa.string())
    assert raw_mentions(empty, {VICTIM}).to_pylist() == []
    bucket, batch = FakeBucket(), "de-0123456789abcdef"
    nothing = pa.table({"raw": pa.array([], pa.binary()), "partner_id": pa.array([], pa.string())})
    bucket.put(f"landing/DE/{batch}/quarantine.parquet", parquet(nothing))
    assert remaining_in_batch(bucket, batch, {VICTIM}) == 0
    held = pa.table({"partner_id": [VICTIM, OTHER], "email": ["a@example.com", None]})
    bucket.put(f"landing/DE/{batch}/valid.parquet", parquet(held))
    assert remaining_in_batch(bucket, batch, {VICTIM}) == 1


def test_the_suppression_list_is_downloaded_only_when_an_erasure_changed_it():
    """A land asks before and after every batch: a metadata read each time, the list (which grows
    with every erasure) once per bucket object and per change."""
    from enrollment.core.layout import INDEX_OBJECT
    from enrollment.ingest.suppression import suppress, suppression
    from tests.unit.fakes import FakeBucket

    bucket = FakeBucket("landing")
    assert suppression(bucket) == (0, frozenset()), "never erased: nothing to read"
    suppress(bucket, ["t1", "t2"])
    bucket.reads.clear()
    first = suppression(bucket)
    for _ in range(10):  # ten batches of a train
        assert suppression(bucket) == first
    assert bucket.reads == [INDEX_OBJECT]
    suppress(bucket, ["t3"])
    bucket.reads.clear()
    generation, tokens = suppression(bucket)
    assert generation != first[0] and tokens == {"t1", "t2", "t3"}
    assert suppression(bucket) == (generation, tokens) and bucket.reads == [INDEX_OBJECT]
