"""The load test's CPU accounting on real processes: a process that ends between two samples is
counted (through its parent's reaped children's time), and one that lives across samples is not
counted twice; components fall into the groups a user sizes with."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

from bench.cpu import CpuSampler, group

MARK = "cpu-accounting-test-burn"


def _burn(seconds: float) -> list[str]:
    """A child that uses ``seconds`` of CPU, recognisable by its command line."""
    return [
        sys.executable,
        "-c",
        f"import time  # {MARK}\nwhile time.process_time() < {seconds}: pass",
    ]


def _sampler() -> CpuSampler:
    sampler = CpuSampler()
    me = os.getpid()
    sampler.component = lambda proc, cmdline, parents: (  # type: ignore[method-assign]
        "child" if MARK in cmdline else "me" if proc.pid == me else "rest"
    )
    sampler.started = time.monotonic()  # counting: a process born from now on is charged whole
    sampler.sample()
    return sampler


def test_a_process_that_ends_between_two_samples_is_charged_to_its_parent():
    sampler = _sampler()
    subprocess.run(_burn(0.4), check=True)  # born, burns, ends and is reaped between samples
    used = sampler.sample()
    assert "child" not in used
    assert 0.35 <= used.get("me", 0.0) <= 0.8, used


def test_a_process_seen_alive_is_not_counted_twice_once_it_ends():
    sampler = _sampler()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(_burn(0.6))
    time.sleep(0.35)
    first = sampler.sample()
    assert child.wait(30) == 0
    second = sampler.sample()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    charged = sum(u.get("child", 0.0) + u.get("me", 0.0) for u in (first, second))
    # The child's CPU once (this process's own, asleep meanwhile, adds a few hundredths).
    assert abs(charged - used) < 0.08, (used, first, second)


def test_components_are_grouped_as_a_user_sizes_them():
    assert group("tasks: ingest land") == group("airflow scheduler") == "pipeline"
    assert group("airflow metadata db (postgresql)") == "pipeline"
    assert group("airflow celery broker (redis)") == "pipeline"
    assert group("bigquery emulator") == group("kafka") == "services"
    assert group("simulator") == group("load test (watchers)") == "load"
    assert group("other") == "other"
