"""Kill one of Ray Data's map actors (``cprs batch`` workers) while a job runs: used by the tests and the GPU benchmark."""

from __future__ import annotations

import os
import signal
import threading
from types import TracebackType


def map_worker_pids() -> list[int]:
    """Processes of the live Ray Data map actors (the GCS actor table; Ray's public state API needs the dashboard)."""
    from ray._private.state import actors

    return [
        actor["Pid"] for actor in actors().values()
        if "MapWorker" in actor["ActorClassName"] and actor["State"] == "ALIVE"
    ]


class MapWorkerKiller:
    """SIGKILLs the first map actor seen alive, from a thread that polls the actor table while the block runs.

    Waiting for a committed block before killing races on small jobs: by the time the driver commits the first
    block, the other actors may have finished everything and Ray Data may have stopped them. Polling kills a worker
    as soon as it has loaded its model, while its blocks are pending or in flight.
    """

    def __init__(self, poll_s: float = 0.02) -> None:
        self.pid: int | None = None
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hunt, name="map-worker-killer", daemon=True)

    def __enter__(self) -> MapWorkerKiller:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _hunt(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                pids = map_worker_pids()
            except Exception:  # Ray not started yet in this driver, or the GCS is busy: look again
                continue
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.pid = pids[0]
                return
