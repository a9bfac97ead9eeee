"""A stale state never has the last word in Marketing Cloud, which has no conditional write: a
replay of an old batch beside the regular sync, on the real contract stub and warehouse. Every
assertion reads the data extension back."""

from __future__ import annotations

import uuid

import pytest

from enrollment.clients.services import storage_client
from enrollment.ops.replay import replay_sync
from enrollment.sync.run import SyncRun
from tests.integration.conftest import ingest_events
from tests.integration.ops.test_erasure_races import PausedSink
from tests.integration.sync.test_sinks import Scenario, mc_rows

pytestmark = [pytest.mark.integration]

REGION = "EMEA"


def test_a_replay_beside_the_regular_sync_never_leaves_marketing_cloud_stale(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = Scenario(seed=31)
    group = f"test-stale-{uuid.uuid4().hex[:6]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    mc = sinks["marketing_cloud"]
    sync = SyncRun(warehouse, bucket)
    jose = scenario.ids["jose"]

    def version() -> int:
        return int(mc_rows(stack, mc.data_extension)[jose]["PartnerVersion"])

    def ingested(*events: dict) -> str:
        return ingest_events(
            stack, pipeline_config, warehouse, region_topic, REGION, group, list(events)
        )

    first = ingested(scenario.event("partner.enrolled", "jose", 1, first_name="José"))
    ingested(scenario.event("partner.updated", "jose", 2, changes={"phone": "+49301234567"}))
    for _ in range(2):
        sync.run(mc, REGION)
    assert version() == 2

    # A replay of the first batch: its hand-over holds version 1, Marketing Cloud version 2.
    replay_sync(sync, mc, REGION, [first])
    assert version() == 2, "the replay wrote the batch's old state over a newer one"

    # The same replay, paused between its read and its write while a newer version is committed
    # and synced by the regular sync: it writes what it read (2) over 3, then reads again.
    def newer_synced() -> None:
        ingested(scenario.event("partner.updated", "jose", 3, changes={"phone": "+49309999999"}))
        assert sync.run(mc, REGION)["batches"] == 1
        assert version() == 3

    paused = PausedSink(mc, newer_synced)
    replay_sync(sync, paused, REGION, [first])
    assert paused.handed == [jose], "the replay read the partner before the newer version"
    assert version() == 3, "the stale state had the last word"
