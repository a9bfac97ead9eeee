"""The train's loop on a fake clock: when it lands another batch, when it waits, when it stops,
and what it hands to XCom."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from enrollment.core.batch import Landed, Manifest, PartitionRange
from enrollment.ingest.backlog import Backlog
from enrollment.ingest.train import STEPS, Train, TrainBounds, readiness, run_train


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _manifest(start: int) -> Manifest:
    return Manifest(
        region="AMER",
        topic="t",
        group="g",
        bucket="b",
        ranges=(PartitionRange(0, start, start + 10),),
        claimed_at="2026-12-06T00:00:00.000+00:00",
    )


def _lander(
    clock: FakeClock, seconds: float
) -> Callable[[Manifest, Callable[[str], None]], Landed]:
    def land_one(manifest: Manifest, step: Callable[[str], None]) -> Landed:
        clock.now += seconds
        for name in STEPS[1:]:
            step(name)
        return Landed(
            batch_id=manifest.batch_id,
            region="AMER",
            offsets=manifest.offsets,
            valid=manifest.offsets - 1,
            quarantined=1,
            duplicates=0,
            valid_uri="gs://b/v",
            quarantine_uri="gs://b/q",
            seconds=seconds,
        )

    return land_one


def _claims(n: int) -> Callable[[], Manifest | None]:
    starts = iter(range(0, 10 * n, 10))
    return lambda: _manifest(s) if (s := next(starts, None)) is not None else None


def test_a_train_lands_while_batches_are_worth_it_and_stops_when_nothing_is_pending():
    clock, heard = FakeClock(), []
    train = run_train(
        _claims(3),
        _lander(clock, 2.0),
        lambda: "now",
        TrainBounds(max_s=120, max_batches=40, linger_s=10),
        on_step=lambda i, step, batch_id: heard.append((i, step)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert [b.offsets for b in train.landed] == [10, 10, 10]
    assert train.ended == "drained", "the fourth claim found nothing"
    assert heard == [(i, s) for i in range(3) for s in STEPS], "every step of every batch, in order"
    assert train.as_dict() | {"batches": None} == {
        "batches": None,
        "landed": 3,
        "offsets": 30,
        "valid": 27,
        "quarantined": 3,
        "duplicates": 0,
        "ended": "drained",
        "seconds": 6.0,
    }
    assert [b["batch_id"] for b in train.as_dict()["batches"]] == [b.batch_id for b in train.landed]


@pytest.mark.parametrize(
    ("bounds", "ended", "batches"),
    [
        (TrainBounds(max_s=120, max_batches=3, linger_s=10), "max_batches", 3),
        (TrainBounds(max_s=7, max_batches=40, linger_s=10), "max_s", 4),  # 2 s a batch
    ],
)
def test_a_train_stops_at_its_bounds(bounds, ended, batches):
    clock = FakeClock()
    train = run_train(
        _claims(100), _lander(clock, 2.0), lambda: "now", bounds, clock=clock, sleep=clock.sleep
    )
    assert (train.ended, len(train.landed)) == (ended, batches)


def test_a_train_waits_up_to_its_linger_for_the_next_batch_then_goes_idle():
    clock = FakeClock()
    answers = iter(["wait"] * 6 + ["now"] + ["wait"] * 1000)
    train = run_train(
        _claims(100),
        _lander(clock, 1.0),
        lambda: next(answers),
        TrainBounds(max_s=120, max_batches=40, linger_s=5, poll_s=0.5),
        clock=clock,
        sleep=clock.sleep,
    )
    assert len(train.landed) == 2, "waited 3 s for the second batch, not 5 s for the third"
    assert train.ended == "idle"
    assert train.seconds == pytest.approx(1 + 3 + 1 + 5)


def test_nothing_pending_ends_the_train_at_once():
    clock = FakeClock()
    train = run_train(
        _claims(100),
        _lander(clock, 1.0),
        lambda: "none",
        TrainBounds(max_s=120, max_batches=40, linger_s=10),
        clock=clock,
        sleep=clock.sleep,
    )
    assert (len(train.landed), train.ended, train.seconds) == (1, "drained", 1.0)


def test_no_claim_is_an_empty_train():
    train = run_train(
        lambda: None, _lander(FakeClock(), 1.0), lambda: "now", TrainBounds(120, 40, 10)
    )
    assert train == Train(landed=[], ended="drained", seconds=train.seconds)


def test_a_failing_batch_fails_the_train_after_the_earlier_ones():
    clock, landed = FakeClock(), []
    good = _lander(clock, 1.0)

    def land_one(manifest, step):
        if landed:
            raise RuntimeError("Cloud Storage said 503")
        landed.append(good(manifest, step))
        return landed[-1]

    with pytest.raises(RuntimeError, match="503"):
        run_train(_claims(5), land_one, lambda: "now", TrainBounds(120, 40, 10), clock=clock)
    assert len(landed) == 1


@pytest.mark.parametrize(
    ("ranges", "oldest_ms", "expected"),
    [
        (((0, 5, 5),), None, "none"),
        (((0, 0, 100),), None, "now"),  # min_records pending
        (((0, 0, 3),), 1_000, "now"),  # the oldest waited max_age_s
        (((0, 0, 3),), None, "wait"),
    ],
)
def test_readiness_is_the_triggers_rule_with_nothing_pending_apart(ranges, oldest_ms, expected):
    backlog = Backlog(topic="t", ranges=ranges, oldest_timestamp_ms=oldest_ms)
    assert readiness(backlog, min_records=100, max_age_s=10) == expected
