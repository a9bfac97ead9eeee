"""Solr: index partner documents with the project's configset, query them back (accents folded);
only an authenticated request is answered."""

import dataclasses
import time
import uuid

import httpx
import pysolr
import pytest

from enrollment.clients.services import Endpoints
from enrollment.ops.health import ServiceDown, require

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


@pytest.fixture
def core(stack, pipeline_config):
    return pysolr.Solr(
        f"{stack.url('SOLR_PORT', '/solr')}/{pipeline_config.solr_core}",
        timeout=10,
        always_commit=False,
        auth=stack.solr_auth,
    )


def test_index_and_query_partners_with_accent_insensitive_names(core):
    run = uuid.uuid4().hex[:8]
    docs = [
        {
            "id": f"t-{run}-1",
            "first_name": "José",
            "last_name": "Müller",
            "region": "EMEA",
            "country": "DE",
            "status": "active",
            "sponsor_id": f"t-{run}-0",
            "revision": 101,
        },
        {
            "id": f"t-{run}-2",
            "first_name": "Ana",
            "last_name": "Gonçalves",
            "region": "LATAM",
            "country": "BR",
            "status": "active",
            "sponsor_id": f"t-{run}-1",
            "revision": 101,
        },
    ]
    core.add(docs, commitWithin=500)
    try:
        # Real-time get sees the documents before any commit.
        got = httpx.get(
            f"{core.url}/get",
            params={"ids": ",".join(d["id"] for d in docs), "wt": "json"},
            timeout=10,
            auth=core.auth,
        ).json()
        assert sorted(d["id"] for d in got["response"]["docs"]) == [d["id"] for d in docs]

        core.commit()
        hits = core.search("names:jose AND names:muller", fq=f"id:t-{run}-*")
        assert [h["id"] for h in hits] == [f"t-{run}-1"]
        hits = core.search("names:goncalves", fq=["region:LATAM", f"sponsor_id:t-{run}-1"])
        assert [h["id"] for h in hits] == [f"t-{run}-2"]
    finally:
        core.delete(q=f"id:t-{run}-*", commit=True)
    assert len(core.search(f"id:t-{run}-*")) == 0


def test_solr_answers_only_an_authenticated_request(stack, pipeline_config):
    url = f"{stack.url('SOLR_PORT', '/solr')}/{pipeline_config.solr_core}/admin/ping"
    assert httpx.get(url, params={"wt": "json"}, timeout=10).status_code == 401
    assert (
        httpx.get(url, params={"wt": "json"}, timeout=10, auth=stack.solr_auth).status_code == 200
    )


def test_a_wrong_solr_password_fails_the_check_fast_naming_what_to_check(stack, pipeline_config):
    wrong = "wrong-" + uuid.uuid4().hex
    endpoints = dataclasses.replace(Endpoints.from_env(), solr_auth=(stack.solr_auth[0], wrong))
    t0 = time.monotonic()
    with pytest.raises(ServiceDown) as down:
        require(["solr"], endpoints, pipeline_config)
    assert time.monotonic() - t0 < 30
    message = str(down.value)
    assert "401 Unauthorized" in message and "solr_default: login, password" in message, message
    assert wrong not in message and stack.solr_auth[1] not in message
