"""Solr: the partner search index.

- One document per partner (uniqueKey = partner id); names analysed accent-insensitively for the
  regions' languages; region, country, sponsor, status, language and enrolled-at filterable.
- The configset's update chain has a **version constraint** on ``revision`` (the sum of the
  partner's field versions; see ``base.revision``): Solr itself drops an update at an older
  or equal revision, so a replay or a late writer cannot go back in
  time, and a re-run changes nothing.
- Batched updates with ``commitWithin`` (never a commit per batch); real-time get reads back
  before any commit.
- Terminations remove the partner from search: a delete with ``del_version`` leaves a tombstone at
  that version (``status: removed``) so a late older update cannot bring the partner back.
- Partners known only from updates (no enrollment yet) are indexed with ``status: pending``;
  ``search_partners`` shows only active partners.
- A document Solr refuses (HTTP 400: a term over 32,766 bytes, a value a typed field cannot
  parse, a date out of range) never fails the run: a refused chunk is bisected down to the
  culprits, which are returned as rejected with Solr's message (the sync quarantines them).
  Solr stops at the first bad document of a request, so the halves resend some documents already
  indexed: the version constraint drops those as equal, nothing changes twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from enrollment.config import load_config

from .base import Partner, Sink, SinkResult, chunks, iso, revision

if TYPE_CHECKING:
    from enrollment.clients.services import Endpoints

log = logging.getLogger(__name__)

SEARCH_FIELDS = ("region", "country", "first_name", "last_name", "sponsor_id", "language")


def quote(term: str) -> str:
    """A user's text as one literal Solr phrase: no operators, wildcards or field syntax survive."""
    return '"' + term.replace("\\", "\\\\").replace('"', '\\"') + '"'


def document(partner: Partner) -> dict[str, Any]:
    doc = {f: partner.get(f) for f in SEARCH_FIELDS}
    doc["id"] = partner["partner_id"]
    doc["status"] = partner.get("status") or "pending"
    doc["partner_version"] = int(partner["partner_version"])
    doc["revision"] = revision(partner)
    doc["enrolled_at"] = iso(partner.get("enrolled_at"))
    doc["updated_at"] = iso(partner.get("updated_at"))
    return {k: v for k, v in doc.items() if v is not None}


class SolrError(RuntimeError):
    pass


class SolrRefusal(RuntimeError):
    """Solr refused an update (HTTP 400): something in the documents, not the service, is wrong."""


def refusal_message(response: httpx.Response) -> str:
    """Solr's reason, without the echo of the refused value (an immense term's bytes may be
    personal data)."""
    try:
        message = str(response.json()["error"]["msg"])
    except (ValueError, KeyError, TypeError):
        message = response.text
    message = message.split("The prefix of the first immense term is")[0]
    return f"HTTP {response.status_code}: {' '.join(message.split())}"[:500]


