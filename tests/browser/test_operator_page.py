"""The "Enrollment pipeline" page, in a real browser (Debian's chromium), after a simulated run
with faults on the running pipeline: what it shows is what Kafka and BigQuery hold.

One region (APAC) is carried by its live DAGs; then a few records are produced with its ingest
paused, so the page has a backlog to show. The test logs in as an operator would, opens the page
from the navigation, compares its figures with Kafka and BigQuery, opens the region, starts a
dry-run re-processing from the form, and keeps a screenshot (``test-artifacts/``). At the end the
backlog it made is carried in, so the pipeline is left as it was found: everything ingested.
"""

from __future__ import annotations

import re
import time

import pytest

from enrollment.clients.services import bigquery_client, storage_client
from enrollment.ingest.backlog import total_pending
from enrollment.ingest.pending import pending_batches
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from tests.browser.conftest import ARTIFACTS
from tests.integration.conftest import produce

pytestmark = [pytest.mark.integration]

REGION = "APAC"
WAITING = 37  # records left in Kafka for the page to count


def carry(stack, client, config, region, dag_ids: list[str], timeout_s: float = 420) -> None:
    """Unpauses the region's carriers until its Kafka
    backlog, warehouse queue and runs are empty."""
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    for dag_id in dag_ids:
        client.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    try:
        deadline = time.monotonic() + timeout_s

        def busy() -> bool:
            return any(
                client.http.get(
                    f"/dags/{d}/dagRuns", params={"state": ["running", "queued"]}
                ).json()["total_entries"]
                for d in dag_ids
            )

        while (
            total_pending(stack.kafka, config.consumer_group, [region])
            or busy()
            or any(b.region == region.code for b in pending_batches(bucket, config.consumer_group))
        ):
            assert time.monotonic() < deadline, (
                f"{region.code} was not carried into the warehouse within {timeout_s:.0f} s"
            )
            time.sleep(3)
    finally:
        for dag_id in dag_ids:
            client.http.patch(f"/dags/{dag_id}", json={"is_paused": True})


def number(text: str) -> int:
    return int(text.strip().replace(",", ""))


