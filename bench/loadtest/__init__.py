"""The gridlock test: a steady load on the running stack and Airflow, faults injected on a
timeline, and a report that ends with the ledger's verdict.

``python -m bench.loadtest`` (``make loadtest``) runs it; ``__main__`` says how. The modules:

- ``__main__``: the command line and ``main`` (the run, its summary and the result files);
- ``faults``: the ``--fault`` specs and durations, the injector that stops and starts services;
- ``sampling``: the lag and sink backlog sampled while the load runs;
- ``verdicts``: the accounting after the run (accounted, late or lost; hostile messages
  quarantined; failed tasks, warehouse cycles and cost);
- ``reporting``: the plots and the text of ``report.md``.

Importing the package is light: the names below are looked up in their module when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that holds it
_HOMES = {
    "main": "__main__",
    **dict.fromkeys(
        (
            "CELERY_WORKER_RESTART_S",
            "SERVICES_THAT_MAY_GO_DOWN",
            "Fault",
            "Injector",
            "busy_celery_workers",
            "busy_workers",
            "seconds",
        ),
        "faults",
    ),
    **dict.fromkeys(("LAG_EVERY_S", "SINK_LAG_EVERY_S", "Sampler", "Samples"), "sampling"),
    **dict.fromkeys(
        ("classify", "cost_estimate", "failed_task_counts", "hostile_verdict", "verdict"),
        "verdicts",
    ),
    **dict.fromkeys(("plots", "report"), "reporting"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
