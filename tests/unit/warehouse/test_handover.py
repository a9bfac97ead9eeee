"""The hand-over to the sinks without services: what a cycle writes per batch (the state of the
partners the batch touched, whether it enrolled them, never the erased stand-in) and what a sync
makes of several batches' objects (each partner once, its newest state, the last batch that
touched it)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from enrollment.core.partners import ERASED
from enrollment.warehouse.handover import ENROLLED, SYNC_BATCH, _rows_of, newest_state

pytestmark = [pytest.mark.unit]

AT = datetime(2026, 12, 7, tzinfo=UTC)


def state(*rows: tuple[str, int, str]) -> pa.Table:
    return pa.table(
        {
            "partner_id": [r[0] for r in rows],
            "partner_version": pa.array([r[1] for r in rows], pa.int64()),
            "email": [r[2] for r in rows],
        }
    )


def changes(*rows: tuple[str, bool]) -> pa.Table:
    return pa.table(
        {
            "partner_id": [r[0] for r in rows],
            "enrolled_at": pa.array(
                [AT if r[1] else None for r in rows], pa.timestamp("us", "UTC")
            ),
        }
    )


def test_a_batch_hands_over_the_state_of_its_own_partners_sorted_and_whether_it_enrolled_them():
    cycle = state(("P3", 4, "c@x"), ("P1", 2, "a@x"), ("P2", 7, "b@x"), (ERASED, 1, ""))
    rows = _rows_of(cycle, changes(("P3", False), ("P1", True), (ERASED, True)))
    assert rows.column("partner_id").to_pylist() == ["P1", "P3"]
    assert rows.column("email").to_pylist() == ["a@x", "c@x"]
    assert rows.column(ENROLLED).to_pylist() == [True, False]


def test_a_batch_without_partner_events_hands_over_an_empty_object_with_the_columns():
    for cycle, batch in ((state(("P1", 1, "a@x")), changes()), (None, None)):
        rows = _rows_of(cycle, batch)
        assert rows.num_rows == 0
        assert {"partner_id", ENROLLED} <= set(rows.column_names)


def test_a_sync_takes_each_partner_once_at_its_newest_version_from_the_last_batch_touching_it():
    first = _rows_of(
        state(("P1", 1, "old@x"), ("P2", 5, "b@x")), changes(("P1", True), ("P2", False))
    )
    second = _rows_of(state(("P1", 3, "new@x")), changes(("P1", False)))
    third = _rows_of(state(("P2", 5, "b@x")), changes(("P2", False)))
    table, last, enrolled = newest_state([first, second, third], ["b1", "b2", "b3"])
    assert table.to_pylist() == [
        {"partner_id": "P1", "partner_version": 3, "email": "new@x", SYNC_BATCH: "b2"},
        {"partner_id": "P2", "partner_version": 5, "email": "b@x", SYNC_BATCH: "b3"},
    ]
    assert last == {"P1": "b2", "P2": "b3"}
    assert enrolled == {"P1": "b1"}


def test_an_older_state_in_a_later_object_never_wins():
    # A batch written by an earlier cycle can be planned after a newer one (late ledger rows).
    newer = _rows_of(state(("P1", 9, "new@x")), changes(("P1", False)))
    older = _rows_of(state(("P1", 4, "old@x")), changes(("P1", False)))
    table, last, _ = newest_state([newer, older], ["b1", "b2"])
    assert table.column("email").to_pylist() == ["new@x"]
    assert last == {"P1": "b2"}


def test_empty_hand_overs_give_nothing_to_sync():
    empty = _rows_of(None, None)
    table, last, enrolled = newest_state([empty, empty], ["b1", "b2"])
    assert (table.num_rows, last, enrolled) == (0, {}, {})
    mixed, last, _ = newest_state(
        [empty, _rows_of(state(("P1", 1, "a@x")), changes(("P1", True)))], ["b1", "b2"]
    )
    assert mixed.column("partner_id").to_pylist() == ["P1"]
    assert last == {"P1": "b2"}