class SolrSink(Sink):
    name = "solr"
    # Measured at 30,000 events/min (2026-12-07): with four regions written and read back at
    # once, the real-time get of the read-back gate saw older revisions or no document for 1-35
    # partners a round (the gate failed; its retries added ~2 minutes), never with one region
    # after another.
    regions_at_once = False
    guards_revisions = True  # the configset's version constraint on ``revision``

    def __init__(
        self,
        solr_url: str,
        core: str,
        chunk: int = 1000,
        commit_within_ms: int = 1000,
        outage_s: float = 120.0,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.url = f"{solr_url.rstrip('/')}/{core}"
        self.chunk = int(chunk)
        self.commit_within_ms = int(commit_within_ms)
        self.http = httpx.Client(timeout=60, auth=auth)  # auth: BasicAuth (solr_default)
        # Ride out a short outage (a restart) inside the task; longer ones fail it and the next
        # run catches up from the watermark.
        self._post = retry(
            retry=retry_if_exception_type((httpx.TransportError, SolrError)),
            wait=wait_exponential(multiplier=0.5, max=10),
            stop=stop_after_delay(outage_s),
            reraise=True,
        )(self._post_once)

    def _post_once(
        self, body: list[dict[str, Any]] | dict[str, Any], **params: str | int
    ) -> dict[str, Any]:
        response = self.http.post(
            f"{self.url}/update",
            params={"commitWithin": self.commit_within_ms, "wt": "json", **params},
            json=body,
        )
        if response.status_code >= 500:
            raise SolrError(f"solr: update answered HTTP {response.status_code}")
        if response.status_code == 400:
            raise SolrRefusal(refusal_message(response))
        if response.status_code != 200:
            raise RuntimeError(
                f"solr: update refused with HTTP {response.status_code}: {response.text[:300]}"
            )
        answer: dict[str, Any] = response.json()
        return answer

    def write(self, partners: Sequence[Partner], enrolled: Collection[str]) -> SinkResult:
        result = SinkResult(self.name, partners=len(partners))
        indexed = [p for p in partners if p.get("status") != "terminated"]
        for chunk in chunks(indexed, self.chunk):
            result.rejected += self._index([document(p) for p in chunk])
        # A delete carries one version for all its ids: group the terminations by version.
        removals: dict[int, list[str]] = defaultdict(list)
        for p in partners:
            if p.get("status") == "terminated":
                removals[revision(p)].append(p["partner_id"])
        for version, ids in sorted(removals.items()):
            for id_chunk in chunks(ids, self.chunk):
                self._post({"delete": list(id_chunk)}, del_version=version)
        # Solr answers 200 for an update it ignores as older: the gate reads back what holds.
        result.written = len(partners) - len(result.rejected)
        result.extra["removed"] = sum(len(v) for v in removals.values())
        return result

    def _index(self, docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Indexes the documents; those Solr refuses, found by bisecting, as (id, Solr's
        message)."""
        try:
            self._post(docs)
            return []
        except SolrRefusal as exc:
            if len(docs) == 1:
                log.warning(
                    "solr: a partner refused, quarantined with Solr's message"
                )  # id and message (it may echo a value) not logged
                return [(docs[0]["id"], str(exc))]
        middle = len(docs) // 2
        return self._index(docs[:middle]) + self._index(docs[middle:])

    def get(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Real-time get: the documents as Solr holds them now, committed or not."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(ids), 500):
            response = self.http.post(
                f"{self.url}/get", data={"ids": ",".join(chunk), "wt": "json"}
            )
            response.raise_for_status()
            out.update({d["id"]: d for d in response.json()["response"]["docs"]})
        return out

    def audit(self, partners: Sequence[Partner]) -> dict[str, str]:
        held = self.get([p["partner_id"] for p in partners])
        problems: dict[str, str] = {}
        for p in partners:
            doc, expected = held.get(p["partner_id"]), revision(p)
            if doc is None:
                problems[p["partner_id"]] = "not in the index"
            elif int(doc.get("revision", 0)) < expected:
                problems[p["partner_id"]] = (
                    f"indexed at revision {doc.get('revision')}, expected {expected}"
                )
            elif int(doc["revision"]) == expected and (doc.get("status") == "removed") != (
                p.get("status") == "terminated"
            ):
                problems[p["partner_id"]] = (
                    f"status {doc.get('status')!r} for a partner {p.get('status') or 'pending'}"
                )
        return problems

    def verify(self, partners: Sequence[Partner], result: SinkResult) -> list[str]:
        return [f"{pid}: {problem}" for pid, problem in self.audit(partners).items()]

    def erase(self, partner_ids: Sequence[str]) -> dict[str, int]:
        """Deletes the partners' documents and tombstones (whatever their version) and commits at
        once, so that no search shows them again; how many there were, and how many remain."""
        present = list(self.get(partner_ids))  # termination tombstones included: they hold the id
        if present:
            # By query: the version processor handles deletes by id only (they would need a version
            # and leave a tombstone); a delete by query removes documents and tombstones alike.
            query = "id:(" + " OR ".join(quote(pid) for pid in present) + ")"
            response = self.http.post(
                f"{self.url}/update",
                # expungeDeletes: the segments holding them are rewritten (the configset's merge
                # policy leaves no deleted document behind), not only marked deleted.
                params={"commit": "true", "expungeDeletes": "true", "wt": "json"},
                json={"delete": {"query": query}},
            )
            if response.status_code != 200:
                raise SolrError(f"solr: erasure delete answered HTTP {response.status_code}")
        return {"deleted": len(present), "remaining": len(self.get(partner_ids))}

    def close(self) -> None:
        self.http.close()


def search_partners(
    solr_url: str,
    core: str,
    text: str = "",
    *,
    region: str | None = None,
    country: str | None = None,
    sponsor_id: str | None = None,
    rows: int = 20,
    timeout: float = 10.0,
    auth: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Active partners whose names match every word of ``text`` (accents and case ignored).

    Each word is quoted as a phrase, so user input can never become query syntax."""
    terms = [quote(t) for t in text.split() if t.strip()]
    filters = ["status:active"] + [
        f"{field}:{quote(value)}"
        for field, value in (("region", region), ("country", country), ("sponsor_id", sponsor_id))
        if value
    ]
    params: dict[str, str | int | list[str]] = {
        "q": " AND ".join(f"names:{t}" for t in terms) or "*:*",
        "fq": filters,
        "rows": rows,
        "wt": "json",
        "sort": "id asc",
    }
    response = httpx.get(
        f"{solr_url.rstrip('/')}/{core}/select", params=params, timeout=timeout, auth=auth
    )
    response.raise_for_status()
    docs: list[dict[str, Any]] = response.json()["response"]["docs"]
    return docs


def build(options: Mapping[str, Any], endpoints: Endpoints) -> SolrSink:

    return SolrSink(
        endpoints.solr_url,
        options.get("core") or load_config().solr_core,
        chunk=int(options.get("chunk", 1000)),
        commit_within_ms=int(options.get("commit_within_ms", 1000)),
        outage_s=float(options.get("outage_s", 120)),
        auth=endpoints.solr_auth,
    )
