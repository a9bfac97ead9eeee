"""An alert callback for tests: appends each alert's payload to the JSON-lines file named by
``ENROLLMENT_TEST_ALERTS`` (what a real callback would send to a pager or a chat)."""

from __future__ import annotations

import json
import os


def record(payload: dict) -> None:
    with open(os.environ["ENROLLMENT_TEST_ALERTS"], "a", encoding="utf-8") as out:
        out.write(json.dumps(payload, default=str) + "\n")
