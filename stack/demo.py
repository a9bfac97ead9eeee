"""The main job on the local stack: the smoke DAG checks every service, then the simulator sends
the four regions' events (with a 2 % fault mix) and the ingest DAGs, woken by the backlog
trigger, carry them into BigQuery; the sync DAGs bring the partners to Firestore, Solr and
Marketing Cloud, and one simulated enrollment is
followed into all three; a run of environment_health and of the canary fills the page's Health
and Last canary sections; then it says where to look.

Run with `make demo` (which starts the stack first). DEMO_EVENTS sets how many events (20,000)."""

from __future__ import annotations

import sys
import time

from enrollment.config import load_config

from . import config as stack_config
from .airflow_client import AirflowClient
from .services import Airflow

DEMO_DAG = "stack_smoke"


def main() -> int:
    cfg = stack_config.load()
    client = AirflowClient(cfg)
    print(
        f"Airflow runs the {Airflow(cfg).executor}"
        + (
            " with the Celery workers "
            + ", ".join(
                f"{w.name} (queues {','.join(w.queues)}, concurrency {w.concurrency})"
                for w in load_config().celery_workers
            )
            if cfg.celery
            else ""
        ),
        flush=True,
    )
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
  Airflow UI      {cfg.url("AIRFLOW_PORT")}/dags/{DEMO_DAG}   login admin,
                  password in {cfg.saved_file} (airflow_admin_password)
  Cloud Storage   {cfg.url("GCS_PORT")}/storage/v1/b
  BigQuery        {cfg.url("BIGQUERY_PORT")}/bigquery/v2/projects/{cfg.project}/datasets
  Solr            {cfg.url("SOLR_PORT", "/solr/")}
  Firestore       {cfg.url("FIRESTORE_PORT")}/
                  (emulator; FIRESTORE_EMULATOR_HOST=127.0.0.1:{cfg.port("FIRESTORE_PORT")})
  Marketing Cloud {cfg.url("MARKETING_CLOUD_PORT")}/_stub/docs  (contract stub; its /_stub/
                  endpoints want the X-Stub-Token header, MARKETING_CLOUD_STUB_TOKEN)
  Kafka           {cfg.kafka_bootstrap} (SASL_SSL, SCRAM user enrollment)
  Your shell:     source {cfg.state / "stack.env"}
