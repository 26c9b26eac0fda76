"""Running the app on uvicorn: in the foreground (``cprs serve``) or on a background thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from .observe import configure_request_log


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8091, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (one process: the model is loaded once and batches all clients).

    Request log lines (see :mod:`.observe`) go to stderr at ``log_level``.
    """
    configure_request_log(log_level)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)


class BackgroundServer:
    """A real uvicorn server for ``app`` on a background thread, as a context manager.

    ``port=0`` picks a free port; :attr:`url` is the address once entered.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.port = port
        self._thread = threading.Thread(target=self.server.run, name="cprs-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self._thread.join()
