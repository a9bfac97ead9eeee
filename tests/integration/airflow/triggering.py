"""Running a trigger as the triggerer would, and finding the runs it started: shared by the
trigger tests."""

from __future__ import annotations

import asyncio


async def next_event(queue: asyncio.Queue, timeout: float):
    """The trigger's next event, or None when none came within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        return None


async def run_trigger(trigger, queue: asyncio.Queue) -> None:
    """Runs the trigger as the triggerer would, handing its events over (a timeout while waiting
    for one must not cancel the trigger itself)."""
    async for event in trigger.run():
        await queue.put(event)


def new_runs(client, dag_id: str, before: set[str]) -> list[dict]:
    """The DAG's newest runs not in ``before`` (the API pages oldest first by default)."""
    runs = client.http.get(
        f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 100}
    ).json()["dag_runs"]
    return [r for r in runs if r["dag_run_id"] not in before]
