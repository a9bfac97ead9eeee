"""The main job on the local stack: the smoke DAG checks every service, then the simulator sends
the four regions' events (with a 2 % fault mix) and the ingest DAGs, woken by the backlog
trigger, carry them into BigQuery; the sync DAGs bring the partners to Firestore, Solr and
Marketing Cloud, and one simulated enrollment is followed into all three; then it says where to look.

Run with `make demo` (which starts the stack first). DEMO_EVENTS sets how many events (20,000)."""

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
  Airflow UI      {cfg.url('AIRFLOW_PORT')}/dags/{DEMO_DAG}   login admin, password in {cfg.saved_file} (airflow_admin_password)
  Cloud Storage   {cfg.url('GCS_PORT')}/storage/v1/b
  BigQuery        {cfg.url('BIGQUERY_PORT')}/bigquery/v2/projects/{cfg.project}/datasets
  Solr            {cfg.url('SOLR_PORT', '/solr/')}
  Firestore       {cfg.url('FIRESTORE_PORT')}/  (emulator; FIRESTORE_EMULATOR_HOST=127.0.0.1:{cfg.port('FIRESTORE_PORT')})
  Marketing Cloud {cfg.url('MARKETING_CLOUD_PORT')}/_stub/docs  (contract stub; its /_stub/ endpoints want the X-Stub-Token header, MARKETING_CLOUD_STUB_TOKEN)
  Kafka           {cfg.kafka_bootstrap}
  Your shell:     source {cfg.state / 'stack.env'}
Stop everything with `make down`.""")
    if state != "success":
        return 1
    return ingest(cfg, client)


def ingest(cfg, client: AirflowClient) -> int:
    import os

    from enrollment.backlog import total_pending
    from enrollment.config import load_config
    from enrollment.batches import pending_batches
    from enrollment.services import bigquery_client, storage_client
    from enrollment.simulator import cli as simulator

    config = load_config()
    os.environ.update(cfg.client_env())
    for dag_id in config.carrier_dags():
        client.wait_for_dag(dag_id)
        client.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    events = os.environ.get("DEMO_EVENTS", "20000")
    print(f"\nproducing {int(events):,} events for the four regions (2% faults) ...", flush=True)
    summary = simulator.produce(simulator.parse_args(["produce", "--events", events, "--rate", "max", "--faults", "2%", "--seed", str(int(time.time())),
                                                      "--expected", str(cfg.state / "demo-expected.jsonl")]))
    t0 = time.monotonic()
    dag_ids = config.carrier_dags(sinks=False)
    bucket = storage_client(cfg.project).bucket(config.landing_bucket)
    while time.monotonic() - t0 < 600:
        pending = total_pending(cfg.kafka_bootstrap, config.consumer_group, config.regions)
        waiting = len(pending_batches(bucket, config.consumer_group))
        running = sum(len(client.http.get(f"/dags/{d}/dagRuns", params={"state": ["queued", "running"]}).json()["dag_runs"]) for d in dag_ids)
        print(f"  ... {pending:,} records pending in Kafka, {waiting} landed batches waiting for the warehouse, {running} ingest/warehouse runs "
              f"active after {time.monotonic() - t0:.0f} s", flush=True)
        if pending == 0 and waiting == 0 and running == 0:
            break
        time.sleep(5)
    bq = bigquery_client(cfg.project)
    w, o = f"`{cfg.project}.{config.warehouse_dataset}`", f"`{cfg.project}.{config.ops_dataset}`"
    counts = {name: list(bq.query(f"SELECT COUNT(*) AS n FROM {w}.{name}").result())[0]["n"] for name in ("events", "partners", "quarantine")}
    reasons = list(bq.query(f"SELECT reasons, COUNT(*) AS n FROM {w}.quarantine GROUP BY reasons ORDER BY n DESC LIMIT 5").result())
    unbalanced = list(bq.query(f"SELECT COUNT(*) AS n FROM {o}.ledger WHERE offsets_in != valid + quarantined + duplicates").result())[0]["n"]
    print(f"\nproduced {summary['events']:,} events; BigQuery now holds {counts['events']:,} events, {counts['partners']:,} partners, "
          f"{counts['quarantine']:,} quarantined messages; ledger rows that do not balance: {unbalanced}")
    for row in reasons:
        print(f"  quarantined for {row['reasons']}: {row['n']}")
    followed = follow_enrollment(cfg, config, cfg.state / "demo-expected.jsonl")
    print(f"The ingest, warehouse and sync DAGs stay unpaused: run `make simulate` for more traffic. Query the ledger: SELECT * FROM {o}.ledger ORDER BY recorded_at DESC")
    return 0 if unbalanced == 0 and followed else 1


def follow_enrollment(cfg, config, expected_file, timeout_s: float = 600) -> bool:
    """One simulated enrollment, followed until Firestore, Solr and Marketing Cloud all show it."""
    import json

    import httpx

    from enrollment.services import firestore_client

    partner_id = None
    with open(expected_file, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["event_type"] == "partner.enrolled" and record["outcome"] == "valid":
                partner_id = record["partner_id"]  # the last one: the newest batch
    if partner_id is None:
        print("no valid enrollment among the simulated events to follow")
        return False
    print(f"\nfollowing enrollment {partner_id} into the three sinks ...", flush=True)
    doc = firestore_client(cfg.project).collection(config.sinks["firestore"].get("collection", "partners")).document(partner_id)
    solr = f"{cfg.url('SOLR_PORT', '/solr')}/{config.sinks['solr'].get('core') or config.solr_core}/get"
    mc = f"{cfg.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{config.sinks['marketing_cloud'].get('data_extension')}/lookup"
    found: dict[str, str] = {}
    t0 = time.monotonic()
    while len(found) < 3 and time.monotonic() - t0 < timeout_s:
        if "Firestore" not in found and (snap := doc.get()).exists:
            found["Firestore"] = f"document partners/{partner_id}: status {snap.get('status')}, version {snap.get('partner_version')}"
        if "Solr" not in found and (hit := httpx.get(solr, params={"id": partner_id, "wt": "json"}, timeout=10).json().get("doc")):
            found["Solr"] = f"search document: status {hit.get('status')}, country {hit.get('country')}, version {hit.get('partner_version')}"
        if "Marketing Cloud" not in found and (rows := httpx.post(mc, json={"keys": [partner_id]}, headers=cfg.stub_headers(), timeout=10).json()["items"]):
            found["Marketing Cloud"] = f"data extension row: Status {rows[0]['Status']}, PartnerVersion {rows[0]['PartnerVersion']}"
        if len(found) < 3:
            print(f"  ... visible in {', '.join(found) or 'no sink yet'} after {time.monotonic() - t0:.0f} s", flush=True)
            time.sleep(5)
    for sink, what in found.items():
        print(f"  {sink:<16} {what}")
    if len(found) < 3:
        print(f"  not visible in every sink after {timeout_s:.0f} s: see the sync_* DAGs in the Airflow UI")
        return False
    print(f"  visible in all three sinks {time.monotonic() - t0:.0f} s after the ingest finished")
    return True


if __name__ == "__main__":
    sys.exit(main())
