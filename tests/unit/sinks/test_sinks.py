"""Sink logic that needs no service: revisions, documents, accounting, configuration, quoting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from enrollment.config import DEFAULT_CONFIG, parse_config
from enrollment.sinks.base import SinkResult, revision
from enrollment.sinks.firestore import profile
from enrollment.sinks.marketing_cloud import row
from enrollment.sinks.solr import document, quote

WHEN = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def partner(**fields) -> dict:
    base = {
        "partner_id": "EMABCDEFGH12",
        "partner_version": 2,
        "region": "EMEA",
        "country": "DE",
        "first_name": "José",
        "last_name": "Müller",
        "email": "jose@example.de",
        "phone": "+49301234567",
        "status": "active",
        "enrolled_at": WHEN,
        "updated_at": WHEN,
    }
    return base | fields


def test_revision_grows_with_the_version_first_then_with_filled_fields():
    early = partner(
        status=None, enrolled_at=None, first_name=None
    )  # an update came before the enrollment
    filled = partner()  # the late enrollment filled the fields at the same version
    newer = partner(partner_version=3, first_name=None, phone=None)
    assert revision(early) < revision(filled) < revision(newer)
    assert revision(filled) == revision(dict(filled)), "a function of the state only"


def test_documents_carry_what_each_service_needs_and_no_more():
    p = partner()
    doc = profile(p)
    assert (
        doc["revision"] == revision(p)
        and doc["partner_version"] == 2
        and doc["address"].keys() == {"line1", "city", "postal_code", "state"}
    )
    search = document(p)
    assert search["id"] == p["partner_id"] and search["enrolled_at"] == "2026-03-01T12:30:00.000Z"
    assert "email" not in search and "phone" not in search, "search needs no contact data"
    assert document(partner(status=None))["status"] == "pending", (
        "not enrolled yet: indexed, not searchable"
    )
    mc = row(p)
    assert (
        mc["PartnerId"] == p["partner_id"]
        and mc["EmailAddress"] == p["email"]
        and mc["PartnerVersion"] == 2
        and mc["Status"] == "active"
    )


def test_a_sink_result_accounts_for_every_partner_and_survives_xcom():
    result = SinkResult(
        "solr",
        partners=5,
        written=3,
        unchanged=1,
        rejected=[("EM1", "10003: too long")],
        receipts=["r1"],
    )
    assert result.accounted()
    again = SinkResult.from_dict(result.as_dict())
    assert again == result and again.rejected == [("EM1", "10003: too long")]
    assert not SinkResult("solr", partners=5, written=3).accounted()


@pytest.mark.parametrize("text", ["names:*", 'a" OR "b', "\\", "(", "*:*"])
def test_user_text_becomes_one_literal_phrase(text):
    quoted = quote(text)
    assert quoted.startswith('"') and quoted.endswith('"')
    inner = quoted[1:-1]
    assert '"' not in inner.replace('\\"', ""), "every quote inside is escaped"


def test_sink_entries_need_a_module_and_a_dag_safe_name():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert set(parse_config(raw).sinks) == {"firestore", "solr", "marketing_cloud"}
    for bad in ({"Bad-Name": {"module": "x"}}, {"ok": {}}):
        with pytest.raises(ValueError, match="sink"):
            parse_config(raw | {"sinks": bad})


def test_solr_bisects_a_refused_chunk_down_to_the_documents_it_refuses():
    """Solr refuses a whole request for one bad document (HTTP 400): the sink finds the culprits,
    returns them with Solr's message (without the refused value's bytes), and writes the rest."""
    import json

    import httpx

    from enrollment.sinks.solr import SolrSink

    indexed, requests = set(), []

    def solr(request: httpx.Request) -> httpx.Response:
        docs = json.loads(request.content)
        requests.append(len(docs))
        for d in docs:  # like Solr: documents before the bad one are indexed, then it stops
            if d["id"].startswith("BAD"):
                return httpx.Response(
                    400,
                    json={
                        "error": {
                            "msg": f"Exception writing document id {d['id']} to the index; "
                            "possible analysis error: "
                            'Document contains at least one immense term in field="sponsor_id". '
                            "The prefix of the first immense term is: '[106, 111, 115]...'",
                            "code": 400,
                        }
                    },
                )
            indexed.add(d["id"])
        return httpx.Response(200, json={"responseHeader": {"status": 0}})

    sink = SolrSink("http://solr.invalid/solr", "partners", chunk=16, outage_s=0)
    sink.http = httpx.Client(transport=httpx.MockTransport(solr))
    partners = [partner(partner_id=f"{'BAD' if i in (3, 11) else 'EM'}{i:09d}") for i in range(20)]
    result = sink.write(partners, set())
    assert [pid for pid, _ in result.rejected] == ["BAD000000003", "BAD000000011"]
    assert all(
        "immense term" in message and "106, 111" not in message for _, message in result.rejected
    ), "the value is not echoed"
    assert indexed == {p["partner_id"] for p in partners} - {"BAD000000003", "BAD000000011"}
    assert result.written == 18 and result.accounted()
    assert len(requests) < 20, f"bisected, not one request per document: {requests}"


def test_a_welcome_call_counts_as_not_queued_only_when_the_service_cannot_have_queued_it():
    import httpx

    from enrollment.clients.marketing_cloud import MarketingCloudError, not_queued

    def answered(status: int) -> httpx.HTTPStatusError:
        request = httpx.Request("POST", "http://mc.invalid/interaction/v1/async/events")
        return httpx.HTTPStatusError(
            "x", request=request, response=httpx.Response(status, request=request)
        )

    assert (
        not_queued(MarketingCloudError("refused"))
        and not_queued(httpx.ConnectError("refused"))
        and not_queued(answered(503))
    )
    assert not not_queued(httpx.ReadTimeout("no answer")) and not not_queued(answered(504)), (
        "it may have queued: the claim stays"
    )
