"""A minimal HTTP alert receiver on 127.0.0.1 for the demo and tests (stdlib only).

It accepts JSON POSTs on any path (Alertmanager's ``/api/v2/alerts`` or a webhook) and keeps
them in ``received`` as ``(path, body)``; it is not a production receiver.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AlertReceiver:
    """``AlertReceiver().start()`` serves on an ephemeral loopback port until ``close()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.received: list[tuple[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                receiver.received.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        address = self.server.server_address
        return f"http://{address[0]!s}:{address[1]}"

    def start(self) -> AlertReceiver:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
