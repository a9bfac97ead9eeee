"""The guide's worked example (docs/guide.md): a public partner directory in Cloud Storage.

One JSON object per active partner, ``<prefix>/<partner id>.json``, with what a partner-locator
page may show (no email, phone, birth date or address line); a terminated partner's object is
deleted. Guarded by the revision kept in the object's metadata, written with a generation
precondition so a concurrent writer cannot be overwritten blindly. ``verify`` and ``audit`` read
the objects back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from enrollment.clients.services import storage_client

from .base import Partner, Sink, SinkResult, iso, revision

if TYPE_CHECKING:
    # google-cloud-storage ships no py.typed (googleapis/python-storage#393).
    from google.cloud.storage import Blob, Bucket

    from enrollment.clients.services import Endpoints

PUBLIC_FIELDS = ("first_name", "last_name", "region", "country", "language", "sponsor_id")


class DirectorySink(Sink):
    name = "directory"

    def __init__(self, bucket: Bucket, prefix: str = "directory") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _blob(self, partner_id: str) -> Blob:
        return self.bucket.blob(f"{self.prefix}/{partner_id}.json")

    def write(self, partners: Sequence[Partner], enrolled: Mapping[str, str]) -> SinkResult:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        result = SinkResult(self.name, partners=len(partners))
        for p in partners:
            blob = self.bucket.get_blob(f"{self.prefix}/{p['partner_id']}.json")
            held = int((blob.metadata or {}).get("revision", 0)) if blob is not None else 0
            if p.get("status") == "terminated":
                if blob is None:
                    result.unchanged += 1
                    continue
                # Gone already, or replaced: the gate reads back what holds.
                with contextlib.suppress(NotFound, PreconditionFailed):
                    blob.delete(if_generation_match=blob.generation)
                result.written += 1
                continue
            if held >= revision(p):
                result.unchanged += 1
                continue
            target = self._blob(p["partner_id"])
            target.metadata = {"revision": str(revision(p))}
            body = {f: p.get(f) for f in PUBLIC_FIELDS} | {
                "partner_id": p["partner_id"],
                "status": p.get("status") or "pending",
                "enrolled_at": iso(p.get("enrolled_at")),
            }
            target.upload_from_string(
                json.dumps(body),
                content_type="application/json",
                if_generation_match=blob.generation if blob is not None else 0,
            )
            result.written += 1
        return result

    def audit(self, partners: Sequence[Partner]) -> dict[str, str]:
        problems: dict[str, str] = {}
        for p in partners:
            blob = self.bucket.get_blob(f"{self.prefix}/{p['partner_id']}.json")
            if p.get("status") == "terminated":
                if blob is not None:
                    problems[p["partner_id"]] = "terminated but still in the directory"
            elif blob is None:
                problems[p["partner_id"]] = "not in the directory"
            elif int((blob.metadata or {}).get("revision", 0)) < revision(p):
                problems[p["partner_id"]] = (
                    f"directory at revision {blob.metadata.get('revision')}, expected {revision(p)}"
                )
        return problems

    def verify(self, partners: Sequence[Partner], result: SinkResult) -> list[str]:
        return [f"{pid}: {problem}" for pid, problem in self.audit(partners).items()]

    def erase(self, partner_ids: Sequence[str]) -> dict[str, int]:
        from google.api_core.exceptions import NotFound

        deleted = 0
        for pid in partner_ids:
            try:
                self._blob(pid).delete()
                deleted += 1
            except NotFound:
                pass
        return {
            "deleted": deleted,
            "remaining": sum(1 for pid in partner_ids if self._blob(pid).exists()),
        }


def build(options: Mapping[str, Any], endpoints: Endpoints) -> DirectorySink:

    return DirectorySink(
        storage_client(endpoints.project, endpoints.credentials).bucket(options["bucket"]),
        prefix=options.get("prefix", "directory"),
    )
