"""The pipeline's Airflow pools as the file ``airflow pools import`` reads (``pools:`` of the
configuration), for the local stack, docker-compose and a deployment alike:

    python -m enrollment.pools > pools.json && airflow pools import pools.json
"""

from __future__ import annotations

import json
import sys
from typing import TypedDict

from enrollment.config import PipelineConfig, load_config


class PoolEntry(TypedDict):
    slots: int
    description: str
    include_deferred: bool


def pools_file(config: PipelineConfig | None = None) -> dict[str, PoolEntry]:
    """``{name: {slots, description, include_deferred}}``: deferred tasks hold no slot (a sensor
    waiting in the triggerer must not keep the line's slots)."""
    config = config or load_config()
    return {
        p.name: {"slots": p.slots, "description": p.description, "include_deferred": False}
        for p in config.pools.values()
    }


if __name__ == "__main__":
    json.dump(pools_file(), sys.stdout, indent=2)
    sys.stdout.write("\n")
