"""The pure parts of quarantine re-processing: the run's params, the reason filter, batch ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from enrollment.core.batch import is_recovery_batch, recovery_batch_id
from enrollment.core.errors import RequestError
from enrollment.ops.recovery.plan import OUTCOMES, Candidate, RecoveryPlan, RegionPlan
from enrollment.ops.recovery.request import MAX_WINDOW, RecoveryRequest, matches, reasons_regex

REGIONS = ["AMER", "EMEA", "APAC", "LATAM"]
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def parse(**params):
    return RecoveryRequest.parse(params, REGIONS, now=NOW)


def test_defaults_are_every_region_the_last_seven_days_and_a_dry_run():
    r = parse()
    assert (r.regions, r.since, r.until, r.reasons, r.dry_run, r.unknown_reasons) == (
        tuple(REGIONS),
        NOW - timedelta(days=7),
        NOW,
        (),
        True,
        (),
    )
    assert parse(since="", until=None, reasons=[]).since == NOW - timedelta(days=7)


def test_a_region_and_a_window_in_utc():
    r = parse(
        region="emea",
        since="2026-11-20T00:00:00Z",
        until="2026-11-21T01:00:00+01:00",
        dry_run=False,
    )
    assert r.regions == ("EMEA",) and not r.dry_run
    assert (r.since, r.until) == (
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 11, 21, tzinfo=UTC),
    )
    assert parse(since="2026-11-20T00:00:00").since.tzinfo == UTC, "naive: UTC, as the form says"
    assert parse(until="2026-11-10T00:00:00Z").since == datetime(2026, 11, 3, tzinfo=UTC), (
        "since defaults to 7 days before until"
    )


@pytest.mark.parametrize(
    "params, words",
    [
        ({"region": "MARS"}, "'MARS' is not a region"),
        ({"since": "yesterday"}, "since: 'yesterday' is not an ISO 8601"),
        ({"until": 5}, "until: expected an ISO 8601 date-time string"),
        ({"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, "is not before until"),
        (
            {"since": "2026-10-01T00:00:00Z", "until": "2026-11-02T00:00:00Z"},
            "spans 32 days; at most 31",
        ),
        ({"reasons": [1, 2]}, "reasons: expected a list"),
        ({"dry_run": "maybe"}, "dry_run: expected true or false"),
    ],
)
def test_params_that_cannot_be_honoured_say_which_and_why(params, words):
    with pytest.raises(RequestError, match=re.escape(words)):
        parse(**params)


def test_exactly_the_longest_window_is_allowed():
    r = parse(since=(NOW - MAX_WINDOW).isoformat(), until=NOW.isoformat())
    assert r.until - r.since == MAX_WINDOW


def test_unknown_reason_codes_are_allowed_and_reported():
    r = parse(
        reasons=[
            "country_not_in_region",
            "missing",
            "missing:payload.email",
            " bad_format:payload.address.postal_code ",
            "legacy_code",
            "missing",
        ]
    )
    assert r.reasons == (
        "country_not_in_region",
        "missing",
        "missing:payload.email",
        "bad_format:payload.address.postal_code",
        "legacy_code",
    )
    assert r.unknown_reasons == ("legacy_code",)
    assert parse(reasons="under_age,sponsor_is_self").reasons == ("under_age", "sponsor_is_self"), (
        "a comma-separated string from a form"
    )


@pytest.mark.parametrize(
    "reasons, filters, expected",
    [
        ("country_not_in_region", ["country_not_in_region"], True),
        ("missing:payload.email,under_age", ["missing"], True),
        ("missing:payload.email", ["missing:payload"], False),  # a prefix matches at a colon only
        ("missing:payload.email", ["missing:payload.email"], True),
        ("missing_thing", ["missing"], False),
        ("under_age", ["missing", "sponsor_is_self"], False),
        ("under_age", [], True),
        ("duplicate_event_id", [], False),  # no filter: every reason but in-batch duplicates
        ("duplicate_event_id,under_age", [], True),
        ("duplicate_event_id", ["duplicate_event_id"], True),
        ("", [], False),
    ],
)
def test_the_reason_filter_in_python_and_in_sql_agree(reasons, filters, expected):
    assert matches(reasons, filters) is expected
    pattern = reasons_regex(filters)
    if pattern is not None:
        assert bool(re.search(pattern, reasons)) is expected, pattern


def test_a_filter_with_regex_characters_is_taken_literally():
    assert not re.search(reasons_regex(["missing:payload.e.ail"]), "missing:payload.email")


def test_the_same_messages_are_always_the_same_recovery_batch():
    a = recovery_batch_id("EMEA", "group", "topic", [(1, 5), (0, 7), (0, 3)])
    assert a == recovery_batch_id("EMEA", "group", "topic", [(0, 3), (0, 7), (1, 5)]), (
        "order does not matter"
    )
    assert (
        re.fullmatch(r"recovery-emea-[0-9a-f]{16}", a)
        and is_recovery_batch(a)
        and not is_recovery_batch("emea-0123456789abcdef")
    )
    assert a != recovery_batch_id("EMEA", "group", "topic", [(0, 3), (0, 7)])
    assert a != recovery_batch_id("EMEA", "other-group", "topic", [(1, 5), (0, 7), (0, 3)])


def test_counts_partition_the_candidates_and_name_no_one():
    at = NOW - timedelta(hours=1)
    cands = [
        Candidate("emea-b1", "EMEA", 0, i, at, "country_not_in_region", outcome)
        for i, outcome in enumerate(OUTCOMES)
    ]
    cands.append(Candidate("emea-b1", "EMEA", 1, 0, at, "under_age", "still_invalid"))
    plan = RecoveryPlan(parse(region="EMEA"), {"EMEA": RegionPlan("EMEA", "t", cands)})
    counts = plan.counts()
    assert counts["total"] == {
        "candidates": 7,
        "already_recovered": 1,
        "expired": 1,
        "still_invalid": 2,
        "erased": 1,
        "already_in_events": 1,
        "recoverable": 1,
    }
    assert counts["regions"]["EMEA"]["by_reason"]["under_age"] == {
        "candidates": 1,
        "already_recovered": 0,
        "expired": 0,
        "still_invalid": 1,
        "erased": 0,
        "already_in_events": 0,
        "recoverable": 0,
    }
    assert (
        plan.counts(recovered=True)["total"]["recovered"] == 1
        and "recoverable" not in plan.counts(recovered=True)["total"]
    )


def test_a_recovery_batch_lands_under_its_region_like_any_batch():
    from enrollment.core.batch import landing_prefix

    assert landing_prefix("emea-0123456789abcdef") == "landing/EMEA/emea-0123456789abcdef"
    batch_id = recovery_batch_id("LATAM", "group", "topic", [(0, 1)])
    assert landing_prefix(batch_id) == f"landing/LATAM/{batch_id}", (
        "where the sinks read a batch's objects"
    )
