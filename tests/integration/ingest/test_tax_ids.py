"""Tax ids never in clear: enrollments with distinctive tax ids (US SSN, BR CPF, KR RRN) and hostile
messages carrying tax ids go claim → land → warehouse → the three sinks on the real services; then
every object landed, every row of every BigQuery table of the run and every sink document is read
back: no clear tax id, in any separator format, anywhere; the token where it belongs (raw JSON,
``tax_id_token``), equal tax ids give equal tokens, and the quarantine still says why."""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pyarrow.parquet as pq
import pytest

from enrollment.clients.services import firestore_client, storage_client
from enrollment.core.pii import Keyring, is_token
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.simulator.generator import Simulator
from enrollment.sync.run import SyncRun
from enrollment.warehouse.cycle import merge_batch
from tests.integration.conftest import produce
from tests.integration.sync.test_sinks import mc_rows

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

# Distinctive (and unlikely anywhere else) tax ids; the first two are one SSN written two ways.
VALID = {
    "us": ("US", "219-09-9999"),
    "us_again": ("US", "219099999"),
    "br": ("BR", "529.982.247-25"),
    "kr": ("KR", "850101-1234567"),
}
HOSTILE = ("123-45-6780", "123-45-67801", "111.444.777-35", "987-65-4321", "900101-2345678")


def clear_pattern(values) -> re.Pattern:
    """Any of these tax ids in any separator format (digits with or without '-', '.', '/', ' ')."""
    alternatives = ["[-./ ]?".join(re.sub(r"\D", "", v)) for v in values]
    return re.compile("|".join(f"(?<!\\d){a}(?!\\d)" for a in alternatives))


class Found:
    def __init__(self, pattern: re.Pattern):
        self.pattern, self.leaks, self.places = pattern, [], 0

    def check(self, where: str, text: str) -> None:
        self.places += 1
        if self.pattern.search(text):
            self.leaks.append(where)  # where only: never the value itself


def events(sim: Simulator) -> tuple[list[bytes], dict[str, str]]:
    values, partner_of = [], {}
    for name, (country, tax_id) in VALID.items():
        e = sim.event_for("partner.enrolled", country, 2, tax_id=tax_id)
        if "consents" in e["payload"]:
            e["payload"]["consents"]["marketing_email"] = True
        partner_of[name] = e["partner_id"]
        values.append(json.dumps(e).encode())
    # Hostile: malformed JSON, a tax id in the wrong format, an unknown schema version, not UTF-8,
    # and a tax id where no contract has one (a foreign field of an otherwise valid event).
    values.append(
        b'{"event_type": "partner.enrolled", "schema_version": 2, "payload": {"tax_id": "'
        + HOSTILE[0].encode()
        + b'", "email": "mal@example.com"'
    )
    wrong = sim.event_for("partner.enrolled", "US", 2, tax_id=HOSTILE[1])
    unknown = sim.event_for("partner.enrolled", "BR", 2, tax_id=HOSTILE[2])
    unknown["schema_version"] = 9
    values += [
        json.dumps(wrong).encode(),
        json.dumps(unknown).encode(),
        b"\xff\xfe SSN " + HOSTILE[3].encode() + b" \xed\xa0\x80",
    ]
    foreign = sim.event_for("partner.terminated", "US", 2)
    foreign["payload"]["extra"] = {"tax_id": HOSTILE[4]}
    partner_of["foreign"] = foreign["partner_id"]
    values.append(json.dumps(foreign).encode())
    return values, partner_of


