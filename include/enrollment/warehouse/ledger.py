"""The ledger every stage reports to (``<ops>.ledger``): one row per batch and stage.

Every offset of a batch is accounted for at every stage: valid + quarantined + duplicates +
skipped + recovered = offsets (``balances``). A claim's gaps and rewinds are rows of their own
(``anomaly_rows``): a gap is never ok, so a loss never balances quietly. Rows are MERGEd on
(batch, stage): recording again replaces or keeps them, never doubles them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from enrollment.clients.bigquery import BigQuery
from enrollment.core.batch import Landed
from enrollment.core.errors import GateError
from enrollment.core.windows import Window
from enrollment.warehouse.tables import LEDGER_SCHEMA, ensure_ledger

if TYPE_CHECKING:
    from google.cloud.bigquery.table import Row

    from enrollment.clients.bigquery import QueryParameter


@dataclass(frozen=True)
class StageRow:
    """One batch's outcome at a later stage (a sync), for ``Ledger.record_stages``."""

    batch_id: str
    rows_merged: int
    seconds: float
    ok: bool = True
    detail: str = ""
    replace: bool = True  # False: an existing row is never changed (a replay adds missing rows)


def balances(row: Row | Mapping[str, Any]) -> bool:
    """offsets_in = valid + quarantined + duplicates + skipped + recovered (NULL: a row from before
    the column, or a stage that recovers nothing)."""
    return bool(
        row["offsets_in"]
        == row["valid"]
        + row["quarantined"]
        + row["duplicates"]
        + (row.get("skipped") or 0)
        + (row.get("recovered") or 0)
    )


def anomaly_rows(landed: Landed) -> list[dict[str, Any]]:
    """One ledger row per kind of anomaly its claim or read found: ``gap`` (offsets deleted before
    they were read: lost, so ``ok`` is false and the ledger never balances quietly), ``rewind``
    (offsets already landed that the group was rewound to: not read again, counted as
    duplicates) and ``clock`` (messages with implausible Kafka timestamps, landed with the land
    time: counted by the batch's own rows, so 0 offsets here; the detail says which)."""
    out = []
    for kind in ("gap", "rewind", "clock"):
        found = [a for a in landed.anomalies or [] if a["kind"] == kind]
        if not found:
            continue
        n = 0 if kind == "clock" else sum(max(0, a["end"] - a["start"]) for a in found)
        out.append(
            {
                "batch_id": landed.batch_id,
                "region": landed.region,
                "stage": kind,
                "offsets_in": n,
                "valid": 0,
                "quarantined": 0,
                "duplicates": n if kind == "rewind" else 0,
                "skipped": n if kind == "gap" else 0,
                "rows_merged": 0,
                "seconds": 0.0,
                "ok": kind != "gap",
                "detail": "; ".join(a["detail"] for a in found),
            }
        )
    return out


