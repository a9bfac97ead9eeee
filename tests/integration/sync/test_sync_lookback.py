"""A sink down for longer than the sync's lookback: the batch warehoused during the outage is
still planned and synced (the plan's bound follows the sink's own progress, not today's date),
and until then the lag monitor sees it waiting and calls the sink broken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from enrollment.clients.services import Endpoints, firestore_client, storage_client
from enrollment.ops.lag import findings, sink_lag
from enrollment.sinks import build_sink
from enrollment.sync.plan import plan_all
from enrollment.sync.run import SyncRun
from tests.integration.conftest import ingest_events, pipeline_warehouse
from tests.integration.sync.test_sinks import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

REGION = "EMEA"


def _backdate(w, batch_id: str, days: float) -> None:
    """The batch's ledger rows as if written ``days`` ago (the emulator's clock cannot move)."""
    at = datetime.now(UTC) - timedelta(days=days)
    w.run(
        f"UPDATE {w.table('ledger', ops=True)} SET recorded_at = TIMESTAMP '{at.isoformat()}' "
        f"WHERE batch_id = '{batch_id}'"
    )


def test_a_sink_down_longer_than_the_lookback_still_syncs_what_waited(stack, isolated_pipeline):
    config = isolated_pipeline
    assert config.sync_lookback_days == 7
    w = pipeline_warehouse(stack, config)
    sync = SyncRun(w, storage_client(stack.project).bucket(config.landing_bucket))
    sink = build_sink("firestore", config.sinks["firestore"], Endpoints.from_env())
    scenario = Scenario(seed=41)
    before, during = scenario.batches()[:2]
    topic = config.region(REGION).topic
    group = config.consumer_group
    try:
        synced = ingest_events(stack, config, w, topic, REGION, group, before)
        assert sync.run(sink, REGION)["batches"] == 1
        # The sink's last progress was 12 days ago; the batch that came then waited 10 days.
        _backdate(w, synced, 12)
        w.run(
            f"UPDATE {w.table('sink_watermarks', ops=True)} SET warehoused_at = "
            f"TIMESTAMP '{(datetime.now(UTC) - timedelta(days=12)).isoformat()}' "
            "WHERE sink = 'firestore'"
        )
        waited = ingest_events(stack, config, w, topic, REGION, group, during)
        _backdate(w, waited, 10)

        plans = plan_all(w, config.landing_bucket, "firestore", [REGION], lookback_days=7)
        assert [b["batch_id"] for b in plans[REGION].batches] == [waited]
        lag = [r for r in sink_lag(sync, config) if r.sink == "firestore" and r.region == REGION]
        assert lag[0].pending == 1 and lag[0].oldest_age_s > 9.9 * 86400
        kinds = {kind for kind, message in findings(lag, {}, config.lag) if "firestore" in message}
        assert kinds == {"broken"}

        assert sync.run(sink, REGION)["batches"] == 1
        collection = firestore_client(stack.project).collection(
            config.sinks["firestore"]["collection"]
        )
        changed = {e["partner_id"] for e in during}
        assert all(collection.document(pid).get().exists for pid in changed)
        assert plan_all(w, config.landing_bucket, "firestore", [REGION])[REGION].batches == []
    finally:
        sink.close()
