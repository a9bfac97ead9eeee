"""Marketing Cloud: the partners data extension, and the welcome journey for new enrollments.

- Rows are upserted with the async API in chunks within the 32,000-row limit, each request
  polled to completion; the per-row results are the acknowledgement. Rows the service rejects are
  returned with its message (the sync puts them in the sink quarantine): never dropped.
- The data extension holds the current state: an upsert of the same version is a no-op in effect,
  so a re-run changes nothing.
- A partner enrolled in the run's batches, accepted by the service and still active, fires the
  welcome journey's entry event once (in requests of 100, the API's limit): the ids fired per batch are kept in
  ``gs://<landing bucket>/sinks/<sink>/welcome/<batch id>.json`` so a re-run does not fire again.
  (Between firing and recording, a crash may fire twice; set the journey's re-entry to "no
  re-entry" in Journey Builder — the service, like the stub, does not deduplicate.)
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

from ..marketing_cloud import MarketingCloudClient, MarketingCloudError
from ..canary import is_canary
from .base import Partner, Sink, SinkResult, iso

log = logging.getLogger(__name__)

ROW_FIELDS = {"PartnerId": "partner_id", "EmailAddress": "email", "FirstName": "first_name", "LastName": "last_name", "Region": "region",
              "Country": "country", "Language": "language", "SponsorId": "sponsor_id"}


def row(partner: Partner) -> dict:
    out = {name: partner.get(column) for name, column in ROW_FIELDS.items()}
    out["Status"] = partner.get("status") or "pending"
    out["EnrolledAt"] = iso(partner.get("enrolled_at"))
    out["PartnerVersion"] = int(partner["partner_version"])
    return out


def welcome_data(partner: Partner) -> dict:
    return {"PartnerId": partner["partner_id"], "EmailAddress": partner.get("email"), "FirstName": partner.get("first_name"),
            "Language": partner.get("language"), "Country": partner.get("country")}


class MarketingCloudSink(Sink):
    name = "marketing_cloud"

    def __init__(self, client: MarketingCloudClient, data_extension: str, welcome_event: str | None, bucket=None, chunk_rows: int = 10_000,
                 wait_s: float = 600.0):
        self.client = client
        self.data_extension = data_extension
        self.welcome_event = welcome_event
        self.bucket = bucket
        self.chunk_rows = chunk_rows
        self.wait_s = wait_s

    def write(self, partners: Sequence[Partner], enrolled: Mapping[str, str]) -> SinkResult:
        result = SinkResult(self.name, partners=len(partners))
        if not partners:
            return result
        rows = [row(p) for p in partners]
        result.receipts = self.client.upsert_async(self.data_extension, rows, chunk_rows=self.chunk_rows)
        accepted = set()
        for request_id in result.receipts:
            self.client.wait(request_id, timeout_s=self.wait_s)
            for item in self.client.results(request_id):
                pid = next((i["value"] for i in item.get("identifiers", []) if i["key"] == "PartnerId"), None)
                if item.get("status") == "OK":
                    accepted.add(pid)
                else:
                    result.rejected.append((pid, f"{item.get('errorCode')}: {item.get('message')}"))
        result.written = len(accepted)
        result.extra["welcome_events"] = self._welcome([p for p in partners if p["partner_id"] in accepted], enrolled)
        return result

    def _welcome(self, accepted: Sequence[Partner], enrolled: Mapping[str, str]) -> int:
        if not self.welcome_event or self.bucket is None:
            return 0
        by_batch: dict[str, list[Partner]] = defaultdict(list)
        for p in accepted:
            if p["partner_id"] in enrolled and p.get("status") == "active" and not is_canary(p["partner_id"]):
                by_batch[enrolled[p["partner_id"]]].append(p)
        fired_now = 0
        for batch_id, newcomers in sorted(by_batch.items()):
            blob = self.bucket.blob(f"sinks/{self.name}/welcome/{batch_id}.json")
            fired = set(json.loads(blob.download_as_text())) if blob.exists() else set()
            todo = [p for p in newcomers if p["partner_id"] not in fired]
            for start in range(0, len(todo), 500):  # record progress every 500: keeps the window for a double fire small
                chunk = todo[start:start + 500]
                answers = self.client.fire_entry_events(self.welcome_event, [(p["partner_id"], welcome_data(p)) for p in chunk])
                failed = [(a.get("contactKey"), a.get("message")) for a in answers if not a.get("eventInstanceId")]
                fired.update(a["contactKey"] for a in answers if a.get("eventInstanceId"))
                fired_now += len(answers) - len(failed)
                blob.upload_from_string(json.dumps(sorted(fired)), content_type="application/json")
                if failed:
                    raise MarketingCloudError(f"marketing cloud: {len(failed)} welcome entry events not queued, e.g. {failed[0][0]}: {failed[0][1]}")
        return fired_now

    def verify(self, partners: Sequence[Partner], result: SinkResult) -> list[str]:
        """The service's own results for every request: each row sent is OK or quarantined."""
        sent = {p["partner_id"] for p in partners}
        seen, problems = {}, []
        for request_id in result.receipts:
            status = self.client.wait(request_id, timeout_s=self.wait_s)
            if status.get("requestStatus") != "Complete":
                problems.append(f"request {request_id} is {status.get('requestStatus')}")
            for item in self.client.results(request_id):
                pid = next((i["value"] for i in item.get("identifiers", []) if i["key"] == "PartnerId"), None)
                seen[pid] = item.get("status")
        rejected = {pid for pid, _ in result.rejected}
        missing = sent - set(seen)
        if missing:
            problems.append(f"{len(missing)} partners sent have no result, e.g. {sorted(missing)[:3]}")
        for pid, status in seen.items():
            if status != "OK" and pid not in rejected:
                problems.append(f"{pid}: the service answered {status} but the row is not in the quarantine")
        return problems

    def audit(self, partners: Sequence[Partner]) -> dict[str, str]:
        """The data extension's rows read back (one filtered read for a few partners, every page for many)."""
        if len(partners) <= 20:
            rows = [r for p in partners for r in self.client.rowset(self.data_extension, where=("PartnerId", p["partner_id"]))]
        else:
            rows = self.client.rowset(self.data_extension)
        held = {r.get("partnerid"): r for r in rows}
        problems = {}
        for p in partners:
            r = held.get(p["partner_id"])
            expected = row(p)
            if r is None:
                problems[p["partner_id"]] = "no row in the data extension"
            elif int(r.get("partnerversion") or 0) < expected["PartnerVersion"]:
                problems[p["partner_id"]] = f"row at version {r.get('partnerversion')}, expected {expected['PartnerVersion']}"
            elif int(r["partnerversion"]) == expected["PartnerVersion"] and r.get("status") != expected["Status"]:
                problems[p["partner_id"]] = f"status {r.get('status')!r}, expected {expected['Status']!r}"
        return problems

    def close(self) -> None:
        self.client.close()


def build(options: dict, endpoints) -> MarketingCloudSink:
    from enrollment.config import load_config
    from enrollment.services import storage_client

    config = load_config()
    return MarketingCloudSink(endpoints.marketing_cloud(), options.get("data_extension") or config.marketing_cloud_data_extension,
                              options.get("welcome_event"), bucket=storage_client(endpoints.project).bucket(config.landing_bucket),
                              chunk_rows=int(options.get("chunk_rows", 10_000)), wait_s=float(options.get("wait_s", 600)))
