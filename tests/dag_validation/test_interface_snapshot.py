"""What users see does not change by accident: DAG ids, task ids, params and docs (the serialised
DAGs), the configuration in force, table schemas, object names, the command lines and the
operator page's routes are as ``tests/snapshot/`` holds them. A change meant is a reviewed diff:
``make snapshot`` writes the snapshot again."""

from __future__ import annotations

import difflib

import pytest

from tests.snapshot.take import FILES, HERE, take


@pytest.fixture(scope="module")
def taken() -> dict[str, str]:
    return take()


@pytest.mark.parametrize("name", FILES)
def test_what_users_see_is_as_the_snapshot_holds(taken, name):
    held = (HERE / name).read_text()
    if taken[name] != held:
        diff = "".join(
            difflib.unified_diff(
                held.splitlines(keepends=True),
                taken[name].splitlines(keepends=True),
                f"tests/snapshot/{name}",
                "now",
                n=1,
            )
        )
        pytest.fail(f"{name} differs from the snapshot (make snapshot, if meant):\n{diff[:4000]}")
