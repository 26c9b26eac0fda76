"""The cprs HTTP compression service (``cprs serve``): upstream-compatible API plus richer endpoints.

Needs the ``server`` extra: ``pip install -e '.[server]'``.
"""

from .app import create_app
from .runner import BackgroundServer, serve
from .settings import ServerSettings

__all__ = ["BackgroundServer", "ServerSettings", "create_app", "serve"]
