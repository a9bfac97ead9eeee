"""What the load test samples while the load runs: each region's pending records and the offsets
produced and committed (every 5 s), each sink's batches behind its watermark (every 30 s). The
time series the report plots."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.load import log
from enrollment.clients.kafka import pending_ranges
from enrollment.sync.plan import backlogs
from enrollment.sync.run import SyncRun

LAG_EVERY_S, SINK_LAG_EVERY_S = 5.0, 30.0


@dataclass
class Samples:
    """The time series the report plots."""

    lag: list[tuple[float, str, int]] = field(default_factory=list)  # (s, region, pending)
    offsets: list[tuple[float, int, int]] = field(
        default_factory=list
    )  # (s, produced so far, committed so far)
    sinks: list[tuple[float, str, int]] = field(default_factory=list)  # (s, sink, batches behind)


class Sampler:
    def __init__(self, cfg, config, run: SyncRun, samples: Samples):
        self.cfg, self.config, self.run, self.samples = cfg, config, run, samples
        self.next_lag = self.next_sinks = 0.0
        self.base: tuple[int, int] | None = None

    def __call__(self, elapsed: float) -> None:
        if elapsed >= self.next_lag:
            self.next_lag = elapsed + LAG_EVERY_S
            try:
                ends = committed = 0
                for region in self.config.regions:
                    ranges = pending_ranges(
                        self.cfg.kafka,
                        self.config.consumer_group,
                        region.topic,
                        region.partitions,
                        timeout=3,
                    )
                    self.samples.lag.append(
                        (elapsed, region.code, sum(end - start for _, start, end in ranges))
                    )
                    ends += sum(end for _, _, end in ranges)
                    committed += sum(start for _, start, _ in ranges)
                self.base = self.base or (ends, committed)
                self.samples.offsets.append(
                    (elapsed, ends - self.base[0], committed - self.base[1])
                )
            except Exception as exc:
                log(f"lag sample skipped: {type(exc).__name__}")
        if elapsed >= self.next_sinks:
            self.next_sinks = elapsed + SINK_LAG_EVERY_S
            try:
                every = backlogs(self.run.warehouse, self.run.bucket.name, self.config)
                for sink, plans in every.items():
                    self.samples.sinks.append(
                        (elapsed, sink, sum(len(p.batches) for p in plans.values()))
                    )
            except Exception as exc:
                log(f"sink backlog sample skipped: {type(exc).__name__}")
