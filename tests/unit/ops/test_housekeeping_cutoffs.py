"""Housekeeping's cut-offs without services: what is old enough to go (hand-over objects, claim
records, staging tables) and what is durable and never touched, whatever its age."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from enrollment.config import ConfigError, RetentionSettings
from enrollment.ops.housekeeping import sweep
from tests.unit.fakes import FakeBucket

NOW = datetime(2026, 11, 20, 3, 15, tzinfo=UTC)
SETTINGS = RetentionSettings(handover_days=2, claims_days=35, staging_hours=6)
CONFIG = SimpleNamespace(
    sinks={"solr": {}, "firestore": {}, "marketing_cloud": {}},
    regions=[SimpleNamespace(code="EMEA"), SimpleNamespace(code="APAC")],
    project="p",
    warehouse_dataset="w",
    retention=SETTINGS,
)


@dataclass
class _Item:
    table_id: str

    @property
    def reference(self) -> str:
        return f"p.w.{self.table_id}"


class Tables:
    """The warehouse dataset's tables and their creation times."""

    def __init__(self, created: dict[str, datetime | None]):
        self.created, self.dropped = created, []

    def list_tables(self, dataset: str) -> list[_Item]:
        assert dataset == "p.w"
        return [_Item(t) for t in self.created]

    def get_table(self, reference: str) -> SimpleNamespace:
        return SimpleNamespace(created=self.created[reference.rsplit(".", 1)[1]])

    def delete_table(self, reference: str, not_found_ok: bool = False) -> None:
        self.dropped.append(reference)


def ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


def test_transient_objects_past_their_retention_go_and_durable_ones_stay():
    bucket = FakeBucket("landing")
    kept = {
        "sinks/solr/EMEA/young.parquet": ago(days=1, hours=23),
        "sinks/solr/journeys/welcome/EM1.json": ago(days=400),  # welcome-journey claims
        "sinks/marketing_cloud/journeys/welcome/EM1.json": ago(days=400),
        "sinks/solr/welcome/b.json": ago(days=400),
        "sinks/solr/EMEA/notes.json": ago(days=400),  # not a hand-over object
        "sinks/solr/LATAM/old.parquet": ago(days=400),  # no configured region
        "claims/EMEA/from-young.json": ago(days=34),
        "claims/EMEA/landed-chain.json": ago(days=400),  # the claim chain
        "pending/pipeline/EMEA/b.json": ago(days=400),
        "set_aside/pipeline/EMEA/b.json": ago(days=400),
        "landing/EMEA/b/valid.parquet": ago(days=400),
        "reconciliation/EMEA/2026-11-20/events.parquet": ago(hours=5),
    }
    gone = {
        "sinks/solr/EMEA/old.parquet": ago(days=2, seconds=1),
        "sinks/firestore/APAC/old.parquet": ago(days=30),
        "claims/EMEA/from-old.json": ago(days=35, seconds=1),
        "claims/APAC/from-old.json": ago(days=90),
        # An older version's reconciliation day file: a staging input, gone after staging_hours.
        "reconciliation/EMEA/2026-11-19/events.parquet": ago(hours=6, seconds=1),
    }
    for name, created in {**kept, **gone}.items():
        bucket.put(name, b"x", created)
    swept = sweep(bucket, Tables({}), CONFIG, now=NOW)
    assert sorted(bucket.objects) == sorted(kept)
    assert swept.as_dict() == {
        "handover_objects": 2,
        "claim_records": 2,
        "reconciliation_files": 1,
        "staging_tables": 0,
    }
    again = sweep(bucket, Tables({}), CONFIG, now=NOW)
    assert again.as_dict() == {
        "handover_objects": 0,
        "claim_records": 0,
        "reconciliation_files": 0,
        "staging_tables": 0,
    }


def test_only_staging_tables_older_than_their_hours_are_dropped():
    tables = Tables(
        {
            "_cycle_events_old": ago(hours=6, seconds=1),
            "_stage_recon_emea_20261101": ago(days=3),
            "_cycle_partners_running": ago(hours=5, minutes=59),
            "_stage_unknown_age": None,
            "events": ago(days=400),
            "partners": ago(days=400),
            "cycle_report": ago(days=400),  # not a staging prefix
        }
    )
    swept = sweep(FakeBucket("landing"), tables, CONFIG, now=NOW)
    assert sorted(swept.staging_tables) == ["_cycle_events_old", "_stage_recon_emea_20261101"]
    assert sorted(tables.dropped) == ["p.w._cycle_events_old", "p.w._stage_recon_emea_20261101"]


@pytest.mark.parametrize("bad", [{"handover_days": 0}, {"claims_days": 1}, {"staging_hours": 0}])
def test_retention_refuses_cut_offs_that_would_remove_what_is_still_read(bad):
    with pytest.raises(ConfigError, match="retention"):
        RetentionSettings(**bad)
