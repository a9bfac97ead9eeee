"""Solr: index partner documents with the project's configset, query them back (accents folded)."""

import uuid

import httpx
import pysolr
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


@pytest.fixture
def core(stack, pipeline_config):
    return pysolr.Solr(
        f"{stack.url('SOLR_PORT', '/solr')}/{pipeline_config.solr_core}",
        timeout=10,
        always_commit=False,
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
