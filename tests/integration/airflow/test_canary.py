"""The canary on the running scheduler: one enrollment per region injected and traced through the
backlog trigger, the ingest DAGs and the sink DAGs until every sink shows it."""

from __future__ import annotations

import httpx
import pytest

from enrollment.clients.services import Endpoints, bigquery_client, firestore_client

pytestmark = [pytest.mark.integration]


def test_the_canary_is_traced_to_every_sink(stack, pipeline_config):
    from stack.airflow_client import AirflowClient

    config = pipeline_config
    client = AirflowClient(stack)
    carriers = config.carrier_dags()
    for dag_id in [*carriers, "canary"]:
        client.wait_for_dag(dag_id, timeout_s=120)
    for dag_id in carriers:
        client.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    try:
        run_id = client.trigger("canary")
        state = client.wait_for_run("canary", run_id, timeout_s=float(config.canary.within_s) + 240)
    finally:
        for dag_id in [*carriers, "canary"]:
            client.http.patch(f"/dags/{dag_id}", json={"is_paused": True})
    assert state == "success", client.task_states("canary", run_id)

    injected = (
        client.http.get(
            f"/dags/canary/dagRuns/{run_id}/taskInstances/inject/xcomEntries/return_value"
        )
        .raise_for_status()
        .json()["value"]
    )
    assert sorted(c["region"] for c in injected) == sorted(r.code for r in config.regions)
    versions = {c["partner_id"]: c["partner_version"] for c in injected}

    traces = {
        r["event_id"]: dict(r)
        for r in bigquery_client(stack.project)
        .query(f"SELECT * FROM `{stack.project}.{config.ops_dataset}.canary`")
        .result()
    }
    for c in injected:
        trace = traces[c["event_id"]]
        assert (
            trace["ok"] and trace["missing"] is None and trace["seconds"] <= config.canary.within_s
        ), trace
        assert {s.split(":")[0] for s in trace["seen"].split(",")} == {"bigquery", *config.sinks}

    # Read back from each service: the canary partners at the injected version.
    documents = firestore_client(stack.project).collection(config.sinks["firestore"]["collection"])
    for pid, version in versions.items():
        assert documents.document(pid).get().get("partner_version") >= version
    solr = httpx.post(
        f"{stack.url('SOLR_PORT', '/solr')}/{config.solr_core}/get",
        data={"ids": ",".join(versions), "wt": "json"},
        timeout=30,
        auth=stack.solr_auth,
    )
    assert {
        d["id"]: d["partner_version"] >= versions[d["id"]] for d in solr.json()["response"]["docs"]
    } == {pid: True for pid in versions}
    mc = Endpoints.from_env().marketing_cloud()
    try:
        for pid, version in versions.items():
            [row] = mc.rowset(
                config.sinks["marketing_cloud"]["data_extension"], where=("PartnerId", pid)
            )
            assert int(row["partnerversion"]) >= version and row["status"] == "active"
    finally:
        mc.close()
    # A canary is not a business enrollment: no welcome journey for it.
    journey = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/journey-events",
        params={"event_definition_key": config.sinks["marketing_cloud"]["welcome_event"]},
        headers=stack.stub_headers(),
        timeout=30,
    ).json()["items"]
    assert not [e for e in journey if e.get("ContactKey") in versions]