def test_the_page_shows_what_kafka_and_bigquery_hold_and_starts_a_dry_run(
    stack, pipeline_config, login
):
    from stack.airflow_client import AirflowClient

    config, region = pipeline_config, pipeline_config.region(REGION)
    client = AirflowClient(stack)
    carriers = [f"ingest_{REGION.lower()}", "warehouse"]
    for dag_id in [*carriers, "requeue_quarantine"]:
        client.wait_for_dag(dag_id, timeout_s=120)
    seed = int(time.time())

    # A simulated run with faults, carried into the warehouse by the live DAGs; then a backlog.
    produce(
        stack.kafka,
        [
            m
            for m in Simulator(seed=seed, faults=FaultRates.mix(0.05), config=config).take(3000)
            if m.topic == region.topic
        ],
    )
    carry(stack, client, config, region, carriers)
    produce(
        stack.kafka,
        [m for m in Simulator(seed=seed + 1, config=config).take(400) if m.topic == region.topic][
            :WAITING
        ],
    )
    pending = total_pending(stack.kafka, config.consumer_group, [region])
    assert pending == WAITING

    # What BigQuery holds, counted here with SQL of the test's own.
    bq = bigquery_client(stack.project)
    wh, ops = (
        f"`{stack.project}.{config.warehouse_dataset}`",
        f"`{stack.project}.{config.ops_dataset}`",
    )
    window = "kafka_timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 24 HOUR)"
    reasons = {
        r["reason"]: r["n"]
        for r in bq.query(f"""SELECT reason, COUNT(*) AS n
        FROM {wh}.quarantine, UNNEST(SPLIT(reasons, ',')) AS reason
        WHERE region = '{REGION}' AND {window} GROUP BY reason""").result()
    }
    messages = next(
        iter(
            bq.query(
                f"SELECT COUNT(*) AS n FROM {wh}.quarantine WHERE region = '{REGION}' AND {window}"
            ).result()
        )
    )["n"]
    assert messages > 0, (
        "the run with faults quarantined nothing: the page would have nothing to show"
    )
    batches = [
        dict(r)
        for r in bq.query(f"""SELECT batch_id, offsets_in, valid, quarantined, duplicates
        FROM {ops}.ledger WHERE region = '{REGION}' AND stage = 'warehouse'
        ORDER BY recorded_at DESC, batch_id DESC LIMIT 5""").result()
    ]
    assert batches

    page = login("admin")
    page.goto(stack.url("AIRFLOW_PORT", "/"))
    page.get_by_role("link", name=re.compile("Enrollment")).first.click()  # the navigation entry
    page.wait_for_url(re.compile(r"/plugin/enrollment-pipeline"))
    frame = page.frame_locator("iframe")
    row = frame.locator(f'#regions tr[data-region="{REGION}"]')
    row.wait_for(timeout=30_000)
    assert number(row.locator('[data-field="pending"]').inner_text()) == pending
    assert batches[0]["batch_id"] in row.locator('[data-field="last_batch"]').inner_text()
    assert "balanced" in row.locator('[data-field="last_batch"]').inner_text()

    matrix = frame.locator("#quarantine-by-reason")
    assert number(matrix.locator(f'tfoot [data-region="{REGION}"]').inner_text()) == messages
    shown = matrix.locator("tbody tr[data-reason]")
    assert shown.count() > 0
    for i in range(shown.count()):
        reason = shown.nth(i).get_attribute("data-reason")
        assert number(
            shown.nth(i).locator(f'[data-region="{REGION}"]').inner_text()
        ) == reasons.get(reason, 0), reason

    # The region, opened from its row: its last batches and their ledger numbers.
    row.get_by_role("link", name=REGION, exact=True).click()
    first = frame.locator("#region table.batches tbody tr[data-batch]").first
    first.wait_for(timeout=30_000)
    for b in batches:
        cells = frame.locator(f'#region tr[data-batch="{b["batch_id"]}"] td')
        assert [number(cells.nth(i).inner_text()) for i in (2, 3, 4, 5)] == [
            b["offsets_in"],
            b["valid"],
            b["quarantined"],
            b["duplicates"],
        ]
        assert "balanced" in cells.nth(8).inner_text()

    # A dry run of re-processing, started from the form: a real run of requeue_quarantine that
    # changes nothing.
    recovered_before = _recovered(bq, ops)
    form = frame.locator("form#requeue")
    form.locator('select[name="region"]').select_option(REGION)
    assert form.locator('input[name="dry_run"]').is_checked()
    form.get_by_role("button", name="Start").click()
    link = form.locator("output a")
    link.wait_for(timeout=30_000)
    run_id = link.inner_text().split(" run ", 1)[1]
    run = client.http.get(f"/dags/requeue_quarantine/dagRuns/{run_id}").raise_for_status().json()
    assert run["conf"]["dry_run"] is True and run["conf"]["region"] == REGION
    client.http.patch("/dags/requeue_quarantine", json={"is_paused": False}).raise_for_status()
    try:
        assert client.wait_for_run("requeue_quarantine", run_id, timeout_s=300) == "success", (
            client.failure_logs("requeue_quarantine", run_id)
        )
    finally:
        client.http.patch("/dags/requeue_quarantine", json={"is_paused": True})
    assert _recovered(bq, ops) == recovered_before
    # Its counts, by the page's last re-processing runs: what the run's report task returned.
    result = (
        client.http.get(
            f"/dags/requeue_quarantine/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value"
        )
        .raise_for_status()
        .json()["value"]
    )
    assert result["dry_run"] is True and set(result["regions"]) == {REGION}
    page.goto(stack.url("AIRFLOW_PORT", f"/enrollment/regions/{REGION}"))
    shown = page.locator(f'#requeue-runs tr[data-run="{run_id}"]')
    shown.wait_for(timeout=30_000)
    for field in ("candidates", "recoverable", "still_invalid", "expired"):
        assert (
            number(shown.locator(f'[data-field="{field}"]').inner_text()) == result["total"][field]
        ), field
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "operator-page-region.png"), full_page=True)

    # The whole page, as the README shows it.
    overview = page.context.new_page()
    overview.goto(stack.url("AIRFLOW_PORT", "/enrollment/"))
    overview.locator("#regions").wait_for()
    overview.screenshot(path=str(ARTIFACTS / "operator-page.png"), full_page=True)

    carry(stack, client, config, region, carriers)  # the backlog this test made
    assert total_pending(stack.kafka, config.consumer_group, [region]) == 0


def _recovered(bq, ops: str) -> int:
    from google.api_core.exceptions import NotFound

    try:
        return next(iter(bq.query(f"SELECT COUNT(*) AS n FROM {ops}.recovered").result()))["n"]
    except NotFound:
        return 0
