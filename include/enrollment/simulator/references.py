"""One valid event per contract and schema version, from the simulator, written to
``enrollment/contracts/references.json``: the validation guard's reference (a validator that
raises on them is broken, not the input) and examples for the upstream teams.

``python -m enrollment.simulator.references`` (``make schemas``) writes the file again; a test
checks that every contract has its reference and that each validates.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from enrollment.contracts.spec import EVENT_TYPES, SCHEMA_VERSIONS
from enrollment.ingest.validation.validate import REFERENCES_FILE
from enrollment.simulator.generator import Simulator


def references(seed: int = 2027) -> list[dict[str, Any]]:
    wanted = {(t, v) for t in EVENT_TYPES for v in SCHEMA_VERSIONS[t]}
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for message in Simulator(seed=seed, initial_partners=20).take(5_000):
        event = json.loads(message.value)
        key = (event["event_type"], event["schema_version"])
        if key in wanted and key not in found and message.expected["outcome"] == "valid":
            found[key] = event
    missing = wanted - set(found)
    if missing:
        raise SystemExit(f"the simulator made no valid event of {sorted(missing)}")
    return [found[key] for key in sorted(found)]


def main() -> int:
    REFERENCES_FILE.write_text(json.dumps(references(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {REFERENCES_FILE.parent.name}/{REFERENCES_FILE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
