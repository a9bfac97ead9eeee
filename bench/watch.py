"""Watchers that follow sampled partners until they are visible: in BigQuery's current-state
table, and in each sink read back from its service. Shared by the benchmarks and the load test;
each ``poll(watched)`` returns how many watched partners are not visible everywhere yet."""

from __future__ import annotations

import time

import httpx

from enrollment.clients.services import bigquery_client, firestore_client


class WarehouseWatcher:
    """First time each partner is seen in ``<warehouse>.partners`` (epoch s)."""

    def __init__(self, cfg, config, limit: int = 2000):
        self.client = bigquery_client(cfg.project)
        self.table = f"`{cfg.project}.{config.warehouse_dataset}.partners`"
        self.limit = limit
        self.seen: dict[str, float] = {}

    def poll(self, watched: dict[str, float]) -> int:
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        waiting = [p for p in watched if p not in self.seen]
        if waiting:
            now = time.time()
            try:
                rows = self.client.query(
                    f"SELECT partner_id FROM {self.table} WHERE partner_id IN UNNEST(@ids)",
                    job_config=bigquery.QueryJobConfig(
                        query_parameters=[
                            bigquery.ArrayQueryParameter("ids", "STRING", waiting[: self.limit])
                        ]
                    ),
                ).result()
            except NotFound:  # a fresh stack: the first batch has not created the table yet
                rows = []
            self.seen.update({row["partner_id"]: now for row in rows})
        return len(watched) - sum(1 for p in watched if p in self.seen)


class SinkWatcher:
    """First time each partner is seen in Firestore, Solr (real-time get) and Marketing Cloud."""

    def __init__(self, cfg, config, limit: int = 1000):
        self.db = firestore_client(cfg.project)
        self.documents = self.db.collection(config.sinks["firestore"].get("collection", "partners"))
        core = config.sinks["solr"].get("core") or config.solr_core
        self.solr = f"{cfg.url('SOLR_PORT', '/solr')}/{core}"
        self.solr_auth = cfg.solr_auth
        extension = config.sinks["marketing_cloud"].get("data_extension")
        self.mc = f"{cfg.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{extension}/lookup"
        self.mc_headers = cfg.stub_headers()  # the stub's admin endpoints want its token
        self.limit = limit
        self.seen: dict[str, dict[str, float]] = {
            "firestore": {},
            "solr": {},
            "marketing_cloud": {},
        }
        # Partners Marketing Cloud must not hold (consent withdrawn after the enrollment was
        # sampled): followed into the other sinks only.
        self.consent = config.marketing_consent
        self.partners = f"`{cfg.project}.{config.warehouse_dataset}.partners`"
        self.bq = bigquery_client(cfg.project)
        self.not_contactable: set[str] = set()

    def poll(self, watched: dict[str, float]) -> int:
        now = time.time()
        waiting = {
            name: [p for p in watched if p not in got][: self.limit]
            for name, got in self.seen.items()
        }
        try:
            if waiting["firestore"]:
                for snap in self.db.get_all(
                    [self.documents.document(p) for p in waiting["firestore"]]
                ):
                    if snap.exists:
                        self.seen["firestore"][snap.id] = now
            if waiting["solr"]:
                docs = httpx.post(
                    f"{self.solr}/get",
                    data={"ids": ",".join(waiting["solr"]), "wt": "json"},
                    timeout=30,
                    auth=self.solr_auth,
                ).json()["response"]["docs"]
                self.seen["solr"].update({d["id"]: now for d in docs})
            waiting["marketing_cloud"] = [
                p for p in waiting["marketing_cloud"] if p not in self.not_contactable
            ]
            if waiting["marketing_cloud"]:
                rows = httpx.post(
                    self.mc,
                    json={"keys": waiting["marketing_cloud"]},
                    headers=self.mc_headers,
                    timeout=30,
                ).json()["items"]
                self.seen["marketing_cloud"].update(
                    {r["PartnerId"]: r.get("_written_at", now) for r in rows}
                )
                self._barred(
                    [p for p in waiting["marketing_cloud"] if p not in self.seen["marketing_cloud"]]
                )
        except (httpx.HTTPError, OSError, ValueError):
            pass  # a sink down (a fault being injected): look again at the next poll
        return self.missing(watched)

    def _barred(self, ids: list[str]) -> None:
        """Notes which of these partners the warehouse says marketing may not contact (now)."""
        from google.api_core.exceptions import GoogleAPIError
        from google.cloud import bigquery

        if not ids:
            return
        try:
            rows = self.bq.query(
                f"SELECT partner_id, region, marketing_consent FROM {self.partners} WHERE "
                "partner_id IN UNNEST(@ids)",
                job_config=bigquery.QueryJobConfig(
                    query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids)]
                ),
            ).result()
        except GoogleAPIError:
            return
        self.not_contactable.update(
            r["partner_id"]
            for r in rows
            if not self.consent.contactable(r["region"], r["marketing_consent"])
        )

    def _expected(self, partner_id: str) -> dict[str, dict[str, float]]:
        return {
            name: got
            for name, got in self.seen.items()
            if not (name == "marketing_cloud" and partner_id in self.not_contactable)
        }

    def missing(self, watched: dict[str, float]) -> int:
        return sum(1 for p in watched if any(p not in got for got in self._expected(p).values()))

    def everywhere(self, partner_id: str) -> float | None:
        times = [got.get(partner_id) for got in self._expected(partner_id).values()]
        return None if None in times else max(times)
