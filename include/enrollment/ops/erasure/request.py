"""Erasure of partners (GDPR art. 17, LGPD art. 18, CCPA): every store, the landed batches
included, and a suppression list that keeps them from coming back.

A request names partner ids, a reason and a ticket. Its steps (the ``erase_partners`` DAG):

1. **suppress** — each partner's keyed token (``core.pii.Keyring``, kind ``partner_id``; never the
   id) joins ``gs://<bucket>/erasures/index.json``. ``land`` reads it right before writing a batch
   and anonymises those partners' events (``ingest.suppression``), so what Kafka still holds (until
   its retention) or a producer sends again never lands in clear; replays read the rewritten
   batches.
2. **settle** — a short wait (``erasure.settle_s``) so that a land that read the index just before
   step 1 has written its objects: they are found by step 3.
3. **warehouse** (holding the warehouse writer's pool slot: no cycle runs meanwhile) — the landed
   batches holding the partners (found through ``events`` and ``quarantine``, and among the
   batches still queued or set aside) are **rewritten in place, row for row** (``scrub``): the
   events keep their ids, types, times, Kafka coordinates and amounts, their ``partner_id``
   becomes ``ERASED`` and every personal column null; raw JSON keeps only the non-personal
   envelope; quarantined messages lose their raw bytes; the batch's partner changes lose the
   partner. Row counts do not change, so every ledger row stays true. Then the same in BigQuery:
   ``events`` and ``quarantine`` rows anonymised alike, the ``partners`` row deleted,
   ``sink_quarantine`` rows anonymised, ids listed by past reconciliations replaced.
4. **sinks** — Firestore documents and Solr documents deleted, Marketing Cloud data-extension rows
   and contacts deleted (the contact delete is Marketing Cloud's privacy-request call), the
   welcome-journey claims (named by partner id) deleted; the sync hand-over copies (transient,
   ``retention.handover_days``) holding the partners rewritten without them.
5. **verify** — every store read again for the clear id; the run fails if anything remains.

Every step records rows in ``<ops>.erasures`` (which store, what was done, how many items) with
the partner's token, the reason and the ticket — never the id. Every step may run twice.

Kept on purpose: another partner's ``sponsor_id`` naming an erased partner (it is the downline's
record, needed for their commissions, and no longer leads to any data here); Kafka's copy until
the topic's retention (the producer's; read only by the pipeline's service account).

This module holds the request, its ledger and its steps' bookkeeping; ``scrub`` finds and rewrites
the stores.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enrollment.config import ERASURE_REASONS, MAX_ERASURE_PARTNERS
from enrollment.contracts.spec import FORMATS
from enrollment.core.pii import Keyring

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

    from enrollment.clients.bigquery import BigQuery


REASONS = ERASURE_REASONS


TICKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#/-]{0,63}$")


PARTNER_ID_RE = re.compile(FORMATS["partner_id"])


MAX_PARTNERS = MAX_ERASURE_PARTNERS


ERASURE_SCHEMA = [
    ("erasure_id", "STRING"),
    ("partner_token", "STRING"),
    ("reason", "STRING"),
    ("ticket", "STRING"),
    ("step", "STRING"),
    ("store", "STRING"),
    ("items", "INT64"),
    ("ok", "BOOL"),
    ("detail", "STRING"),
    ("recorded_at", "TIMESTAMP"),
]


@dataclass(frozen=True)
class ErasureRequest:
    partner_ids: tuple[str, ...] = field(repr=False)
    reason: str
    ticket: str

    @classmethod
    def parse(cls, partner_ids: object, reason: object, ticket: object) -> ErasureRequest:
        """A request from a DAG run's params; the errors never repeat an id (they reach the
        logs)."""
        if isinstance(partner_ids, str):
            partner_ids = [p for p in re.split(r"[\s,;]+", partner_ids) if p]
        if not isinstance(partner_ids, (list, tuple)) or not partner_ids:
            raise ValueError("erasure: partner_ids must name at least one partner id")
        if len(partner_ids) > MAX_PARTNERS:
            raise ValueError(
                f"erasure: at most {MAX_PARTNERS} partners per request "
                f"({len(partner_ids)} given): split it"
            )
        bad = [
            i
            for i, p in enumerate(partner_ids, 1)
            if not isinstance(p, str) or not PARTNER_ID_RE.match(p)
        ]
        if bad:
            raise ValueError(
                f"erasure: partner_ids entries {bad[:10]} are not partner ids "
                "(two capitals and ten capitals or digits)"
            )
        if reason not in REASONS:
            raise ValueError(f"erasure: reason must be one of {', '.join(REASONS)}")
        if not isinstance(ticket, str) or not TICKET_RE.match(ticket):
            raise ValueError(
                "erasure: ticket must be the request's reference "
                "(1-64 letters, digits, . _ : # / -)"
            )
        return cls(tuple(sorted(set(partner_ids))), reason, ticket)

    def erasure_id(self, keyring: Keyring) -> str:
        """The same request (ticket and partners) always has the same id: a rerun is the same
        erasure."""
        key = "|".join([self.ticket, *self.tokens(keyring)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def tokens(self, keyring: Keyring) -> list[str]:
        return [keyring.token(p, "partner_id") for p in self.partner_ids]


def ensure_ledger(w: BigQuery) -> None:
    from google.api_core.exceptions import NotFound

    table = w.table("erasures", ops=True)
    try:
        w.client.get_table(table.strip("`"))
    except NotFound:
        cols = ", ".join(f"{c} {t}" for c, t in ERASURE_SCHEMA)
        w.run(
            f"CREATE TABLE IF NOT EXISTS {table} ({cols}) "
            "PARTITION BY DATE(recorded_at) CLUSTER BY erasure_id"
        )


def record(
    w: BigQuery,
    erasure_id: str,
    request: ErasureRequest,
    keyring: Keyring,
    step: str,
    store: str,
    items: int,
    ok: bool = True,
    detail: str = "",
) -> None:
    """One row per partner for a step in a store (MERGEd: a rerun replaces its own rows)."""
    from google.cloud import bigquery

    ensure_ledger(w)
    tokens = request.tokens(keyring)
    rows = [
        {
            "erasure_id": erasure_id,
            "partner_token": t,
            "reason": request.reason,
            "ticket": request.ticket,
            "step": step,
            "store": store,
            "items": int(items),
            "ok": bool(ok),
            "detail": detail[:1000],
        }
        for t in tokens
    ]
    source = " UNION ALL ".join(
        f"SELECT @e AS erasure_id, @t{i} AS partner_token, @r AS reason, @k AS ticket, "
        "@s AS step, @st AS store, @n AS items, @ok AS ok, @d AS detail"
        for i in range(len(rows))
    )
    params = [
        bigquery.ScalarQueryParameter("e", "STRING", erasure_id),
        bigquery.ScalarQueryParameter("r", "STRING", request.reason),
        bigquery.ScalarQueryParameter("k", "STRING", request.ticket),
        bigquery.ScalarQueryParameter("s", "STRING", step),
        bigquery.ScalarQueryParameter("st", "STRING", store),
        bigquery.ScalarQueryParameter("n", "INT64", int(items)),
        bigquery.ScalarQueryParameter("ok", "BOOL", bool(ok)),
        bigquery.ScalarQueryParameter("d", "STRING", detail[:1000]),
    ]
    params += [bigquery.ScalarQueryParameter(f"t{i}", "STRING", t) for i, t in enumerate(tokens)]
    w.run(
        f"""MERGE {w.table("erasures", ops=True)} T USING ({source}) S
        ON T.erasure_id = S.erasure_id AND T.partner_token = S.partner_token
          AND T.step = S.step AND T.store = S.store
        WHEN MATCHED THEN UPDATE SET items = S.items, ok = S.ok, detail = S.detail,
          recorded_at = CURRENT_TIMESTAMP()
        WHEN NOT MATCHED THEN INSERT ({", ".join(c for c, _ in ERASURE_SCHEMA)})
          VALUES (S.erasure_id, S.partner_token, S.reason, S.ticket, S.step, S.store, S.items,
            S.ok, S.detail, CURRENT_TIMESTAMP())""",
        params,
    )


@dataclass(frozen=True)
class Erasure:
    """One request at work: what each step of the ``erase_partners`` DAG needs, and its ledger."""

    request: ErasureRequest
    warehouse: BigQuery
    bucket: Bucket  # the landing bucket
    keyring: Keyring = field(repr=False)

    @property
    def erasure_id(self) -> str:
        return self.request.erasure_id(self.keyring)

    @property
    def ids(self) -> set[str]:
        return set(self.request.partner_ids)

    def record(self, step: str, store: str, items: int, ok: bool = True, detail: str = "") -> None:
        record(
            self.warehouse,
            self.erasure_id,
            self.request,
            self.keyring,
            step,
            store,
            items,
            ok,
            detail,
        )
