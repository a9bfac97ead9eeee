"""Shared by the benchmarks: machine facts and where results go."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: version(name) for name in ("pyarrow", "pandas", "numpy", "confluent-kafka", "msgspec")},
    }


def write(name: str, result: dict, merge: bool = False) -> Path:
    """Writes the figures with the machine's facts; ``merge`` keeps the file's other figures
    (two benchmarks share ingest.json)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    previous = json.loads(path.read_text()) if merge and path.exists() else {}
    path.write_text(json.dumps(previous | result | {"machine": machine()}, indent=2) + "\n")
    print(f"written {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}", file=sys.stderr)
    return path


def pin_to_one_core() -> None:
    """'On one core' honestly: this process and Arrow's thread pools use one CPU."""
    import pyarrow as pa

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
