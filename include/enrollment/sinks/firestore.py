"""Firestore: one partner profile document per partner, for the apps.

- Document ``<collection>/<partner id>``: partner ids are random after their region prefix, so
  writes spread over the key space (no monotonically increasing ids, no hotspot).
- Guarded by the partner's revision (the sum of its field versions; see ``base.revision``): each
  chunk reads the documents, skips those already at this revision or newer, and writes the others
  with a precondition (``create`` for a new document, an update conditioned on the update time
  just read for an existing one). A concurrent writer makes the precondition fail and the chunk
  is read and decided again: a stale write never lands.
- A document Firestore refuses (over 1 MiB, a field value too long…) never fails the run: a
  refused commit is redone partner by partner, and the culprits are returned as rejected with
  Firestore's message (the sync quarantines them).
- At most 500 writes per commit (Firestore's limit); terminations mark the document
  (``status: terminated``, ``terminated_at``) rather than delete it: the apps show the state.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from enrollment.clients.services import firestore_client

from .base import Partner, Sink, SinkResult, chunks, revision

if TYPE_CHECKING:
    from google.cloud import firestore
    from google.cloud.firestore import DocumentReference, DocumentSnapshot

    from enrollment.clients.services import Endpoints

log = logging.getLogger(__name__)

PROFILE_FIELDS = (
    "region",
    "country",
    "first_name",
    "last_name",
    "email",
    "phone",
    "language",
    "date_of_birth",
    "sponsor_id",
    "status",
    "enrolled_at",
    "terminated_at",
    "updated_at",
)


def profile(partner: Partner) -> dict[str, Any]:
    doc = {f: partner.get(f) for f in PROFILE_FIELDS}
    doc["partner_id"] = partner["partner_id"]
    doc["partner_version"] = int(partner["partner_version"])
    doc["revision"] = revision(partner)
    doc["address"] = {
        "line1": partner.get("address_line1"),
        "city": partner.get("address_city"),
        "postal_code": partner.get("address_postal_code"),
        "state": partner.get("address_state"),
    }
    return doc


class _Protos:
    """Firestore's raw protobuf classes (upb, in C): a write built with them costs a fraction of
    the client's per-value wrappers (measured on 5,000 partners: 0.33 → 0.15 ms of CPU a partner
    created, 0.66 → 0.20 ms updated). The client's own batch commits them."""

    def __init__(self) -> None:
        from google.cloud.firestore_v1.types import common, document, write

        self.value = document.Value.pb()
        self.map_value = document.MapValue.pb()
        self.document = document.Document.pb()
        self.write = write.Write.pb()
        self.mask = common.DocumentMask.pb()
        self.precondition = common.Precondition.pb()

    def encode(self, v: Any) -> Any:
        """A value as the client's ``encode_value`` makes it, for the types a profile holds; any
        other type goes through the client's own encoder."""
        if v is None:
            return self.value(null_value=0)
        if isinstance(v, bool):
            return self.value(boolean_value=v)
        if isinstance(v, int):
            return self.value(integer_value=v)
        if isinstance(v, float):
            return self.value(double_value=v)
        if isinstance(v, str):
            return self.value(string_value=v)
        if isinstance(v, datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=UTC)
            micros = (v - _EPOCH) // timedelta(microseconds=1)
            seconds, rest = divmod(micros, 1_000_000)
            return self.value(timestamp_value={"seconds": seconds, "nanos": rest * 1000})
        if isinstance(v, dict):
            return self.value(
                map_value=self.map_value(fields={k: self.encode(x) for k, x in v.items()})
            )
        from google.cloud.firestore_v1 import _helpers

        value = _helpers.encode_value(v)
        return type(value).pb(value)

    def fields(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.encode(v) for k, v in doc.items()}

    def create(self, path: str, doc: Mapping[str, Any]) -> Any:
        """``batch.create``'s write: the whole document, on condition that none exists."""
        return self.write(
            update=self.document(name=path, fields=self.fields(doc)),
            current_document=self.precondition(exists=False),
        )

    def update(self, path: str, doc: Mapping[str, Any], update_time: Any) -> Any:
        """``batch.update``'s write with a last-update-time option: the document's top-level
        fields (the mask), on condition that it was not written since ``update_time``."""
        return self.write(
            update=self.document(name=path, fields=self.fields(doc)),
            update_mask=self.mask(field_paths=sorted(doc)),
            # A snapshot's update time keeps its nanoseconds (``DatetimeWithNanoseconds``), as the
            # client sends it: a datetime would be cut to microseconds and never match.
            current_document=self.precondition(
                update_time=update_time.timestamp_pb()
                if hasattr(update_time, "timestamp_pb")
                else update_time
            ),
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _revision_of(snap: DocumentSnapshot[DocumentReference]) -> int:
    data = snap.to_dict() or {}
    return int(data.get("revision") or 0)


class FirestoreSink(Sink):
    name = "firestore"
    guards_revisions = True  # every update carries the read document's update time

    def __init__(
        self,
        client: firestore.Client,
        collection: str = "partners",
        batch_size: int = 500,
        attempts: int = 5,
    ) -> None:
        self.client = client
        self.collection = client.collection(collection)
        self.batch_size = min(int(batch_size), 500)
        self.attempts = attempts
        self.protos = _Protos()

    def write(self, partners: Sequence[Partner], enrolled: Collection[str]) -> SinkResult:
        from google.api_core.exceptions import InvalidArgument

        result = SinkResult(self.name, partners=len(partners))
        for chunk in chunks(list(partners), self.batch_size):
            try:
                written, unchanged = self._commit(chunk)
            except InvalidArgument as exc:
                # A commit is atomic: one document Firestore refuses fails the chunk. Write its
                # partners one by one to find the culprits; the others are written.
                log.warning(
                    "firestore: a %d-partner commit was refused (%s); "
                    "writing its partners one by one",
                    len(chunk),
                    type(exc).__name__,
                )
                written = unchanged = 0
                for p in chunk:
                    try:
                        w, u = self._commit([p])
                    except InvalidArgument as refused:
                        log.warning(
                            "firestore: a partner refused, quarantined with Firestore's message "
                            "(in the sink quarantine)"
                        )
                        result.rejected.append(
                            (p["partner_id"], " ".join(str(refused).split())[:500])
                        )
                        continue
                    written, unchanged = written + w, unchanged + u
            result.written += written
            result.unchanged += unchanged
        return result

    def _commit(self, chunk: Sequence[Partner]) -> tuple[int, int]:
        """One commit of the chunk's writes, decided against what Firestore holds (decided again
        when a concurrent writer got there first): (written, unchanged)."""
        from google.api_core.exceptions import AlreadyExists, Conflict, FailedPrecondition

        for attempt in range(1, self.attempts + 1):
            refs = [self.collection.document(p["partner_id"]) for p in chunk]
            # The revision alone decides: the documents read masked to it.
            held = {snap.id: snap for snap in self.client.get_all(refs, field_paths=["revision"])}
            pbs = []
            unchanged = 0
            for p, ref in zip(chunk, refs, strict=True):
                snap = held.get(p["partner_id"])
                if snap is not None and snap.exists and _revision_of(snap) >= revision(p):
                    unchanged += 1
                    continue
                path = ref._document_path
                if snap is not None and snap.exists:
                    pbs.append(self.protos.update(path, profile(p), snap.update_time))
                else:
                    pbs.append(self.protos.create(path, profile(p)))
            writes = len(pbs)
            try:
                if writes:
                    batch = self.client.batch()
                    batch._add_write_pbs(pbs)  # the client's own batch, given the writes built
                    batch.commit()
            except (FailedPrecondition, AlreadyExists, Conflict) as exc:
                if attempt == self.attempts:
                    raise
                log.info(
                    "firestore: a concurrent write changed %d-partner chunk (%s); deciding again",
                    len(chunk),
                    type(exc).__name__,
                )
                continue
            return writes, unchanged
        raise AssertionError("unreachable: the last attempt returns or raises")

    def audit(self, partners: Sequence[Partner]) -> dict[str, str]:
        problems: dict[str, str] = {}
        for chunk in chunks(list(partners), 500):
            held = {
                snap.id: snap
                for snap in self.client.get_all(
                    [self.collection.document(p["partner_id"]) for p in chunk],
                    field_paths=["revision", "status"],  # what the audit compares
                )
            }
            for p in chunk:
                snap = held.get(p["partner_id"])
                if snap is None or not snap.exists:
                    problems[p["partner_id"]] = "no document"
                elif _revision_of(snap) < revision(p):
                    problems[p["partner_id"]] = (
                        f"document at revision {_revision_of(snap)}, expected {revision(p)}"
                    )
                elif _revision_of(snap) == revision(p) and snap.get("status") != p.get("status"):
                    problems[p["partner_id"]] = (
                        f"status {snap.get('status')!r}, expected {p.get('status')!r}"
                    )
        return problems

    def verify(self, partners: Sequence[Partner], result: SinkResult) -> list[str]:
        return [f"{pid}: {problem}" for pid, problem in self.audit(partners).items()]

    def erase(self, partner_ids: Sequence[str]) -> dict[str, int]:
        """Deletes the partners' documents; how many there were, and how many remain."""
        refs = [self.collection.document(pid) for pid in partner_ids]
        present = [snap.reference for snap in self.client.get_all(refs) if snap.exists]
        for chunk in chunks(present, self.batch_size):
            batch = self.client.batch()
            for ref in chunk:
                batch.delete(ref)
            batch.commit()
        return {
            "deleted": len(present),
            "remaining": sum(1 for snap in self.client.get_all(refs) if snap.exists),
        }


def build(options: Mapping[str, Any], endpoints: Endpoints) -> FirestoreSink:

    return FirestoreSink(
        firestore_client(endpoints.project, endpoints.credentials),
        collection=options.get("collection", "partners"),
        batch_size=int(options.get("batch_size", 500)),
    )
