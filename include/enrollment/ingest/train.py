"""A train of micro-batches: one woken land task claims, lands and commits batch after batch.

Every task process pays seconds of CPU before it does any work (start-up, the DAG file's parse,
imports, connections, service checks), and every run waits for the scheduler to start it. A train
pays that once: after each batch it waits — at most ``linger_s``, by the backlog trigger's own
rule (``should_fire``) — for the next one to be worth landing, and lands it in the same process.
It stops when nothing is pending, when nothing more is worth it in time, or at its bounds
(``max_s`` seconds or ``max_batches`` batches), and the trigger wakes the next run for whatever
came after.

Every batch keeps all it has alone: its claim record, its read of the erasure suppression list,
its gate, its pending record (which wakes the warehouse at once: ``PendingTrigger``), its chain
and offset commit, its ledger rows and its own id. A train killed anywhere leaves its landed
batches committed and at most one batch claimed and unfinished, which the next run claims again
(claims are idempotent): nothing lost, nothing twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from enrollment.core.batch import DEFAULT_MAX_BYTES, Landed, Manifest
from enrollment.ingest.backlog import Backlog, BacklogWatch, should_fire
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

    from enrollment.clients.kafka import KafkaSettings
    from enrollment.config import Region
    from enrollment.core.pii import Keyring

Readiness = Literal["now", "wait", "none"]

# The steps of one batch, in order, as ``on_step`` hears them (the kill tests stop at each).
STEPS = ("claimed", "written", "pending", "chained", "committed")


@dataclass(frozen=True)
class TrainBounds:
    """How long one land task keeps landing (``backlog.train_s`` and ``train_batches``)."""

    max_s: float
    max_batches: int
    linger_s: float  # the most it waits for the next batch to be worth landing
    poll_s: float = 1.0  # as often as the backlog trigger asks (each question is CPU and a call)


@dataclass
class Train:
    """The batches one task landed, oldest first, and why it stopped."""

    landed: list[Landed] = field(default_factory=list)
    ended: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """What the land task returns to XCom: totals and each batch's manifest (no rows)."""
        return {
            "batches": [b.as_dict() for b in self.landed],
            "landed": len(self.landed),
            "offsets": sum(b.offsets for b in self.landed),
            "valid": sum(b.valid for b in self.landed),
            "quarantined": sum(b.quarantined for b in self.landed),
            "duplicates": sum(b.duplicates for b in self.landed),
            "ended": self.ended,
            "seconds": round(self.seconds, 3),
        }


def run_train(
    claim_next: Callable[[], Manifest | None],
    land_one: Callable[[Manifest, Callable[[str], None]], Landed],
    next_batch: Callable[[], Readiness],
    bounds: TrainBounds,
    on_step: Callable[[int, str, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Train:
    """Lands batches until nothing is pending, none is worth it within ``linger_s``, or a bound
    is reached.

    ``land_one(manifest, step)`` lands one claimed batch and calls ``step`` after each durable
    step; ``on_step(batch_index, step, batch_id)`` hears every step of every batch."""
    train = Train()
    t0 = clock()
    while True:
        manifest = claim_next()
        if manifest is None:
            train.ended = "drained"
            break
        index = len(train.landed)

        def step(name: str, index: int = index, batch_id: str = manifest.batch_id) -> None:
            if on_step is not None:
                on_step(index, name, batch_id)

        step("claimed")
        train.landed.append(land_one(manifest, step))
        if len(train.landed) >= bounds.max_batches:
            train.ended = "max_batches"
            break
        if clock() - t0 >= bounds.max_s:
            train.ended = "max_s"
            break
        readiness = _wait_for(next_batch, bounds.linger_s, bounds.poll_s, clock, sleep)
        if readiness != "now":
            train.ended = "drained" if readiness == "none" else "idle"
            break
    train.seconds = clock() - t0
    return train


def readiness(backlog: Backlog, min_records: int, max_age_s: float) -> Readiness:
    """Whether the next batch is worth landing now (the trigger's rule), worth waiting for, or
    there is nothing at all: then the train ends at once rather than holding a worker slot, and
    the trigger wakes the next run when records come."""
    if backlog.pending == 0:
        return "none"
    return "now" if should_fire(backlog, min_records, max_age_s) else "wait"


def _wait_for(
    next_batch: Callable[[], Readiness],
    within_s: float,
    poll_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Readiness:
    deadline = clock() + within_s
    while True:
        ready = next_batch()
        if ready != "wait" or clock() + poll_s > deadline:
            return ready
        sleep(poll_s)


def land_train(
    kafka: KafkaSettings,
    group: str,
    region: Region,
    bucket: Bucket,
    keyring: Keyring,
    bounds: TrainBounds,
    max_batch: int,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    on_step: Callable[[int, str, str], None] | None = None,
) -> Train:
    """A region's train: ``claim`` and ``land`` batch after batch while the backlog, measured over
    one pair of Kafka clients for the train's life, is worth another batch."""
    watch = BacklogWatch(kafka, group, region.topic, region.partitions)
    try:
        return run_train(
            lambda: claim(
                kafka, group, region.code, region.topic, region.partitions, bucket, max_batch
            ),
            lambda manifest, step: land(
                kafka, manifest, bucket, keyring, max_bytes=max_bytes, step=step
            ),
            lambda: readiness(
                watch.measure(region.min_records), region.min_records, region.max_age_s
            ),
            bounds,
            on_step,
        )
    finally:
        watch.close()
