"""The unit tier reads the embedded configuration, as users get it: not the suite's copy with its
own gates of timeliness (``tests/conftest.py``), which the tiers on services use."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def embedded_configuration(monkeypatch):
    monkeypatch.delenv("ENROLLMENT_CONFIG", raising=False)
