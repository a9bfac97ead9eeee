"""Names of the objects in the landing bucket beside the batches (``core.batch`` names those):
claims and their chains, the pending queue, the batches set aside, the erasure index. Derived
from the group, region, topic and offsets, so writing one again writes the same name."""

from __future__ import annotations

import hashlib

CLAIMS_PREFIX = "claims/"


def claim_object(region: str, topic: str, starts: dict[int, int], group: str | None = None) -> str:
    """Where the claim of ``group`` starting at these offsets is recorded (one per start; rewritten
    only to shrink it before anything is landed). Without a group: the name claims had before the
    group joined their identity."""
    key = (
        ("" if group is None else group + "|")
        + topic
        + "|"
        + ",".join(f"{p}:{o}" for p, o in sorted(starts.items()))
    )
    return f"{CLAIMS_PREFIX}{region}/from-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def chain_object(region: str, topic: str, group: str) -> str:
    """Where the group's landed batches of a topic end, per partition (updated by each land)."""
    digest = hashlib.sha256((group + "|" + topic).encode()).hexdigest()[:20]
    return f"{CLAIMS_PREFIX}{region}/landed-{digest}.json"


PENDING_PREFIX = "pending/"


def pending_object(group: str, region: str, batch_id: str) -> str:
    """The record of a landed batch the warehouse has not written yet: the work queue of the
    pipeline whose consumer group landed it."""
    return f"{PENDING_PREFIX}{group}/{region}/{batch_id}.json"


SET_ASIDE_PREFIX = "set_aside/"


def set_aside_object(group: str, region: str, batch_id: str) -> str:
    return f"{SET_ASIDE_PREFIX}{group}/{region}/{batch_id}.json"


INDEX_OBJECT = "erasures/index.json"


# Rewritten by every warehouse cycle that commits a batch, after its ledger rows: a sync train
# waiting for work watches its generation (a metadata read) instead of asking the warehouse.
CYCLE_MARKER = "warehouse/cycle.json"


HANDOVER_PREFIX = "handover/"


def handover_object(region: str, batch_id: str) -> str:
    """The state, after the warehouse cycle that wrote the batch, of every partner the batch
    touched: what the sinks read (``enrollment.warehouse.handover``). Transient: housekeeping
    expires it, erasure scrubs it."""
    return f"{HANDOVER_PREFIX}{region}/{batch_id}.parquet"
