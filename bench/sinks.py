"""The sinks on the local stack, in two parts; writes bench/results/sinks.json.

1. **Throughput** per sink: BENCH_SINK_PARTNERS (20,000) partners in their current state handed
   to each sink's ``write`` (then ``verify``, timed apart), on a collection / data extension of the
   benchmark's own. Partners per second = partners / write seconds.
2. **End to end** on the running system: the simulator at BENCH_RATE (400,000/min) for
   BENCH_SINKS_DURATION (3m); the ingest DAGs and the three sync DAGs carry it; sampled
   enrollments are looked up in Firestore, Solr (real-time get) and Marketing Cloud until visible
   in all three. Latency = visible in the last of them - the event's occurred_at (the simulator
   stamps the wall clock); polling every 2 s adds up to 2 s.

unexplained_records = produced offsets not committed + sampled enrollments never visible in all
three sinks.

    BENCH_RATE=400000/min BENCH_SINKS_DURATION=3m python -m bench.sinks
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx

from bench.common import RESULTS, write
from bench.load import log, percentiles, steady_load
from bench.plots import latency_over_time
from bench.watch import SinkWatcher
from enrollment.clients.services import Endpoints
from enrollment.config import load_config
from enrollment.contracts import markets
from enrollment.simulator.generator import Simulator
from enrollment.sinks import build_sink
from stack import cli as stack_cli
from stack import config as stack_config

PARTNERS = int(os.environ.get("BENCH_SINK_PARTNERS", "20000"))
RATE = os.environ.get("BENCH_RATE", "400000/min")
DURATION = os.environ.get("BENCH_SINKS_DURATION", "3m")
# One new enrollment in 25 is followed to all three sinks (polling costs the system under test too).
SAMPLE_EVERY = 25


def partner_states(n: int, sponsor: str) -> list[dict]:
    """Current-state rows as the warehouse holds them, for n new partners of every market."""
    sim = Simulator(seed=int(time.time()))
    countries = [c for region in markets.active().countries.values() for c in region]
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        e = sim.event_for("partner.enrolled", countries[i % len(countries)], 2)
        p, address = e["payload"], e["payload"]["address"]
        out.append(
            {
                "partner_id": e["partner_id"],
                "partner_version": 1,
                "region": e["region"],
                "country": address["country"],
                "first_name": p["first_name"],
                "last_name": p["last_name"],
                "email": p["email"],
                "phone": p.get("phone"),
                "language": p.get("language"),
                "address_line1": address["line1"],
                "address_city": address["city"],
                "address_postal_code": address.get("postal_code"),
                "address_state": address.get("state"),
                "date_of_birth": p.get("date_of_birth"),
                "sponsor_id": sponsor,
                "status": "active",
                "enrolled_at": now,
                "terminated_at": None,
                "updated_at": now,
                "last_event_id": e["event_id"],
                "batch_id": "bench",
                "marketing_consent": True,
            }
        )  # every one may be contacted: the benchmark measures writes, not deletions
    return out


def throughput(cfg, config) -> dict:
    run = uuid.uuid4().hex[:8]
    sponsor = "BS" + run.upper() + "00"
    options = {name: dict(o) for name, o in config.sinks.items()}
    options["firestore"]["collection"] = f"bench_{run}"
    options["marketing_cloud"].update(data_extension=f"bench-{run}", welcome_event=None)
    partners = partner_states(PARTNERS, sponsor)
    figures = {}
    endpoints = Endpoints.from_env()
    for name in ("firestore", "solr", "marketing_cloud"):
        sink = build_sink(name, options[name], endpoints)
        try:
            t0 = time.monotonic()
            result = sink.write(partners, {})
            t1 = time.monotonic()
            problems = sink.verify(partners, result)
            t2 = time.monotonic()
        finally:
            sink.close()
        if problems:
            raise SystemExit(f"{name}: {len(problems)} partners not read back, e.g. {problems[:3]}")
        figures[f"{name}_partners_per_s"] = round(len(partners) / (t1 - t0))
        figures[f"{name}_verify_partners_per_s"] = round(len(partners) / (t2 - t1))
        log(
            f"{name}: {len(partners):,} partners written in {t1 - t0:.1f} s "
            f"({figures[f'{name}_partners_per_s']:,}/s), read back in {t2 - t1:.1f} s"
        )
    # The benchmark's partners leave the shared search
    # index (delete by query skips the version chain).
    httpx.post(
        f"{endpoints.solr_url}/{config.solr_core}/update",
        params={"commit": "true"},
        json={"delete": {"query": f"sponsor_id:{sponsor}"}},
        timeout=60,
        auth=endpoints.solr_auth,
    )
    return figures


def end_to_end(cfg, config) -> dict:
    watcher = SinkWatcher(cfg, config)
    seen = watcher.seen
    dag_ids = config.carrier_dags()
    outcome = steady_load(
        cfg, config, RATE, DURATION, dag_ids, watcher.poll, sample_every=SAMPLE_EVERY, drain_s=900
    )
    complete = [p for p in outcome.watched if all(p in got for got in seen.values())]
    q = percentiles([max(got[p] for got in seen.values()) - outcome.watched[p] for p in complete])
    per_sink = {
        name: percentiles([got[p] - outcome.watched[p] for p in got if p in outcome.watched])
        for name, got in seen.items()
    }
    never = len(outcome.watched) - len(complete)
    plot = latency_over_time(
        RESULTS / "sinks.png",
        {
            "all three sinks": [
                (outcome.watched[p], max(got[p] for got in seen.values()) - outcome.watched[p])
                for p in complete
            ],
            **{
                name: [
                    (outcome.watched[p], got[p] - outcome.watched[p])
                    for p in got
                    if p in outcome.watched
                ]
                for name, got in seen.items()
            },
        },
        f"Enrollment to visible in the sinks at {RATE} for {DURATION}",
        target_s=120,
    )
    log(f"plot: {plot}")
    log(
        f"all sinks at {RATE} for {DURATION}: p50 {q['p50']} s, p95 {q['p95']} s, max {q['max']} s "
        f"({len(complete)}/{len(outcome.watched)} samples); "
        f"per sink p95: " + ", ".join(f"{n} {v['p95']} s" for n, v in per_sink.items())
    )
    return {
        "all_sinks_rate": RATE,
        "all_sinks_duration": DURATION,
        "all_sinks_produced": outcome.produced,
        "all_sinks_samples": len(outcome.watched),
        "all_sinks_p50_s": q["p50"],
        "all_sinks_p95_s": q["p95"],
        "all_sinks_max_s": q["max"],
        **{f"{name}_p95_s": v["p95"] for name, v in per_sink.items()},
        "unexplained_records": outcome.unexplained + never,
        "unexplained_offsets": outcome.unexplained,
        "samples_never_visible": never,
        "failed_runs": outcome.failed_runs,
    }


def main() -> int:
    stack_cli.up(quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    config = load_config()
    figures = throughput(cfg, config)
    if os.environ.get("BENCH_SINKS_E2E", "1") != "0":
        figures |= end_to_end(cfg, config)
    print(
        "sinks: "
        + ", ".join(
            f"{k} {v}"
            for k, v in figures.items()
            if k.endswith(("_per_s", "_p50_s", "_p95_s")) or k == "unexplained_records"
        )
    )
    write("sinks", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
