"""The main job on the local stack: runs the pipeline's DAG on the running Airflow, then says
where to look. Until the pipeline DAGs exist, the job is the stack smoke DAG.

Run with `make demo` (which starts the stack first)."""

from __future__ import annotations

import sys
import time

from . import config as stack_config
from .airflow_client import AirflowClient

DEMO_DAG = "stack_smoke"


def main() -> int:
    cfg = stack_config.load()
    client = AirflowClient(cfg)
    client.wait_for_dag(DEMO_DAG)
    run_id = client.trigger(DEMO_DAG)
    print(f"triggered {DEMO_DAG} run {run_id}", flush=True)
    last = [0.0]

    def progress(state: str, elapsed: float) -> None:
        if elapsed - last[0] >= 5:
            last[0] = elapsed
            print(f"  ... {state} after {elapsed:.0f} s", flush=True)

    t0 = time.monotonic()
    state = client.wait_for_run(DEMO_DAG, run_id, progress=progress)
    print(f"{DEMO_DAG} finished {state.upper()} in {time.monotonic() - t0:.1f} s")
    for ti in client.task_states(DEMO_DAG, run_id):
        print(f"  {ti['task_id']}[{ti['rendered_map_index'] or ti['map_index']}]: {ti['state']}")
    print(f"""
Where to look:
  Airflow UI      {cfg.url('AIRFLOW_PORT')}/dags/{DEMO_DAG}   login admin / {cfg.credentials['airflow_admin_password']}
  Cloud Storage   {cfg.url('GCS_PORT')}/storage/v1/b
  BigQuery        {cfg.url('BIGQUERY_PORT')}/bigquery/v2/projects/{cfg.project}/datasets
  Solr            {cfg.url('SOLR_PORT', '/solr/')}
  Firestore       {cfg.url('FIRESTORE_PORT')}/  (emulator; FIRESTORE_EMULATOR_HOST=127.0.0.1:{cfg.port('FIRESTORE_PORT')})
  Marketing Cloud {cfg.url('MARKETING_CLOUD_PORT')}/_stub/docs  (contract stub)
  Kafka           {cfg.kafka_bootstrap}
  Your shell:     source {cfg.state / 'stack.env'}
Stop everything with `make down`.""")
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
