"""Erasure of partners across every store (GDPR art. 17 and its equivalents): see
enrollment.ops.erasure."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, dag, task

from enrollment.config import ERASURE_REASONS as REASONS
from enrollment.config import MAX_ERASURE_PARTNERS as MAX_PARTNERS
from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, WAREHOUSE_POOL, Tag, default_args
from enrollment_airflow.runtime import Runtime

if TYPE_CHECKING:
    from enrollment.ops.erasure.request import Erasure

CONFIG = load_config()
SINKS = list(CONFIG.sinks)
REGIONS = [r.code for r in CONFIG.regions]

DOC_MD = f"""
### Erase partners

Honours a request to erase partners (GDPR art. 17, LGPD art. 18, CCPA, PIPA): **Trigger** with
`partner_ids` (at most {MAX_PARTNERS}), the `reason` and the `ticket` of the request.

1. **suppress** — the partners' keyed tokens join `gs://{CONFIG.landing_bucket}/erasures/index.json`:
   from now on `land` anonymises whatever of theirs still arrives (Kafka keeps its copy until the
   topic's retention; a rewind or a producer resending never brings them back).
2. **settle** — waits `settle_seconds` so that a batch landing at this moment is written and found.
3. **landed** — the landed batches holding them (through the warehouse, the queued and set-aside
   batches, every recovery batch) are rewritten row for row (events anonymised, raw JSON reduced to
   the envelope, quarantined bytes dropped, partner changes removed: the ledger's counts stay
   true). Outside the writer's slot: cycles go on meanwhile.
4. **warehouse** (the warehouse writer's slot, its statements only) — `events`, `quarantine`,
   `sink_quarantine` anonymised, `partners` deleted, past reconciliation lists cleared.
5. **sinks** — {", ".join(SINKS)}: documents and rows deleted; Marketing Cloud's contacts deleted.
6. **objects** — the batches' hand-overs to the sinks, sync hand-over copies and reconciliation day
   files rewritten without them; welcome-journey claims deleted.
7. **verify** — every store read again (and the batches queued since); the run fails if anything
   of theirs remains.

A land or a sync racing the erasure asks the suppression list again after writing and undoes
its own write (docs/decisions/0007): the order above (suppress first, delete after) is what
makes that safe.

Each step writes `{CONFIG.ops_dataset}.erasures` (store, items, ok) with the partner's **token**,
the reason and the ticket — never the id. XCom and logs carry counts only. Safe to run again (the
same ticket and partners are the same erasure). The run's conf keeps the ids as typed: delete the
run afterwards if your policy wants them gone from Airflow too. Owner: enrollment-data team.
"""


def _erasure(rt: Runtime, params: dict[str, Any]) -> Erasure:
    """The run's request (checked again in every step: params are the run's) with its clients."""
    from enrollment.ops.erasure.request import Erasure, ErasureRequest

    return Erasure(
        ErasureRequest.parse(params["partner_ids"], params["reason"], params["ticket"]),
        rt.warehouse,
        rt.bucket,
        rt.keyring,
    )


@dag(
    dag_id="erase_partners",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance"),
    **DAG_DEFAULTS,
    params={
        "partner_ids": Param(
            [],
            type="array",
            items={"type": "string"},
            minItems=1,
            maxItems=MAX_PARTNERS,
            description="The partners to erase (partner ids)",
        ),
        "reason": Param(
            "gdpr_art17",
            type="string",
            enum=list(REASONS),
            description="The legal ground of the request",
        ),
        "ticket": Param(
            "",
            type="string",
            minLength=1,
            maxLength=64,
            description="The request's reference (privacy desk ticket)",
        ),
        "settle_seconds": Param(
            60,
            type="integer",
            minimum=0,
            maximum=900,
            description="Wait after suppressing, so that a batch landing meanwhile is found",
        ),
    },
)
def erase_partners() -> None:
    @task
    def suppress(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from enrollment.ingest import suppression

        e = _erasure(Runtime.for_task(), params or {})
        new = suppression.suppress(e.bucket, e.request.tokens(e.keyring))
        e.record("suppress", "suppression_index", new)
        return {"erasure_id": e.erasure_id, "partners": len(e.ids), "newly_suppressed": new}

    @task
    def settle(requested: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        import time

        time.sleep(int((params or {})["settle_seconds"]))
        return requested

    # Landed objects are written only by land (which asks the suppression list again after
    # writing: decision 0007), never by a cycle: finding and rewriting them needs no slot. A cycle
    # that reads a batch before its rewrite loads clear rows the next step anonymises.
    @task(execution_timeout=timedelta(minutes=60))
    def landed(requested: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        from enrollment.ops.erasure import scrub

        rt = Runtime.for_task()
        e = _erasure(rt, params or {})
        batches = scrub.batches_holding(
            e.warehouse, e.bucket, rt.config.consumer_group, e.request.partner_ids, REGIONS
        )
        landed = scrub.scrub_landed(e.bucket, batches, e.ids)
        e.record(
            "erase",
            "landed_batches",
            sum(landed.values()),
            detail=f"{len(batches)} batches looked at: "
            + ", ".join(f"{k} {v}" for k, v in landed.items()),
        )
        return {"batches": batches, "landed": landed}

    # No warehouse cycle meanwhile: one writer, holding the slot for its statements only.
    @task(pool=WAREHOUSE_POOL, execution_timeout=timedelta(minutes=5))
    def warehouse(found: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        from enrollment.ops.erasure import scrub

        e = _erasure(Runtime.for_task(), params or {})
        tables = scrub.scrub_warehouse(e.warehouse, e.request.partner_ids)
        for table, rows in tables.items():
            e.record("erase", f"bigquery.{table}", rows)
        return {**found, "tables": tables}

    @task(map_index_template="{{ sink }}")
    def erase_sink(
        sink: str, requested: dict[str, Any], params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        rt = Runtime.for_task()
        e = _erasure(rt, params or {})
        with rt.sinks(sink) as sinks:
            done = sinks[sink].erase(list(e.request.partner_ids))
        e.record(
            "erase",
            sink,
            int(done.get("deleted", done.get("rows_deleted_or_absent", 0))),
            ok=not done.get("remaining"),
            detail=", ".join(f"{k} {v}" for k, v in sorted(done.items())),
        )
        return done

    @task
    def objects(scrubbed: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """After the warehouse step: a cycle that ran before it may have handed over a batch it
        read before the landed step's rewrite; none after it can."""
        from enrollment.ops.erasure import scrub

        rt = Runtime.for_task()
        e = _erasure(rt, params or {})
        done = scrub.scrub_objects(e.bucket, SINKS, [r.code for r in rt.config.regions], e.ids)
        done["batch_handover_rows"] = scrub.scrub_handovers(e.bucket, scrubbed["batches"], e.ids)
        e.record(
            "erase",
            "transient_objects",
            sum(done.values()),
            detail=", ".join(f"{k} {v}" for k, v in sorted(done.items())),
        )
        return done

    @task
    def verify(
        requested: dict[str, Any], scrubbed: dict[str, Any], params: dict[str, Any] | None = None
    ) -> dict[str, int]:
        """Every store read again for the clear ids; a sink holding one again (a sync that read the
        partner before the warehouse step) is erased once more. Fails, naming stores, if any
        remain."""
        from enrollment.ops.erasure import scrub

        rt = Runtime.for_task()
        e = _erasure(rt, params or {})
        left = {
            f"bigquery.{k}": v
            for k, v in scrub.remaining_in_warehouse(e.warehouse, e.request.partner_ids).items()
        }
        # The batches scrubbed, and any queued since (a land racing the erasure rewrites its own).
        batches = set(scrubbed["batches"]) | set(
            scrub.batches_holding(
                e.warehouse, e.bucket, rt.config.consumer_group, e.request.partner_ids, REGIONS
            )
        )
        left["landed_batches"] = sum(scrub.remaining_in_batch(e.bucket, b, e.ids) for b in batches)
        with rt.sinks(*SINKS) as sinks:
            for sink, target in sinks.items():
                left[sink] = int(target.erase(list(e.request.partner_ids)).get("remaining", 0))
        for store, n in left.items():
            e.record("verify", store, n, ok=n == 0)
        if any(left.values()):
            raise RuntimeError(
                "erasure incomplete, items remain in: "
                + ", ".join(f"{k} ({v})" for k, v in left.items() if v)
                + " — run the DAG again with the same params"
            )
        return left

    requested = suppress()
    settled = settle(requested)
    scrubbed = warehouse(landed(settled))
    sinks = erase_sink.partial(requested=settled).expand(sink=SINKS)
    cleared = objects(scrubbed)
    scrubbed >> [sinks, cleared]
    [sinks, cleared] >> verify(settled, scrubbed)


erase_partners()