def test_no_clear_tax_id_is_landed_warehoused_or_synced(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    keyring = Keyring.from_env()
    since = datetime.now(UTC) - timedelta(seconds=5)
    values, partner_of = events(Simulator(seed=int(time.time())))
    produce(
        stack.kafka,
        [
            type("M", (), {"key": str(i).encode(), "value": v, "topic": region_topic})()
            for i, v in enumerate(values)
        ],
    )
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    group = f"test-pii-{uuid.uuid4().hex[:6]}"
    manifest = claim(stack.kafka, group, "NA", region_topic, 2, bucket, max_batch=100_000)
    landed = land(stack.kafka, manifest, bucket, keyring)
    assert (landed.valid, landed.quarantined) == (5, 4), (landed.valid, landed.quarantined)
    merge_batch(warehouse, landed)
    sync = SyncRun(warehouse, bucket)
    for sink in sinks.values():
        sync.run(sink, "NA")
        for region in ("LATAM", "APAC"):
            sync.run(sink, region)

    found = Found(clear_pattern([v for _, v in VALID.values()] + list(HOSTILE)))
    # Every object of the batch, and everything written to the bucket since (the sync's hand-over).
    names = {
        manifest.valid_object,
        manifest.raw_object,
        manifest.quarantine_object,
        manifest.partners_object,
    }
    names |= {b.name for b in bucket.list_blobs() if b.time_created and b.time_created >= since}
    tables = {}
    for name in sorted(names):
        data = bucket.blob(name).download_as_bytes()
        if name.endswith(".parquet"):
            tables[name] = pq.read_table(io.BytesIO(data))
            found.check(name, json.dumps(tables[name].to_pylist(), default=str, ensure_ascii=False))
        else:
            found.check(name, data.decode("utf-8", "replace"))

    # The token where it belongs: the raw JSON and the valid rows; equal tax ids, equal tokens.
    token = {name: keyring.token(tax_id, "tax_id") for name, (_, tax_id) in VALID.items()}
    assert token["us"] == token["us_again"]
    raw = {
        r["event_id"]: json.loads(r["event_json"]) for r in tables[manifest.raw_object].to_pylist()
    }
    by_partner = {e["partner_id"]: e for e in raw.values()}
    for name in VALID:
        assert by_partner[partner_of[name]]["payload"]["tax_id"] == token[name]
    assert is_token(by_partner[partner_of["foreign"]]["payload"]["extra"]["tax_id"]), (
        "foreign fields tokenised too"
    )
    valid_rows = {r["partner_id"]: r for r in tables[manifest.valid_object].to_pylist()}
    assert {name: valid_rows[partner_of[name]]["tax_id_token"] for name in VALID} == token

    # BigQuery: every table of the run's datasets, every row.
    for dataset in (warehouse.dataset, warehouse.ops_dataset):
        for t in warehouse.client.list_tables(f"{warehouse.project}.{dataset}"):
            rows = warehouse.run(f"SELECT * FROM `{warehouse.project}.{dataset}.{t.table_id}`")
            found.check(
                f"bigquery {dataset}.{t.table_id}",
                json.dumps([dict(r.items()) for r in rows], default=str, ensure_ascii=False),
            )
    events_rows = warehouse.run(
        f"SELECT partner_id, tax_id_token, tax_id_present FROM {warehouse.table('events')} WHERE "
        "batch_id = @b",
        [_param("b", landed.batch_id)],
    )
    tokens = {r["partner_id"]: r["tax_id_token"] for r in events_rows}
    assert {name: tokens[partner_of[name]] for name in VALID} == token
    quarantine = warehouse.run(
        f"SELECT reasons, raw FROM {warehouse.table('quarantine')} WHERE batch_id = @b",
        [_param("b", landed.batch_id)],
    )
    reasons = sorted(r["reasons"] for r in quarantine)
    assert any("bad_format:payload.tax_id" in r for r in reasons) and any(
        "unknown_schema_version" in r for r in reasons
    ), reasons
    assert sum("unparsable" in r or "not_utf8" in r for r in reasons) == 2, reasons
    masked = [
        json.loads(r["raw"])
        for r in quarantine
        if r["raw"].startswith(b"{") and r["raw"].endswith(b"}")
    ]
    assert sorted(m["payload"]["tax_id"] for m in masked) == ["###-##-#####", "###.###.###-##"], (
        "the operator sees the shape"
    )

    # The sinks: Firestore documents, Solr documents, Marketing Cloud rows.
    ids = list(partner_of.values())
    fs_docs = [
        d.to_dict()
        for d in firestore_client(stack.project)
        .collection(sinks["firestore"].collection.id)
        .stream()
    ]
    solr_docs, mc = sinks["solr"].get(ids), mc_rows(stack, sinks["marketing_cloud"].data_extension)
    enrolled = {partner_of[name] for name in VALID}
    assert (
        enrolled <= {d.get("partner_id") for d in fs_docs}
        and enrolled <= set(solr_docs)
        and enrolled <= set(mc)
    ), "the sinks hold them"
    found.check("firestore", json.dumps(fs_docs, default=str, ensure_ascii=False))
    found.check("solr", json.dumps(solr_docs, default=str, ensure_ascii=False))
    found.check("marketing cloud", json.dumps(mc, default=str, ensure_ascii=False))
    found.check(
        "marketing cloud journey",
        httpx.get(
            f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/journey-events",
            headers=stack.stub_headers(),
        ).text,
    )
    # The check itself finds a clear tax id (in another format than the one produced).
    assert Found(found.pattern).pattern.search('{"x": "219 09 9999"}') and found.pattern.search(
        "52998224725"
    )

    assert found.leaks == [], f"clear tax ids found in: {found.leaks}"
    assert found.places >= 12


def _param(name: str, value: str):
    from google.cloud import bigquery

    return bigquery.ScalarQueryParameter(name, "STRING", value)
