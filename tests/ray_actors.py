"""Find Ray Data's map actors (``cprs batch`` workers) to kill one: used by the tests and the GPU benchmark."""

from __future__ import annotations


def map_worker_pids() -> list[int]:
    """Processes of the live Ray Data map actors (the GCS actor table; Ray's public state API needs the dashboard)."""
    from ray._private.state import actors

    return [
        actor["Pid"] for actor in actors().values()
        if "MapWorker" in actor["ActorClassName"] and actor["State"] == "ALIVE"
    ]