Stop everything with `make down`.""")
    if state != "success":
        return 1
    return ingest(cfg, client)


def ingest(cfg, client: AirflowClient) -> int:
    import os

    from enrollment.clients.services import bigquery_client, storage_client
    from enrollment.ingest.backlog import total_pending
    from enrollment.ingest.pending import pending_batches
    from enrollment.simulator import cli as simulator

    config = load_config()
    os.environ.update(cfg.client_env())
    for dag_id in config.carrier_dags():
        client.wait_for_dag(dag_id)
        client.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    events = os.environ.get("DEMO_EVENTS", "20000")
    print(f"\nproducing {int(events):,} events for the four regions (2% faults) ...", flush=True)
    summary = simulator.produce(
        simulator.parse_args(
            [
                "produce",
                "--events",
                events,
                "--rate",
                "max",
                "--faults",
                "2%",
                "--seed",
                str(int(time.time())),
                "--expected",
                str(cfg.state / "demo-expected.jsonl"),
            ]
        )
    )
    t0 = time.monotonic()
    dag_ids = config.carrier_dags(sinks=False)
    bucket = storage_client(cfg.project).bucket(config.landing_bucket)
    while time.monotonic() - t0 < 600:
        pending = total_pending(cfg.kafka, config.consumer_group, config.regions)
        waiting = len(pending_batches(bucket, config.consumer_group))
        running = sum(
            len(
                client.http.get(
                    f"/dags/{d}/dagRuns", params={"state": ["queued", "running"]}
                ).json()["dag_runs"]
            )
            for d in dag_ids
        )
        print(
            f"  ... {pending:,} records pending in Kafka, {waiting} landed batches waiting for the "
            f"warehouse, {running} ingest/warehouse runs "
            f"active after {time.monotonic() - t0:.0f} s",
            flush=True,
        )
        if pending == 0 and waiting == 0 and running == 0:
            break
        time.sleep(5)
    bq = bigquery_client(cfg.project)
    w, o = f"`{cfg.project}.{config.warehouse_dataset}`", f"`{cfg.project}.{config.ops_dataset}`"
    counts = {
        name: next(iter(bq.query(f"SELECT COUNT(*) AS n FROM {w}.{name}").result()))["n"]
        for name in ("events", "partners", "quarantine")
    }
    reasons = list(
        bq.query(
            f"SELECT reasons, COUNT(*) AS n FROM {w}.quarantine GROUP BY reasons ORDER BY n DESC "
            "LIMIT 5"
        ).result()
    )
    unbalanced = next(
        iter(
            bq.query(
                f"SELECT COUNT(*) AS n FROM {o}.ledger WHERE offsets_in != valid + quarantined + "
                "duplicates + COALESCE(skipped, 0) + COALESCE(recovered, 0)"
            ).result()
        )
    )["n"]
    print(
        f"\nproduced {summary['events']:,} events; BigQuery now holds {counts['events']:,} events, "
        f"{counts['partners']:,} partners, "
        f"{counts['quarantine']:,} quarantined messages; ledger rows that do not balance: "
        f"{unbalanced}"
    )
    for row in reasons:
        print(f"  quarantined for {row['reasons']}: {row['n']}")
    followed = follow_enrollment(cfg, config, cfg.state / "demo-expected.jsonl")
    run_monitors(client, config)
    print(
        "The ingest, warehouse and sync DAGs stay unpaused, and so do environment_health and "
        "canary: run `make simulate` for more traffic. "
        f"Query the ledger: SELECT * FROM {o}.ledger ORDER BY recorded_at DESC"
    )
    print(f"\nThe pipeline, region by region and sink by sink (log in as admin): {page_url(cfg)}")
    return 0 if unbalanced == 0 and followed else 1


MONITOR_DAGS = ("environment_health", "canary")


def run_monitors(client: AirflowClient, config) -> dict[str, str]:
    """One run of the environment checks and of the canary, waited for: without them the page's
    Health and Last canary sections are empty until their schedules come round (5 minutes, the
    canary's cron). Their state is printed, not judged: a late canary on a busy laptop is the
    page's amber, not a failed demo."""
    for dag_id in MONITOR_DAGS:
        client.wait_for_dag(dag_id)
    runs = {dag_id: client.trigger(dag_id) for dag_id in MONITOR_DAGS}
    print(f"\nchecking every service and tracing a canary per region ({', '.join(runs)}) ...")
    # The canary's trace waits up to within_s by design, then reads back and records.
    timeouts = {"environment_health": 300.0, "canary": float(config.canary.within_s) + 420}
    states = {}
    for dag_id, run_id in runs.items():
        try:
            states[dag_id] = client.wait_for_run(dag_id, run_id, timeout_s=timeouts[dag_id])
        except TimeoutError as exc:
            states[dag_id] = f"not finished ({exc})"
        print(f"  {dag_id:<20} {states[dag_id]}", flush=True)
    return states


def page_url(cfg) -> str:
    """The "Enrollment pipeline" page in the Airflow
    UI's navigation (the plugin's external view)."""
    return cfg.url("AIRFLOW_PORT", "/plugin/enrollment-pipeline")


def follow_enrollment(cfg, config, expected_file, timeout_s: float = 600) -> bool:
    """One simulated enrollment, followed until Firestore, Solr and Marketing Cloud all show it."""
    import json

    import httpx

    from enrollment.clients.services import firestore_client

    enrollments = []
    with open(expected_file, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["event_type"] == "partner.enrolled" and record["outcome"] == "valid":
                enrollments.append(record)
    if not enrollments:
        print("no valid enrollment among the simulated events to follow")
        return False
    # The newest enrollment (the newest batch) of a market with tax ids, when one has one.
    sampled = sampled_with_tax_id(cfg, config, enrollments)
    partner_id = (sampled or {"record": enrollments[-1]})["record"]["partner_id"]
    print(f"\nfollowing enrollment {partner_id} into the three sinks ...", flush=True)
    doc = (
        firestore_client(cfg.project)
        .collection(config.sinks["firestore"].get("collection", "partners"))
        .document(partner_id)
    )
    core = config.sinks["solr"].get("core") or config.solr_core
    solr = f"{cfg.url('SOLR_PORT', '/solr')}/{core}/get"
    extension = config.sinks["marketing_cloud"].get("data_extension")
    mc = f"{cfg.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{extension}/lookup"
    found: dict[str, str] = {}
    t0 = time.monotonic()
    while len(found) < 3 and time.monotonic() - t0 < timeout_s:
        if "Firestore" not in found and (snap := doc.get()).exists:
            found["Firestore"] = (
                f"document partners/{partner_id}: status {snap.get('status')}, version "
                f"{snap.get('partner_version')}"
            )
        if "Solr" not in found and (
            hit := httpx.get(
                solr, params={"id": partner_id, "wt": "json"}, timeout=10, auth=cfg.solr_auth
            )
            .json()
            .get("doc")
        ):
            found["Solr"] = (
                f"search document: status {hit.get('status')}, country {hit.get('country')}, "
                f"version {hit.get('partner_version')}"
            )
        if "Marketing Cloud" not in found and (
            rows := httpx.post(
                mc, json={"keys": [partner_id]}, headers=cfg.stub_headers(), timeout=10
            ).json()["items"]
        ):
            found["Marketing Cloud"] = (
                f"data extension row: Status {rows[0]['Status']}, PartnerVersion "
                f"{rows[0]['PartnerVersion']}"
            )
        if len(found) < 3:
            print(
                f"  ... visible in {', '.join(found) or 'no sink yet'} after "
                f"{time.monotonic() - t0:.0f} s",
                flush=True,
            )
            time.sleep(5)
    for sink, what in found.items():
        print(f"  {sink:<16} {what}")
    if len(found) < 3:
        print(
            f"  not visible in every sink after {timeout_s:.0f} s: see the sync_* DAGs in the "
            "Airflow UI"
        )
        return False
    print(f"  visible in all three sinks {time.monotonic() - t0:.0f} s after the ingest finished")
    if sampled is None:
        print(
            "  (no enrollment with a tax id among the sampled ones: nothing to show about tax ids)"
        )
        return True
    return tax_id_everywhere(cfg, config, partner_id, sampled["tax_id"], doc, solr, mc)


def sampled_with_tax_id(cfg, config, enrollments: list[dict], tries: int = 50) -> dict | None:
    """The newest of these enrollments that carries a tax id (and may be contacted, so Marketing
    Cloud holds it), with its clear tax id read from the one place it is kept: Kafka."""
    import json

    from confluent_kafka import Consumer, TopicPartition

    topics = {r.code: r.topic for r in config.regions}
    consumer = Consumer(
        cfg.kafka.consumer({"group.id": "demo-tax-id-reader", "enable.auto.commit": False})
    )
    try:
        for record in reversed(enrollments[-tries:]):
            if record.get("partition") is None or record.get("region") not in topics:
                continue
            consumer.assign(
                [TopicPartition(topics[record["region"]], record["partition"], record["offset"])]
            )
            message = consumer.poll(10)
            if message is None or message.error():
                continue
            payload = json.loads(message.value()).get("payload") or {}
            if (
                isinstance(payload.get("tax_id"), str)
                and (payload.get("consents") or {}).get("marketing_email", True) is not False
            ):
                return {"record": record, "tax_id": payload["tax_id"]}
    finally:
        consumer.close()
    return None


def tax_id_everywhere(cfg, config, partner_id: str, clear: str, doc, solr: str, mc: str) -> bool:
    """Reads every store the partner reached and says whether its tax id is there in clear (in any
    separator format) and its token where it belongs;
    the clear value is shown masked, never as is."""
    import io
    import json
    import re

    import httpx
    import pyarrow.parquet as pq
    from google.cloud import bigquery

    from enrollment.clients.services import bigquery_client, storage_client
    from enrollment.core.pii import Keyring, shape

    keyring = Keyring.from_env()
    token = keyring.token(clear, "tax_id")
    # The tax id in any separator format (and case): its letters and digits, any of '-./ ' between.
    pattern = re.compile(
        "(?<![0-9A-Za-z])"
        + "[-./ ]?".join(map(re.escape, re.sub(r"[^0-9A-Za-z]", "", clear)))
        + "(?![0-9A-Za-z])",
        re.I,
    )
    bq = bigquery_client(cfg.project)
    w = f"`{cfg.project}.{config.warehouse_dataset}`"
    param = [bigquery.ScalarQueryParameter("p", "STRING", partner_id)]

    def query(sql: str) -> list[dict]:
        return [
            dict(r.items())
            for r in bq.query(
                sql, job_config=bigquery.QueryJobConfig(query_parameters=param)
            ).result()
        ]

    def text(value) -> str:
        return json.dumps(value, default=str, ensure_ascii=False)

    events = query(f"SELECT * FROM {w}.events WHERE partner_id = @p")
    batches = sorted({(e["region"], e["batch_id"]) for e in events})
    checked: dict[str, tuple[bool, str]] = {}  # store: (clear value absent, what else was seen)
    bucket = storage_client(cfg.project).bucket(config.landing_bucket)
    for region, batch_id in batches:
        for name in ("raw", "valid", "quarantine", "partners"):
            blob = bucket.blob(f"landing/{region}/{batch_id}/{name}.parquet")
            if not blob.exists():
                continue
            table = pq.read_table(io.BytesIO(blob.download_as_bytes()))
            content = text(table.to_pylist())
            seen = "token present" if token in content else ""
            checked[f"GCS {batch_id}/{name}.parquet"] = (not pattern.search(content), seen)
    enrolled_tokens = {
        e.get("tax_id_token") for e in events if e["event_type"] == "partner.enrolled"
    }
    checked["BigQuery events"] = (
        not pattern.search(text(events)),
        "tax_id_token = token"
        if enrolled_tokens == {token}
        else f"tax_id_token {sorted(map(str, enrolled_tokens))}",
    )
    checked["BigQuery partners"] = (
        not pattern.search(text(query(f"SELECT * FROM {w}.partners WHERE partner_id = @p"))),
        "",
    )
    quarantined = (
        [
            dict(r.items())
            for r in bq.query(
                f"SELECT * FROM {w}.quarantine WHERE batch_id IN UNNEST(@b)",
                job_config=bigquery.QueryJobConfig(
                    query_parameters=[
                        bigquery.ArrayQueryParameter("b", "STRING", [b for _, b in batches])
                    ]
                ),
            ).result()
        ]
        if batches
        else []
    )
    checked["BigQuery quarantine"] = (
        not pattern.search(text(quarantined)),
        f"{len(quarantined)} rows of its batch",
    )
    checked["Firestore"] = (not pattern.search(text(doc.get().to_dict() or {})), "")
    checked["Solr"] = (
        not pattern.search(
            text(
                httpx.get(
                    solr, params={"id": partner_id, "wt": "json"}, timeout=10, auth=cfg.solr_auth
                )
                .json()
                .get("doc")
            )
        ),
        "",
    )
    checked["Marketing Cloud"] = (
        not pattern.search(
            text(
                httpx.post(
                    mc, json={"keys": [partner_id]}, headers=cfg.stub_headers(), timeout=10
                ).json()
            )
        ),
        "",
    )
    ok = (
        all(absent for absent, _ in checked.values())
        and enrolled_tokens == {token}
        and bool(batches)
    )
    print(
        f"\ntax id {shape(clear)} of {partner_id} "
        f"{'is tokenised everywhere' if ok else 'is NOT tokenised everywhere'}: {token}"
        f" (the clear value lives only in Kafka)"
    )
    for store, (absent, seen) in checked.items():
        print(
            f"  {store:<48} "
            f"{'clear value absent' if absent else 'CLEAR VALUE FOUND'}"
            f"{'; ' + seen if seen else ''}"
        )
    return ok


if __name__ == "__main__":
    sys.exit(main())