@dataclass
class Ledger:
    """The ledger every stage reports to (``<ops>.ledger``): one row per batch and stage, written
    by the stage's task, read by the gates, the lag monitor, the reconciliation and people.

    A batch balances when valid + quarantined + duplicates + skipped + recovered = its offsets at
    every stage (``balances``); a ``gap`` row never does."""

    bq: BigQuery

    # -- ledger -----------------------------------------------------------------------------------
    def record(
        self,
        landed: Landed,
        stage: str,
        rows_merged: int,
        seconds: float,
        ok: bool = True,
        detail: str = "",
    ) -> None:
        """One ledger row per batch and stage; recording again replaces it (idempotent)."""
        from google.cloud import bigquery

        ensure_ledger(self.bq)
        values: dict[str, str | int | float | bool] = {
            "batch_id": landed.batch_id,
            "region": landed.region,
            "stage": stage,
            "offsets_in": landed.offsets,
            "valid": landed.valid,
            "quarantined": landed.quarantined,
            "duplicates": landed.duplicates,
            "skipped": landed.skipped,
            "rows_merged": rows_merged,
            "seconds": float(seconds),
            "ok": ok,
            "detail": detail,
        }
        types = dict(LEDGER_SCHEMA)
        params = [bigquery.ScalarQueryParameter(k, types[k], v) for k, v in values.items()]
        cols = list(values)
        self.bq.run(
            f"""MERGE {self.bq.table("ledger", ops=True)} T
            USING (SELECT {", ".join(f"@{c} AS {c}" for c in cols)}, """
            f"""CURRENT_TIMESTAMP() AS recorded_at) S
            ON T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED THEN UPDATE SET """
            f"""{", ".join(f"{c} = S.{c}" for c in [*cols[3:], "recorded_at"])}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}, recorded_at) """
            f"""VALUES ({", ".join("S." + c for c in cols)}, S.recorded_at)""",
            params,
        )

    def record_stage(
        self,
        batch_id: str,
        stage: str,
        rows_merged: int,
        seconds: float,
        ok: bool = True,
        detail: str = "",
        like: str = "warehouse",
        replace: bool = True,
    ) -> None:
        """A later stage's ledger row (a sync): the batch's numbers copied from its ``like`` row.
        Recording the same outcome again leaves the row as it is (its time included); with
        ``replace=False`` an existing row is never changed (a replay adds only missing rows)."""
        self.record_stages(
            stage, [StageRow(batch_id, rows_merged, seconds, ok, detail, replace)], like=like
        )

    def record_stages(
        self,
        stage: str,
        rows: list[StageRow],
        window: Window | None = None,
        like: str = "warehouse",
    ) -> None:
        """``record_stage`` for many batches in one MERGE (a sync run's rows, every region).
        ``window``, when given, holds every batch's ``like`` row and so every row of a later stage:
        a constant partition filter, so the statement does not read the whole ledger."""
        from google.cloud import bigquery

        if not rows:
            return
        ensure_ledger(self.bq)
        params: list[QueryParameter] = [
            bigquery.ScalarQueryParameter("stage", "STRING", stage),
            bigquery.ScalarQueryParameter("like", "STRING", like),
        ]
        outcomes = []
        for n, r in enumerate(rows):
            params += [
                bigquery.ScalarQueryParameter(f"b{n}", "STRING", r.batch_id),
                bigquery.ScalarQueryParameter(f"rows{n}", "INT64", r.rows_merged),
                bigquery.ScalarQueryParameter(f"seconds{n}", "FLOAT64", float(r.seconds)),
                bigquery.ScalarQueryParameter(f"ok{n}", "BOOL", r.ok),
                bigquery.ScalarQueryParameter(f"detail{n}", "STRING", r.detail),
                bigquery.ScalarQueryParameter(f"replace{n}", "BOOL", r.replace),
            ]
            outcomes.append(
                f"SELECT @b{n} AS batch_id, @rows{n} AS rows_merged, @seconds{n} AS seconds, "
                f"@ok{n} AS ok, @detail{n} AS detail, @replace{n} AS replace_row"
            )
        cols = [c for c, _ in LEDGER_SCHEMA]
        ledger = self.bq.table("ledger", ops=True)
        like_in = f"{window.sql('L.recorded_at')} AND " if window else ""
        target_in = f"{window.sql('T.recorded_at')} AND " if window else ""
        self.bq.run(
            f"""MERGE {ledger} T
            USING (SELECT L.batch_id, L.region, @stage AS stage, L.offsets_in, L.valid, """
            """L.quarantined, L.duplicates, O.rows_merged, O.seconds, O.ok, O.detail,
                          CURRENT_TIMESTAMP() AS recorded_at, L.skipped, L.recovered, """
            f"""O.replace_row
                   FROM {ledger} L JOIN ({" UNION ALL ".join(outcomes)}) O
                   ON L.batch_id = O.batch_id
                   WHERE {like_in}L.stage = @like) S
            ON {target_in}T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED AND S.replace_row AND (T.rows_merged != S.rows_merged OR T.ok != S.ok """
            f"""OR COALESCE(T.detail, '') != COALESCE(S.detail, ''))
              THEN UPDATE SET {", ".join(f"{c} = S.{c}" for c in cols[3:])}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}) """
            f"""VALUES ({", ".join("S." + c for c in cols)})""",
            params,
        )

    def record_cycle(
        self,
        batches: list[Landed],
        info: dict[str, dict[str, Any]],
        window: Window,
        seconds: float,
    ) -> None:
        """The ``land`` and ``warehouse`` ledger rows of a cycle's batches, and a row per gap or
        rewind their claims found (``anomaly_rows``), in one MERGE."""
        from google.cloud import bigquery

        if not batches:
            return
        ensure_ledger(self.bq)
        types = dict(LEDGER_SCHEMA)
        cols = [c for c, _ in LEDGER_SCHEMA if c != "recorded_at"]
        params: list[QueryParameter] = []
        selects: list[str] = []
        for b in batches:
            rows_of_batch: list[dict[str, Any]] = [
                {
                    "batch_id": b.batch_id,
                    "region": b.region,
                    "stage": stage,
                    "offsets_in": b.offsets,
                    "valid": b.valid,
                    "quarantined": b.quarantined,
                    "duplicates": b.duplicates,
                    "skipped": b.skipped,
                    "rows_merged": rows,
                    "seconds": float(secs),
                    "ok": True,
                    "detail": detail,
                }
                for stage, rows, secs, detail in (
                    ("land", b.valid, b.seconds, ""),
                    (
                        "warehouse",
                        info[b.batch_id]["written"],
                        seconds,
                        info[b.batch_id]["detail"],
                    ),
                )
            ]
            if b.requeued:  # set aside by an earlier cycle, repaired: its set_aside row says so now
                rows_of_batch.append(
                    rows_of_batch[0]
                    | {
                        "stage": "set_aside",
                        "rows_merged": 0,
                        "seconds": 0.0,
                        "detail": "set aside, repaired, requeued and warehoused",
                    }
                )
            for values in rows_of_batch + anomaly_rows(b):
                n = len(selects)
                params += [
                    bigquery.ScalarQueryParameter(f"{c}{n}", types[c], values.get(c)) for c in cols
                ]
                selects.append(
                    "SELECT "
                    + ", ".join(f"@{c}{n} AS {c}" for c in cols)
                    + ", CURRENT_TIMESTAMP() AS recorded_at"
                )
        self.bq.run(
            f"""MERGE {self.bq.table("ledger", ops=True)} T USING ({" UNION ALL ".join(selects)}) S
            ON {window.sql("T.recorded_at")} AND T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED THEN UPDATE SET """
            f"""{", ".join(f"{c} = S.{c}" for c in [*cols[3:], "recorded_at"])}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}, recorded_at) """
            f"""VALUES ({", ".join("S." + c for c in cols)}, S.recorded_at)""",
            params,
        )

    def warehoused(self, batch_ids: list[str], window: Window) -> list[str]:
        """Which of these batches already have their warehouse ledger row (a cycle wrote them)."""
        from google.cloud import bigquery

        rows = self.bq.run(
            f"""SELECT DISTINCT batch_id FROM {self.bq.table("ledger", ops=True)}
            WHERE {window.sql("recorded_at")} AND stage = 'warehouse' AND ok """
            "AND batch_id IN UNNEST(@ids)",
            [bigquery.ArrayQueryParameter("ids", "STRING", list(batch_ids))],
        )
        return sorted(r["batch_id"] for r in rows)

    def balance(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """Every offset accounted for: valid + quarantined + duplicates + skipped + recovered =
        offsets, at every stage, and no row says otherwise (``ok``: a gap row never is)."""
        from google.cloud import bigquery

        ensure_ledger(self.bq)
        rows = self.bq.run(
            """SELECT stage, offsets_in, valid, quarantined, duplicates, """
            f"""COALESCE(skipped, 0) AS skipped,
            COALESCE(recovered, 0) AS recovered, ok, detail """
            f"""FROM {self.bq.table("ledger", ops=True)} WHERE batch_id = @b""",
            [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
        )
        if not rows:
            raise GateError(f"ledger: no row for batch {batch_id}")
        for r in rows:
            if not balances(r) or not r["ok"]:
                raise GateError(
                    f"ledger, batch {batch_id}, stage {r['stage']}: offsets {r['offsets_in']} "
                    f"!= valid {r['valid']} + quarantined "
                    f"{r['quarantined']} + duplicates {r['duplicates']} + skipped {r['skipped']} "
                    f"+ recovered {r['recovered']} "
                    f"(ok={r['ok']}; {r['detail'] or ''})"
                )
        return {r["stage"]: dict(r) for r in rows}
