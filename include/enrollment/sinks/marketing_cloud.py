"""Marketing Cloud: the partners data extension, and the welcome journey for new enrollments.

- Rows are upserted with the async API in chunks within the 32,000-row limit, each request
  polled to completion; the per-row results are the acknowledgement. Rows the service rejects are
  returned with its message (the sync puts them in the sink quarantine): never dropped.
- The data extension holds the current state: an upsert of the same version is a no-op in effect,
  so a re-run changes nothing.
- Only partners marketing may contact are sent (``config.MarketingConsent``: opt_in regions want
  ``marketing_consent`` true, opt_out regions anything but false). A partner who is not contactable
  — declined at enrollment, or withdrew later — has its row deleted (SOAP ``Delete``; a row that
  was never there is no error) and never enters the welcome journey.
- A partner enrolled in the run's batches, accepted by the service and still active, enters the
  welcome journey **once, ever** (entry events in requests of 100, the API's limit): see
  ``JourneyEntries`` for the per-partner claim that makes it so, across re-runs, replays
  racing the regular sync, and enrollments the producer sends again in a later batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from enrollment.clients.marketing_cloud import (
    MAX_JOURNEY_MEMBERS,
    MarketingCloudClient,
    MarketingCloudError,
    not_queued,
)
from enrollment.clients.services import storage_client
from enrollment.config import load_config
from enrollment.core.partners import is_canary

from ..config import MarketingConsent
from .base import Partner, Sink, SinkResult, iso

if TYPE_CHECKING:
    # google-cloud-storage ships no py.typed (googleapis/python-storage#393).
    from google.cloud.storage import Blob, Bucket

    from enrollment.clients.services import Endpoints

log = logging.getLogger(__name__)

ROW_FIELDS = {
    "PartnerId": "partner_id",
    "EmailAddress": "email",
    "FirstName": "first_name",
    "LastName": "last_name",
    "Region": "region",
    "Country": "country",
    "Language": "language",
    "SponsorId": "sponsor_id",
}


def row(partner: Partner) -> dict[str, Any]:
    out = {name: partner.get(column) for name, column in ROW_FIELDS.items()}
    out["Status"] = partner.get("status") or "pending"
    out["EnrolledAt"] = iso(partner.get("enrolled_at"))
    out["PartnerVersion"] = int(partner["partner_version"])
    return out


def welcome_data(partner: Partner) -> dict[str, Any]:
    return {
        "PartnerId": partner["partner_id"],
        "EmailAddress": partner.get("email"),
        "FirstName": partner.get("first_name"),
        "Language": partner.get("language"),
        "Country": partner.get("country"),
    }


def _result_partner_id(item: Mapping[str, Any]) -> str:
    """The ``PartnerId`` a row's result names. The service echoes the key each row was sent with
    (the data extension's primary key); were one missing, None passes through as before."""
    found = next((i["value"] for i in item.get("identifiers", []) if i["key"] == "PartnerId"), None)
    return cast(str, found)  # see the docstring: None only if the service breaks its contract


class JourneyEntries:
    """Who entered a journey: one claim object per partner and entry event, made before firing.

    ``gs://<landing bucket>/sinks/<sink>/journeys/<event definition key>/<partner id>.json``,
    created with ``if_generation_match=0``: Cloud Storage (and the emulator) create it atomically,
    so of two runs racing for a partner — the regular sync and a replay, a retry beside a stale
    attempt — exactly one wins and fires; the other skips. The claim is keyed by partner, not by
    batch, so an enrollment the producer sends again in a later batch finds it and fires nothing.

    Why not the alternatives: Marketing Cloud's event API is not idempotent and its journey
    history cannot be queried race-free before firing, so the pipeline must guard itself; a
    BigQuery table would need a conditional MERGE per run, and concurrent DML on one table is
    serialised or aborted (BigQuery allows few mutating statements per table at once; the
    emulator holds one lock), while object creation is per partner and needs no lock.

    States: ``claimed`` (written before firing), ``entered`` (the service returned an event
    instance id), or deleted again when the service answered that the event was *not* queued (a
    later run tries again). A crash between claim and answer leaves ``claimed``: at most once,
    never twice — a duplicate welcome reaches the partner, a missing one is visible here and
    logged as an error by later runs that meet it (check Journey Builder, then delete the object
    to fire again). No personal data is kept: ids, state, times."""

    # Claims are one small request each: a few at a time, within the client's connection pool.
    WORKERS = 8

    def __init__(self, bucket: Bucket, sink: str, event_definition_key: str) -> None:
        self.bucket = bucket
        self.prefix = f"sinks/{sink}/journeys/{event_definition_key}"
        self.event_definition_key = event_definition_key

    def _blob(self, partner_id: str) -> Blob:
        return self.bucket.blob(f"{self.prefix}/{partner_id}.json")

    def _write(self, blob: Blob, body: Mapping[str, Any], generation: int) -> None:
        blob.upload_from_string(
            json.dumps(body), content_type="application/json", if_generation_match=generation
        )

    def claim(self, partners: Mapping[str, str]) -> dict[str, int]:
        """Partner id (→ the batch that enrolled it) claimed for this run: id → the claim's
        generation. Partners someone already claimed are left out."""
        from google.api_core.exceptions import PreconditionFailed

        now = datetime.now(UTC).isoformat()

        def one(pid: str) -> tuple[str, int | None]:
            blob = self._blob(pid)
            try:
                self._write(
                    blob,
                    {
                        "partner_id": pid,
                        "state": "claimed",
                        "batch_id": partners[pid],
                        "claimed_at": now,
                    },
                    0,
                )
            except PreconditionFailed:
                self._unconfirmed(pid)
                return pid, None
            return pid, blob.generation

        with ThreadPoolExecutor(self.WORKERS) as pool:
            return {
                pid: generation
                for pid, generation in pool.map(one, sorted(partners))
                if generation is not None
            }

    def _unconfirmed(self, partner_id: str) -> None:
        """A claim left ``claimed`` for an hour (a crash between claiming and the service's answer)
        is logged as an error."""
        from google.api_core.exceptions import NotFound

        try:
            held = json.loads(self._blob(partner_id).download_as_text())
        except (NotFound, ValueError):
            return
        if held.get("state") == "claimed" and datetime.fromisoformat(
            held["claimed_at"]
        ) < datetime.now(UTC) - timedelta(hours=1):
            log.error(
                "marketing cloud: the %s entry of partner %s was claimed at %s and never "
                "confirmed; check Journey Builder, then delete %s/%s.json to fire it again",
                self.event_definition_key,
                partner_id,
                held["claimed_at"],
                self.prefix,
                partner_id,
            )

    def entered(self, claims: Mapping[str, int], event_ids: Mapping[str, str]) -> None:
        now = datetime.now(UTC).isoformat()

        def one(pid: str) -> None:
            self._write(
                self._blob(pid),
                {
                    "partner_id": pid,
                    "state": "entered",
                    "event_instance_id": event_ids[pid],
                    "entered_at": now,
                },
                claims[pid],
            )

        with ThreadPoolExecutor(self.WORKERS) as pool:
            list(pool.map(one, sorted(event_ids)))

    def release(self, claims: Mapping[str, int], partner_ids: Sequence[str]) -> None:
        """The service said these were not queued: a later run may fire them."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        for pid in partner_ids:
            with contextlib.suppress(NotFound, PreconditionFailed):
                self._blob(pid).delete(if_generation_match=claims[pid])

    def adopt(self, partner_ids: Sequence[str], batch_id: str) -> None:
        """Partners fired before these claims existed (recorded per batch): claimed as entered, so
        they never fire again."""
        from google.api_core.exceptions import PreconditionFailed

        for pid in partner_ids:
            with contextlib.suppress(PreconditionFailed):
                self._write(
                    self._blob(pid),
                    {"partner_id": pid, "state": "entered", "batch_id": batch_id, "adopted": True},
                    0,
                )


class MarketingCloudSink(Sink):
    """Over 200 lines on purpose: write, verify, audit and erase share the consent rule
    (``expects``) and the data extension's read-back (``_held``); the journey claims, the part that
    stands alone, are already ``JourneyEntries``."""

    LOOKUPS = 8  # concurrent lookups by key

    name = "marketing_cloud"

    def __init__(
        self,
        client: MarketingCloudClient,
        data_extension: str,
        welcome_event: str | None,
        bucket: Bucket | None = None,
        chunk_rows: int = 10_000,
        wait_s: float = 600.0,
        consent: MarketingConsent | None = None,
    ) -> None:
        self.client = client
        self.consent = consent or MarketingConsent()
        self.data_extension = data_extension
        self.welcome_event = welcome_event
        self.bucket = bucket
        self.chunk_rows = chunk_rows
        self.wait_s = wait_s

    def expects(self, partner: Partner) -> bool:
        """Whether the data extension should hold this partner: marketing may contact them."""
        return self.consent.contactable(partner.get("region"), partner.get("marketing_consent"))

    def write(self, partners: Sequence[Partner], enrolled: Mapping[str, str]) -> SinkResult:
        result = SinkResult(self.name, partners=len(partners))
        if not partners:
            return result
        barred = [p["partner_id"] for p in partners if not self.expects(p)]
        partners = [p for p in partners if self.expects(p)]
        removed = self.client.delete_rows(self.data_extension, barred) if barred else {}
        result.rejected += [
            (pid, f"not contactable, its row not deleted: {message}")
            for pid, message in removed.items()
            if message is not None
        ]
        result.extra["not_contactable"] = len(barred)
        rows = [row(p) for p in partners]
        result.receipts = (
            self.client.upsert_async(self.data_extension, rows, chunk_rows=self.chunk_rows)
            if rows
            else []
        )
        accepted: set[str] = set()
        for request_id in result.receipts:
            self.client.wait(request_id, timeout_s=self.wait_s)
            for item in self.client.results(request_id):
                pid = _result_partner_id(item)
                if item.get("status") == "OK":
                    accepted.add(pid)
                else:
                    result.rejected.append((pid, f"{item.get('errorCode')}: {item.get('message')}"))
        # A partner not contactable is done when its row is gone: written, in the sync's accounting.
        result.written = len(accepted) + sum(1 for message in removed.values() if message is None)
        result.extra["welcome_events"] = self._welcome(
            [p for p in partners if p["partner_id"] in accepted and self.expects(p)], enrolled
        )
        return result

    def _welcome(self, accepted: Sequence[Partner], enrolled: Mapping[str, str]) -> int:
        if not self.welcome_event or self.bucket is None:
            return 0
        entries = JourneyEntries(self.bucket, self.name, self.welcome_event)
        by_batch: dict[str, list[Partner]] = defaultdict(list)
        for p in accepted:
            if (
                p["partner_id"] in enrolled
                and p.get("status") == "active"
                and not is_canary(p["partner_id"])
            ):
                by_batch[enrolled[p["partner_id"]]].append(p)
        newcomers: dict[str, Partner] = {}
        for batch_id, partners in sorted(by_batch.items()):
            # Ids fired per batch by the versions before the claims: adopted, never fired again.
            legacy = self.bucket.blob(f"sinks/{self.name}/welcome/{batch_id}.json")
            fired = set(json.loads(legacy.download_as_text())) if legacy.exists() else set()
            entries.adopt(sorted(fired & {p["partner_id"] for p in partners}), batch_id)
            newcomers.update((p["partner_id"], p) for p in partners if p["partner_id"] not in fired)
        claims = entries.claim({pid: enrolled[pid] for pid in newcomers})
        todo = [newcomers[pid] for pid in sorted(claims)]
        fired_now = 0
        for start in range(
            0, len(todo), MAX_JOURNEY_MEMBERS
        ):  # one request at a time: a crash leaves at most 100 claims unconfirmed
            chunk = todo[start : start + MAX_JOURNEY_MEMBERS]
            unsent = [p["partner_id"] for p in todo[start + MAX_JOURNEY_MEMBERS :]]
            try:
                answers = self.client.fire_entry_events(
                    self.welcome_event, [(p["partner_id"], welcome_data(p)) for p in chunk]
                )
            except Exception as exc:
                if not_queued(exc):
                    unsent += [p["partner_id"] for p in chunk]
                else:
                    log.error(
                        "marketing cloud: %d welcome entries may or may not be queued (%s); "
                        "their claims stay unconfirmed, never fired twice",
                        len(chunk),
                        type(exc).__name__,
                    )
                entries.release(claims, unsent)  # the next run fires them
                raise
            entered = {
                a["contactKey"]: a["eventInstanceId"] for a in answers if a.get("eventInstanceId")
            }
            failed = [
                (a.get("contactKey"), a.get("message"))
                for a in answers
                if not a.get("eventInstanceId")
            ]
            entries.entered(claims, entered)
            fired_now += len(entered)
            if failed:
                entries.release(
                    claims,
                    unsent + [p["partner_id"] for p in chunk if p["partner_id"] not in entered],
                )
                raise MarketingCloudError(
                    f"marketing cloud: {len(failed)} welcome entry events not queued, "
                    f"e.g. {failed[0][0]}: {failed[0][1]}"
                )
        return fired_now

    def verify(self, partners: Sequence[Partner], result: SinkResult) -> list[str]:
        """The service's own results for every request: each row sent is OK or quarantined; and
        no row left of a partner who is not contactable."""
        sent = {p["partner_id"] for p in partners if self.expects(p)}
        seen: dict[str, Any] = {}  # partner id → the status the service answered for its row
        problems: list[str] = []
        for request_id in result.receipts:
            status = self.client.wait(request_id, timeout_s=self.wait_s)
            if status.get("requestStatus") != "Complete":
                problems.append(f"request {request_id} is {status.get('requestStatus')}")
            for item in self.client.results(request_id):
                seen[_result_partner_id(item)] = item.get("status")
        rejected = {pid for pid, _ in result.rejected}
        missing = sent - set(seen)
        if missing:
            problems.append(
                f"{len(missing)} partners sent have no result, e.g. {sorted(missing)[:3]}"
            )
        for pid, answered in seen.items():
            if answered != "OK" and pid not in rejected:
                problems.append(
                    f"{pid}: the service answered {answered} but the row is not in the quarantine"
                )
        barred = [p for p in partners if not self.expects(p) and p["partner_id"] not in rejected]
        held = self._held(barred)
        problems += [
            f"{pid}: not contactable, yet its row is in the data extension" for pid in sorted(held)
        ]
        return problems

    def _held(self, partners: Sequence[Partner]) -> dict[str, dict[str, Any]]:
        """The data extension's rows of these partners, each looked up by its key (concurrently):
        the calls grow with the partners asked about, never with the data extension, which
        holds every contactable partner ever synced."""
        wanted = sorted({p["partner_id"] for p in partners})
        asked = set(wanted)
        if not wanted:
            return {}

        def one(pid: str) -> list[dict[str, Any]]:
            return self.client.rowset(self.data_extension, where=("PartnerId", pid))

        with ThreadPoolExecutor(self.LOOKUPS) as pool:
            rows = [r for found in pool.map(one, wanted) for r in found]
        # A row whose partnerid is in ``wanted`` has one: ``r["partnerid"]`` cannot miss.
        return {r["partnerid"]: r for r in rows if r.get("partnerid") in asked}

    def audit(self, partners: Sequence[Partner]) -> dict[str, str]:
        """The data extension's rows read back (a lookup by key per partner): a contactable
        partner's row at its version, and no row of one who is not."""
        held = self._held(partners)
        problems: dict[str, str] = {}
        for p in partners:
            r = held.get(p["partner_id"])
            if not self.expects(p):
                if r is not None:
                    problems[p["partner_id"]] = "not contactable, yet in the data extension"
                continue
            expected = row(p)
            if r is None:
                problems[p["partner_id"]] = "no row in the data extension"
            elif int(r.get("partnerversion") or 0) < expected["PartnerVersion"]:
                problems[p["partner_id"]] = (
                    f"row at version {r.get('partnerversion')}, "
                    f"expected {expected['PartnerVersion']}"
                )
            elif (
                int(r["partnerversion"]) == expected["PartnerVersion"]
                and r.get("status") != expected["Status"]
            ):
                problems[p["partner_id"]] = (
                    f"status {r.get('status')!r}, expected {expected['Status']!r}"
                )
        return problems

    def erase(self, partner_ids: Sequence[str]) -> dict[str, int]:
        """An erasure request: the partners' data-extension rows deleted, their contacts deleted
        from the account (the privacy-request delete: the service suppresses, then removes them from
        every list, journey and sendable data extension), and this sink's journey claims of them.
        Counts only, never ids."""
        ids = sorted(set(partner_ids))
        if not ids:
            return {
                "partners": 0,
                "rows_deleted_or_absent": 0,
                "rows_failed": 0,
                "contact_delete_operations": 0,
                "journey_claims_deleted": 0,
                "remaining": 0,
            }
        removed = self.client.delete_rows(self.data_extension, ids)
        failed = sum(1 for message in removed.values() if message is not None)
        if failed:
            raise MarketingCloudError(
                f"marketing cloud: {failed} of {len(ids)} data-extension rows not deleted"
            )
        operations = self.client.delete_contacts(ids)
        claims = 0
        if self.bucket is not None and self.welcome_event:
            entries = JourneyEntries(self.bucket, self.name, self.welcome_event)
            for pid in ids:
                blob = entries._blob(pid)
                if blob.exists():
                    blob.delete()
                    claims += 1
        remaining = len(
            self._held([{"partner_id": pid} for pid in ids])
        )  # read back: the erasure's verify step counts on it
        log.info(
            "marketing cloud: erased %d partners "
            "(%d contact delete operations queued, %d rows remain)",
            len(ids),
            len(operations),
            remaining,
        )
        return {
            "partners": len(ids),
            "rows_deleted_or_absent": len(ids),
            "rows_failed": 0,
            "contact_delete_operations": len(operations),
            "journey_claims_deleted": claims,
            "remaining": remaining,
        }

    def close(self) -> None:
        self.client.close()


def build(options: Mapping[str, Any], endpoints: Endpoints) -> MarketingCloudSink:

    config = load_config()
    return MarketingCloudSink(
        endpoints.marketing_cloud(),
        options.get("data_extension") or config.marketing_cloud_data_extension,
        options.get("welcome_event"),
        bucket=storage_client(endpoints.project, endpoints.credentials).bucket(
            config.landing_bucket
        ),
        chunk_rows=int(options.get("chunk_rows", 10_000)),
        wait_s=float(options.get("wait_s", 600)),
        consent=config.marketing_consent,
    )
