"""Erasure of partners across every store (GDPR art. 17 and its equivalents): see enrollment.erasure."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from enrollment.config import ERASURE_REASONS as REASONS
from enrollment.config import MAX_ERASURE_PARTNERS as MAX_PARTNERS
from enrollment.config import load_config
from enrollment_airflow.alerts import on_failure
from enrollment_airflow.defaults import WAREHOUSE_POOL, Tag, default_args

CONFIG = load_config()
SINKS = list(CONFIG.sinks)

DOC_MD = f"""
### Erase partners

Honours a request to erase partners (GDPR art. 17, LGPD art. 18, CCPA, PIPA): **Trigger** with
`partner_ids` (at most {MAX_PARTNERS}), the `reason` and the `ticket` of the request.

1. **suppress** — the partners' keyed tokens join `gs://{CONFIG.landing_bucket}/erasures/index.json`:
   from now on `land` anonymises whatever of theirs still arrives (Kafka keeps its copy until the
   topic's retention; a rewind or a producer resending never brings them back).
2. **settle** — waits `settle_seconds` so that a batch landing at this moment is written and found.
3. **warehouse** (the warehouse writer's slot) — the landed batches holding them are rewritten row
   for row (events anonymised, raw JSON reduced to the envelope, quarantined bytes dropped, partner
   changes removed: the ledger's counts stay true), then `events`, `quarantine`, `sink_quarantine`
   anonymised, `partners` deleted, past reconciliation lists cleared.
4. **sinks** — {", ".join(SINKS)}: documents and rows deleted; Marketing Cloud's contacts deleted.
5. **objects** — welcome-journey claims deleted, sync hand-over copies and reconciliation day files
   rewritten without them.
6. **verify** — every store read again; the run fails if anything of theirs remains.

Each step writes `{CONFIG.ops_dataset}.erasures` (store, items, ok) with the partner's **token**,
the reason and the ticket — never the id. XCom and logs carry counts only. Safe to run again (the
same ticket and partners are the same erasure). The run's conf keeps the ids as typed: delete the
run afterwards if your policy wants them gone from Airflow too. Owner: enrollment-data team.
"""


def _erasure(params):
    """The run's request (checked again in every step: params are the run's) with its clients."""
    from enrollment.erasure import Erasure, Request
    from enrollment_airflow.connections import keyring_from_connections, warehouse_from_connections

    config = load_config()  # the configuration in force when the task runs
    w = warehouse_from_connections(config)
    return Erasure(
        Request.parse(params["partner_ids"], params["reason"], params["ticket"]),
        w,
        w.storage.bucket(config.landing_bucket),
        keyring_from_connections(),
    )


@dag(
    dag_id="erase_partners",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance") | {"on_failure_callback": on_failure},
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
def erase_partners():
    @task
    def suppress(params=None) -> dict:
        from enrollment import erasure

        e = _erasure(params)
        new = erasure.suppress(e.bucket, e.request.tokens(e.keyring))
        e.record("suppress", "suppression_index", new)
        return {"erasure_id": e.erasure_id, "partners": len(e.ids), "newly_suppressed": new}

    @task
    def settle(requested: dict, params=None) -> dict:
        import time

        time.sleep(int(params["settle_seconds"]))
        return requested

    @task(
        pool=WAREHOUSE_POOL, execution_timeout=timedelta(minutes=60)
    )  # no warehouse cycle meanwhile: one writer
    def warehouse(requested: dict, params=None) -> dict:
        from enrollment import erasure

        e = _erasure(params)
        batches = erasure.batches_holding(
            e.warehouse, e.bucket, load_config().consumer_group, e.request.partner_ids
        )
        landed = erasure.scrub_landed(e.bucket, batches, e.ids)
        e.record(
            "erase",
            "landed_batches",
            sum(landed.values()),
            detail=f"{len(batches)} batches looked at: "
            + ", ".join(f"{k} {v}" for k, v in landed.items()),
        )
        tables = erasure.scrub_warehouse(e.warehouse, e.request.partner_ids)
        for table, rows in tables.items():
            e.record("erase", f"bigquery.{table}", rows)
        return {"batches": batches, "landed": landed, "tables": tables}

    @task(map_index_template="{{ sink }}")
    def erase_sink(sink: str, requested: dict, params=None) -> dict:
        from enrollment_airflow.connections import sink_from_connections

        e = _erasure(params)
        target = sink_from_connections(load_config(), sink)
        try:
            done = target.erase(list(e.request.partner_ids))
        finally:
            target.close()
        e.record(
            "erase",
            sink,
            int(done.get("deleted", done.get("rows_deleted_or_absent", 0))),
            ok=not done.get("remaining"),
            detail=", ".join(f"{k} {v}" for k, v in sorted(done.items())),
        )
        return done

    @task
    def objects(requested: dict, params=None) -> dict:
        from enrollment import erasure

        e, config = _erasure(params), load_config()
        done = erasure.scrub_objects(e.bucket, SINKS, [r.code for r in config.regions], e.ids)
        e.record(
            "erase",
            "transient_objects",
            sum(done.values()),
            detail=", ".join(f"{k} {v}" for k, v in sorted(done.items())),
        )
        return done

    @task
    def verify(requested: dict, scrubbed: dict, params=None) -> dict:
        """Every store read again for the clear ids; a sink holding one again (a sync that read the
        partner before the warehouse step) is erased once more. Fails, naming stores, if any remain."""
        from enrollment import erasure
        from enrollment_airflow.connections import sink_from_connections

        e = _erasure(params)
        left = {
            f"bigquery.{k}": v
            for k, v in erasure.remaining_in_warehouse(e.warehouse, e.request.partner_ids).items()
        }
        left["landed_batches"] = sum(
            erasure.remaining_in_batch(e.bucket, b, e.ids) for b in scrubbed["batches"]
        )
        for sink in SINKS:
            target = sink_from_connections(load_config(), sink)
            try:
                left[sink] = int(target.erase(list(e.request.partner_ids)).get("remaining", 0))
            finally:
                target.close()
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
    scrubbed = warehouse(settled)
    sinks = erase_sink.partial(requested=settled).expand(sink=SINKS)
    cleared = objects(settled)
    scrubbed >> [sinks, cleared]
    [sinks, cleared] >> verify(settled, scrubbed)


erase_partners()
