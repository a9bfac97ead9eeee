"""The canary: one enrollment per region, injected on a schedule and traced to every sink."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args

CONFIG = load_config()

DOC_MD = f"""
### Canary

Flow validation, every `{CONFIG.canary.every}` (UTC):

1. **inject** produces one `partner.enrolled` per region into its Kafka topic — the region's
   canary partner (`AMCANARY0000`, `EMCANARY0000`, …) at a new version, named `Canary <Region>`.
   It travels like any other event: backlog trigger, ingest, warehouse, the sink DAGs.
2. **trace** looks every {CONFIG.canary.poke_s} s until each canary is visible in BigQuery's
   `partners` table and in every sink ({", ".join(CONFIG.sinks)}), read back from the service.
   It **fails**, alerting as *late*, when a canary is not everywhere within
   {CONFIG.canary.within_s:g} s, naming the region and where it is missing.

Every trace is in `{CONFIG.ops_dataset}.canary` (seconds to each destination, what was missing),
the time to visible everywhere also in `{CONFIG.ops_dataset}.metrics` (`source = 'canary'`):
`SELECT * FROM {CONFIG.ops_dataset}.canary ORDER BY injected_at DESC LIMIT 20`.

The trace runs in one task that waits (not a rescheduled sensor): on a small machine one waiting
process costs less than starting a task process at every look. Owner: enrollment-data team.
"""


@dag(
    dag_id="canary",
    schedule=CronTriggerTimetable(CONFIG.canary.every, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    # Injecting twice is harmless (a newer version of the same partner); tracing again re-reads.
    default_args=default_args("monitors") | {"retries": 1, "retry_delay": timedelta(seconds=20)},
    **DAG_DEFAULTS,
)
def canary() -> None:
    @task
    def inject() -> list[dict[str, Any]]:
        from enrollment.ops.canary import inject as inject_canaries
        from enrollment_airflow.runtime import Runtime

        rt = Runtime.for_task()  # the configuration in force when the task runs
        rt.require(["kafka"])
        return [c.as_dict() for c in inject_canaries(rt.kafka, rt.config)]

    # Waits up to within_s by design; 5 more minutes to read back and record.
    @task(retries=0, execution_timeout=timedelta(seconds=float(CONFIG.canary.within_s) + 300))
    def trace(injected: list[dict[str, Any]]) -> dict[str, Any]:
        import time

        from enrollment.ops import metrics
        from enrollment.ops.canary import Canary, look, missing, record
        from enrollment_airflow.alerts import Late
        from enrollment_airflow.runtime import Runtime

        rt = Runtime.for_task()  # the configuration in force when the task runs
        config = rt.config
        canaries = [Canary(**c) for c in injected]
        deadline = min(c.injected_at for c in canaries) + float(config.canary.within_s)
        with rt.sinks() as sinks:
            while True:
                look(rt.warehouse, sinks, canaries)
                gone = missing(canaries, list(sinks))
                if not gone or time.time() > deadline:
                    break
                time.sleep(float(config.canary.poke_s))
        record(rt.warehouse, canaries, list(config.sinks))
        for c in canaries:
            metrics.record(
                rt.warehouse,
                "canary",
                c.region,
                c.event_id,
                {f"visible_{d}_s": s for d, s in c.seen.items()}
                | {"visible_everywhere_s": max(c.seen.values()) if c.region not in gone else None},
            )
        if gone:
            raise Late(
                f"canary not visible within {config.canary.within_s:g} s: "
                + "; ".join(
                    f"{region} missing in {', '.join(where)}"
                    for region, where in sorted(gone.items())
                )
            )
        return {c.region: c.seen for c in canaries}

    trace(inject())


canary()
