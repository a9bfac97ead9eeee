"""Nothing personal in task logs, XCom or alerts: a partner with distinctive values (names, email,
phone, a US SSN) and hostile messages carrying them go through ingest, the warehouse, every sink,
a failing reconciliation (an alert) and an erasure; then every line the tasks logged, every XCom
value they pushed and every alert payload is searched for those values and for the partner's id."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime

import pytest

from enrollment.clients.services import firestore_client
from enrollment.simulator.faults import Message
from enrollment.simulator.generator import Simulator
from tests.integration.conftest import current_raw_config, produce, use_config

pytestmark = [pytest.mark.integration]

REGION = "AMER"


def test_no_personal_value_reaches_a_task_log_an_xcom_or_an_alert(
    stack, airflow_db, dagbag, isolated_pipeline, tmp_path, monkeypatch, capfd, caplog
):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.sync import sync_dag
    from enrollment_airflow.warehouse import warehouse_dag

    raw = current_raw_config() | {
        "alerts": {"on_failure": "tests.integration.alert_recorder:record"}
    }
    config = use_config(raw, tmp_path / "alerting.yaml", monkeypatch)
    alerts = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("ENROLLMENT_TEST_ALERTS", str(alerts))
    caplog.set_level(
        logging.INFO
    )  # Airflow's task logging level (logging_level = INFO): what a task log holds
    started = datetime.now(UTC)
    region = config.region(REGION)

    messages = [
        m
        for m in Simulator(seed=uuid.uuid4().int % 1_000_000, config=config).take(800)
        if m.topic == region.topic
    ]
    template = next(
        json.loads(m.value)
        for m in messages
        if json.loads(m.value)["event_type"] == "partner.enrolled"
        and json.loads(m.value)["payload"]["address"]["country"] == "US"
    )
    marker = uuid.uuid4().hex[:8]
    person = {
        "first_name": f"Zephyrine{marker}",
        "last_name": f"Quillfeather{marker}",
        "email": f"zq.{marker}@example.org",
        "tax_id": "519-27-4836",
    }
    enrollment = template | {
        "event_id": str(uuid.uuid4()),
        "partner_id": f"US{marker.upper()}ZZ",
        "payload": template["payload"] | {k: v for k, v in person.items()},
    }
    pid, phone = enrollment["partner_id"], template["payload"]["phone"]
    assert re.fullmatch(r"[A-Z]{2}[0-9A-Z]{10}", pid)
    hostile = [
        json.dumps(enrollment | {"event_id": str(uuid.uuid4())})[:-30].encode(),  # malformed JSON
        json.dumps(
            enrollment
            | {
                "event_id": str(uuid.uuid4()),
                "payload": enrollment["payload"] | {"tax_id": "519274836999"},
            }
        ).encode(),
        json.dumps(enrollment | {"event_id": str(uuid.uuid4()), "schema_version": 9}).encode(),
    ]
    produce(
        stack.kafka,
        messages
        + [Message(0, region.topic, pid.encode(), json.dumps(enrollment).encode())]
        + [Message(0, region.topic, pid.encode(), h) for h in hostile],
    )

    assert ingest_dag(region).test().state == DagRunState.SUCCESS
    assert warehouse_dag().test().state == DagRunState.SUCCESS
    for name in config.sinks:
        assert sync_dag(name).test().state == DagRunState.SUCCESS, name
    # A document lost behind the pipeline's back: the reconciliation fails and alerts.
    firestore_client(stack.project).collection(config.sinks["firestore"]["collection"]).document(
        pid
    ).delete()
    today = started.date().isoformat()
    assert (
        dagbag.dags["reconciliation"].test(run_conf={"day": today, "regions": [REGION]}).state
        == DagRunState.FAILED
    )
    erase = {
        "partner_ids": [pid],
        "reason": "ccpa_deletion",
        "ticket": f"DPO-{marker}",
        "settle_seconds": 0,
    }
    assert dagbag.dags["erase_partners"].test(run_conf=erase).state == DagRunState.SUCCESS

    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    with create_session() as session:
        xcoms = [
            (x.dag_id, x.task_id, json.dumps(x.value, default=str))
            for x in session.query(XComModel).filter(XComModel.timestamp >= started)
        ]
    payloads = alerts.read_text(encoding="utf-8") if alerts.exists() else ""
    assert "ALERT reconciliation" in logs and payloads, "the failing reconciliation alerted"
    assert len(xcoms) >= 5 and len(logs) > 10_000, "there was something to search"
    ssn_digits = person["tax_id"].replace("-", "")
    needles = {
        "first name": person["first_name"],
        "last name": person["last_name"],
        "email": person["email"],
        "phone": phone,
        "tax id": person["tax_id"],
        "tax id digits": ssn_digits,
        "hostile tax id": "519274836999",
        "partner id": pid,
    }
    leaks = {
        what: [
            where
            for where, text in [
                ("task logs", logs),
                ("alerts", payloads),
                *((f"xcom {d}.{t}", v) for d, t, v in xcoms),
            ]
            if value in text
        ]
        for what, value in needles.items()
    }
    assert not {k: v for k, v in leaks.items() if v}, leaks
