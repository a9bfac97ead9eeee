"""Lag and gridlock detection, every minute: per region and partition, and per sink."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args

DOC_MD = """
### Lag monitor

Every minute, **measure** records in `enrollment_ops.lag` (one row per measurement):

- `kind = 'kafka'`: per region and partition, the records the pipeline's consumer group has not
  landed yet (`pending`), the age of the oldest of them (`oldest_age_s`, from its Kafka
  timestamp) and the growth per minute since the previous measurement;
- `kind = 'warehouse'`: per region, the landed batches waiting for the one warehouse writer, and
  how long ago the oldest was claimed;
- `kind = 'sink'`: per sink and region, the warehoused batches the sink has not synced yet, and
  the age of the oldest of them.

It reads offsets and one timestamp per partition, never the data, and never commits.

**Alerts** (the task fails, its log and the configured `alerts.on_failure` callback say why)
when a region's pending records grew at each of the last `lag.grow_minutes` measurements
(a consumer falling further behind: a stall, a gridlock), when a pending record is older than
`lag.max_age_s` (or a landed batch has waited that long for the warehouse), or when a sink is
more than `lag.max_sink_batches` batches behind or its oldest warehoused batch not synced has
waited more than `lag.sink_late_s` (1 h; past `lag.sink_broken_s`, 1 day, it is broken: the
sync still catches up whatever the age, from the sink's own progress); when the warehouse has
set a batch aside (its landed objects missing or unreadable); and when a region's topic has
another partition count on the cluster than `partitions` in the configuration (every partition
is ingested all the same).

Lag over time: `SELECT measured_at, region, SUM(pending) FROM enrollment_ops.lag
WHERE kind = 'kafka' GROUP BY 1, 2 ORDER BY 1`. Owner: enrollment-data team.
"""


@dag(
    dag_id="lag_monitor",
    schedule=CronTriggerTimetable("* * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=5),
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    # An error (BigQuery down) is retried once; an alert fails at once: its rules already span
    # minutes.
    default_args=default_args("monitors") | {"retries": 1, "retry_delay": timedelta(seconds=20)},
    **DAG_DEFAULTS,
)
def lag_monitor() -> None:
    # Runs every minute, one at a time: a measurement still going after 3 minutes is a hang,
    # and the next ones queue behind it.
    @task(execution_timeout=timedelta(minutes=3))
    def measure() -> dict[str, int]:
        from airflow.sdk.exceptions import AirflowFailException

        from enrollment.ops.lag import (
            as_dicts,
            findings,
            kafka_lag,
            record,
            sink_lag,
            warehouse_lag,
        )
        from enrollment_airflow.alerts import Late
        from enrollment_airflow.runtime import Runtime

        rt = Runtime.for_task()
        config = rt.config
        rules = config.lag
        rows = (
            kafka_lag(rt.kafka, config)
            + warehouse_lag(rt.bucket, config)
            + sink_lag(rt.sync_run, config)
        )
        history = record(rt.warehouse, rows, rules)
        found = findings(rows, history, rules, config)
        if found:
            said = "lag alert: " + "; ".join(message for _, message in found)
            # Late only when every finding is data waiting; a set-aside batch or a partition
            # count the configuration does not know is broken.
            raise (Late if {kind for kind, _ in found} == {"late"} else AirflowFailException)(said)
        totals: dict[str, int] = {}
        for row in as_dicts(rows):
            key = {"kafka": row["region"], "warehouse": f"warehouse:{row['region']}"}.get(
                row["kind"], f"{row['sink']}:{row['region']}"
            )
            totals[key] = totals.get(key, 0) + row["pending"]
        return totals

    measure()


lag_monitor()
