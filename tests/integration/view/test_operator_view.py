"""The operator page's figures (``enrollment.operator_view``) against what BigQuery and Kafka hold:
a small pipeline with faults runs in-process on a configuration of its own (its topics, group and
datasets), then every section is compared with counts taken independently (own SQL, Kafka
watermarks); broken and late are told apart; a fresh stack (no tables) reads as empty."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, defaultdict

import pytest
from confluent_kafka import Consumer, TopicPartition
from google.cloud import bigquery

from enrollment.clients.kafka import KafkaSettings
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.view.overview import overview
from enrollment.view.reader import EXAMPLE_REASONS
from enrollment.view.regions import region_detail
from tests.integration.conftest import ingest_and_warehouse, pipeline_warehouse, produce

pytestmark = [pytest.mark.integration]


def _pending(kafka: KafkaSettings, group: str, config) -> dict[str, int]:
    consumer = Consumer(kafka.consumer({"group.id": group}))
    try:
        out = {}
        for region in config.regions:
            parts = [TopicPartition(region.topic, p) for p in range(region.partitions)]
            committed = consumer.committed(parts, timeout=10)
            out[region.code] = sum(
                consumer.get_watermark_offsets(tp, timeout=10)[1] - max(c.offset, 0)
                for tp, c in zip(parts, committed, strict=True)
            )
        return out
    finally:
        consumer.close()


def _personal_values(messages) -> set[str]:
    """Emails, phones, tax ids and partner ids of the
    quarantined messages, as the producer sent them."""
    found = set()
    for m in messages:
        if m.expected["outcome"] != "quarantined":
            continue
        text = m.value.decode("utf-8", "replace") if m.value else ""
        found |= set(re.findall(r'"(?:email|phone|tax_id)"\s*:\s*"([^"]{6,})"', text))
        found |= set(re.findall(r'"partner_id"\s*:\s*"([A-Z]{2}[0-9A-Z]{10})"', text))
    return found


def test_every_section_equals_what_bigquery_and_kafka_hold(stack, airflow_db, isolated_pipeline):
    config = isolated_pipeline
    messages = Simulator(
        seed=4242, faults=FaultRates.mix(0.08), initial_partners=40, config=config
    ).take(1200)
    ingest_and_warehouse(stack, config, messages)
    # More events after the batches: pending in Kafka, not landed.
    later = Simulator(
        seed=4343, faults=FaultRates.mix(0.0), initial_partners=10, config=config
    ).take(150)
    produce(stack.kafka, later)

    warehouse = pipeline_warehouse(stack, config)
    client = warehouse.client

    def rows(sql, params=None):
        sql = sql.format(
            w=f"`{stack.project}.{config.warehouse_dataset}`",
            o=f"`{stack.project}.{config.ops_dataset}`",
        )
        return [
            dict(r)
            for r in client.query(
                sql, job_config=bigquery.QueryJobConfig(query_parameters=params or [])
            ).result()
        ]

    view = overview(warehouse, stack.kafka, config, window_hours=24)
    regions = {r["code"]: r for r in view["regions"]["regions"]}
    assert all(meta["error"] is None for meta in view["regions"]["sources"].values()), view[
        "regions"
    ]["sources"]

    # Kafka: pending = end offsets - the group's committed offsets, per region.
    pending = _pending(stack.kafka, config.consumer_group, config)
    assert {c: r["pending"] for c, r in regions.items()} == pending
    assert sum(pending.values()) == len(later)
    for code, r in regions.items():
        assert (r["oldest_pending_age_s"] is not None) == (pending[code] > 0)
        assert r["oldest_pending_age_s"] is None or 0 <= r["oldest_pending_age_s"] < 600

    # Ledger: every batch of the run, each stage's numbers as recorded, balanced.
    ledger = rows(
        "SELECT region, batch_id, stage, offsets_in, valid, quarantined, duplicates, "
        "COALESCE(skipped, 0) AS skipped FROM {o}.ledger"
    )
    assert ledger
    shown = {
        (
            code,
            b["batch_id"],
            stage,
            s["offsets_in"],
            s["valid"],
            s["quarantined"],
            s["duplicates"],
            s["skipped"],
        )
        for code, r in regions.items()
        for b in r["batches"]
        for stage, s in b["stages"].items()
    }
    assert shown == {
        (
            x["region"],
            x["batch_id"],
            x["stage"],
            x["offsets_in"],
            x["valid"],
            x["quarantined"],
            x["duplicates"],
            x["skipped"],
        )
        for x in ledger
    }
    assert all(
        b["balanced"] and b["status"] == "ok" for r in regions.values() for b in r["batches"]
    )
    assert sum(b["offsets_in"] for r in regions.values() for b in r["batches"]) == len(messages)

    # Events per minute: the land rows' valid events, all recorded within the hour.
    valid = rows(
        "SELECT region, SUM(valid) AS n FROM {o}.ledger WHERE stage = 'land' GROUP BY region"
    )
    assert {c: sum(p["events"] for p in r["events_per_minute"]) for c, r in regions.items()} == {
        x["region"]: x["n"] for x in valid
    }
    assert all(len(r["events_per_minute"]) == 60 for r in regions.values())

    # Freshness: the newest batch's ages as the warehouse cycle recorded them in metrics.
    metrics = rows(
        """SELECT region, batch_id, name, value FROM {o}.metrics
        WHERE name IN ('freshness_oldest_s', 'freshness_p95_s', 'freshness_newest_s')"""
    )
    by_batch = defaultdict(dict)
    for x in metrics:
        by_batch[(x["region"], x["batch_id"])][x["name"]] = x["value"]
    for code, r in regions.items():
        f = r["freshness"]
        assert f is not None, code
        assert by_batch[(code, f["batch_id"])] == {
            "freshness_oldest_s": f["oldest_event_age_s"],
            "freshness_p95_s": f["p95_event_age_s"],
            "freshness_newest_s": f["newest_event_age_s"],
        }
        assert f["oldest_event_age_s"] >= f["p95_event_age_s"] >= f["newest_event_age_s"]
        assert r["status"] == "ok", r["why"]

    # Sinks: no sync ran, so every warehoused batch is
    # behind in every sink; nothing committed or refused.
    warehoused = Counter(x["region"] for x in ledger if x["stage"] == "warehouse")
    for sink in view["sinks"]["sinks"]:
        assert {r["region"]: r["behind"] for r in sink["regions"]} == {
            c: warehoused.get(c, 0) for c in regions
        }, sink["sink"]
        assert (
            all(r["committed"] is None and r["quarantined"] == 0 for r in sink["regions"])
            and sink["last_failure"] is None
        )
    assert all(meta["error"] is None for meta in view["sinks"]["sources"].values()), view["sinks"][
        "sources"
    ]

    # Quarantine: by region and reason code (a message under each of its reasons), as the table and
    # the simulator say.
    table = rows("SELECT region, reasons, kafka_partition, kafka_offset FROM {w}.quarantine")
    by_reason = Counter((x["region"], reason) for x in table for reason in x["reasons"].split(","))
    q = view["quarantine"]
    assert {(x["region"], x["reason"]): x["count"] for x in q["counts"]["by_reason"]} == dict(
        by_reason
    )
    assert q["counts"]["messages"] == dict(Counter(x["region"] for x in table))
    expected = Counter(
        (m.expected["region"], reason)
        for m in messages
        if m.expected["outcome"] == "quarantined"
        for reason in m.expected["reasons"]
    )
    assert by_reason == expected
    # Examples: real rows of their reason, at most 3 per reason, for the most frequent reasons.
    where = {
        (x["region"], x["kafka_partition"], x["kafka_offset"]): x["reasons"].split(",")
        for x in table
    }
    examples = q["examples"]["examples"]
    assert examples and all(
        e["reason"] in where[(e["region"], e["kafka_partition"], e["kafka_offset"])]
        for e in examples
    )
    per_reason = Counter(e["reason"] for e in examples)
    totals = Counter()
    for (_, reason), n in by_reason.items():
        totals[reason] += n
    top = sorted(totals, key=lambda r: (-totals[r], r))[:EXAMPLE_REASONS]
    assert per_reason == {r: min(3, totals[r]) for r in top}
    assert q["recovered"] == {**q["recovered"], "exists": False, "by_reason": [], "error": None}

    # Nothing personal in what the page gets: the producer's
    # own values are nowhere in it (and there are some).
    secrets = _personal_values(messages)
    assert len(secrets) > 10
    dump = json.dumps(view, default=str)
    assert [s for s in secrets if s in dump] == []

    # Health: the table does not exist here: empty, not an error.
    assert view["health"]["services"] == [] and view["health"]["error"] is None


def test_broken_and_late_are_told_apart_and_recovered_counts(stack, airflow_db, isolated_pipeline):
    """A stage that failed (a sync ledger row not ok) is broken; a freshness measurement over the
    SLA is late; a ledger with the ``recovered`` column balances with it."""
    from airflow.utils.state import DagRunState

    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.warehouse import warehouse_dag

    config = isolated_pipeline
    produce(
        stack.kafka,
        Simulator(seed=77, faults=FaultRates.mix(0.05), initial_partners=20, config=config).take(
            300
        ),
    )
    for region in config.regions[:2]:
        assert ingest_dag(region).test().state == DagRunState.SUCCESS
    assert warehouse_dag().test().state == DagRunState.SUCCESS
    broken_region, late_region = config.regions[0].code, config.regions[1].code
    warehouse = pipeline_warehouse(stack, config)
    client = warehouse.client
    o = f"`{stack.project}.{config.ops_dataset}`"
    view = overview(warehouse, stack.kafka, config)
    assert {r["code"]: r["status"] for r in view["regions"]["regions"]}[broken_region] == "ok"
    assert all(b["recovered"] == 0 for r in view["regions"]["regions"] for b in r["batches"]), (
        "no recovered column: read as 0"
    )

    batch = client.query(f"""SELECT batch_id, offsets_in, valid, quarantined, duplicates
        FROM {o}.ledger WHERE region = '{broken_region}' AND stage = 'warehouse'""").result()
    batch = dict(next(iter(batch)))
    assert batch["quarantined"] > 0
    client.query(f"ALTER TABLE {o}.ledger ADD COLUMN IF NOT EXISTS recovered INT64").result()
    client.query(
        f"""INSERT INTO {o}.ledger (batch_id, region, stage, offsets_in, valid, quarantined,
            duplicates, rows_merged, seconds, ok, detail, recorded_at, skipped, recovered)
        VALUES (@b, @r, 'recovered', @o, @v, @q - 1, @d, 0, 0.0, TRUE, '', CURRENT_TIMESTAMP(),
                0, 1),
               (@b, @r, 'sync_solr', @o, @v, @q, @d, 0, 0.0, FALSE, @detail,
                CURRENT_TIMESTAMP(), 0, NULL)""",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter("b", "STRING", batch["batch_id"]),
                bigquery.ScalarQueryParameter("r", "STRING", broken_region),
                bigquery.ScalarQueryParameter("o", "INT64", batch["offsets_in"]),
                bigquery.ScalarQueryParameter("v", "INT64", batch["valid"]),
                bigquery.ScalarQueryParameter("q", "INT64", batch["quarantined"]),
                bigquery.ScalarQueryParameter("d", "INT64", batch["duplicates"]),
                bigquery.ScalarQueryParameter(
                    "detail",
                    "STRING",
                    "set aside: partner AM7K2P9QXW4Z ana.lima@example.com unreadable",
                ),
            ]
        ),
    ).result()
    client.query(
        f"""INSERT INTO {o}.metrics (measured_at, source, region, batch_id, name, value)
        VALUES (TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 1 SECOND), 'ingest', @r, 'late-test',
                'freshness_oldest_s', @v)""",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter("r", "STRING", late_region),
                bigquery.ScalarQueryParameter("v", "FLOAT64", config.freshness_sla_s + 100),
            ]
        ),
    ).result()

    view = overview(warehouse, stack.kafka, config)
    regions = {r["code"]: r for r in view["regions"]["regions"]}
    shown = next(b for b in regions[broken_region]["batches"] if b["batch_id"] == batch["batch_id"])
    assert (
        shown["stages"]["recovered"]["recovered"] == 1 and shown["stages"]["recovered"]["balanced"]
    )
    assert shown["recovered"] == 1 and shown["quarantined"] == batch["quarantined"] - 1, (
        "the batch's figures are the recovered row's"
    )
    assert shown["status"] == "broken" and regions[broken_region]["status"] == "broken"
    assert regions[late_region]["status"] == "late", regions[late_region]["why"]
    assert regions[late_region]["freshness"]["batch_id"] == "late-test"
    solr = next(s for s in view["sinks"]["sinks"] if s["sink"] == "solr")
    assert solr["status"] == "broken" and solr["last_failure"]["batch_id"] == batch["batch_id"]
    assert (
        "AM7K2P9QXW4Z" not in solr["last_failure"]["reason"]
        and "ana.lima" not in solr["last_failure"]["reason"]
    )
    assert {s["sink"]: s["status"] for s in view["sinks"]["sinks"] if s["sink"] != "solr"} == {
        s: "ok" for s in config.sinks if s != "solr"
    }


def test_a_fresh_stack_reads_as_empty_sections_not_errors(stack, pipeline_config):
    """No dataset, no table: every section is empty and says no error."""
    config = dataclasses.replace(
        pipeline_config, warehouse_dataset="page_absent_wh", ops_dataset="page_absent_ops"
    )
    warehouse = pipeline_warehouse(stack, config)
    view = overview(warehouse, stack.kafka, config, window_hours=6)
    assert [r["batches"] for r in view["regions"]["regions"]] == [[] for _ in config.regions]
    assert all(
        r["freshness"] is None and sum(p["events"] for p in r["events_per_minute"]) == 0
        for r in view["regions"]["regions"]
    )
    assert all(s["behind"] == 0 and s["last_failure"] is None for s in view["sinks"]["sinks"])
    assert (
        view["quarantine"]["counts"]["by_reason"] == []
        and view["quarantine"]["examples"]["examples"] == []
    )
    assert view["health"]["services"] == [] and view["sinks"]["canary"]["regions"] == {
        r.code: None for r in config.regions
    }
    sections = [
        *view["regions"]["sources"].values(),
        *view["sinks"]["sources"].values(),
        view["sinks"]["canary"],
        view["quarantine"]["counts"],
        view["quarantine"]["examples"],
        view["quarantine"]["recovered"],
        view["health"],
    ]
    assert [s["error"] for s in sections] == [None] * len(sections)
    detail = region_detail(warehouse, stack.kafka, config, config.regions[0].code.lower())
    assert detail["region"]["code"] == config.regions[0].code and detail["region"]["batches"] == []
