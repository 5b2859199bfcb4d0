"""Serve a registry on ``/metrics`` over HTTP, bound to 127.0.0.1 unless told otherwise.

prometheus_client's own server binds every interface by default (REFERENCE "Reliability
notes"); this wrapper defaults to loopback and returns a handle that can be closed.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, start_http_server

from monitor.closing import Closing

DEFAULT_PORT = 9464


class Exporter(Closing):
    """A running ``/metrics`` HTTP server; close it with :meth:`close` or a ``with`` block."""

    def __init__(self, server: object, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port  # type: ignore[attr-defined]
        """The bound port (the real one when 0 was asked for)."""

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the socket; safe to call twice."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]
        self._thread.join(timeout)


def start_exporter(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> Exporter:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port (read it from ``Exporter.port``). Raises ``OSError`` when the
    address is taken.
    """
    started = start_http_server(port, addr=host, registry=registry)
    if not isinstance(started, tuple):  # prometheus_client < 0.17 returned nothing to close
        raise RuntimeError("prometheus_client >= 0.17 is needed to close the exporter")
    server, thread = started
    return Exporter(server, thread, host)
