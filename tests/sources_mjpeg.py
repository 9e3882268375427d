"""A real MJPEG-over-HTTP server on loopback, for the live-source tests.

It serves ``multipart/x-mixed-replace`` JPEG frames as IP cameras do. Every frame is a flat
grey image whose level is ``base_level`` plus a small counter, so a test can tell which server
(before or after a restart) a frame came from. ``stop()`` closes the open streams, so a client
sees a real drop; a new server can then be started on the same port.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import cv2
import numpy as np

BOUNDARY = "edgesegframe"
FRAME_SIZE = (48, 64)  # height, width
FRAME_INTERVAL_S = 0.02
#: The counter added to ``base_level`` wraps at this, so levels of two servers never overlap.
LEVEL_SPAN = 40


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed right after it is picked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    base_level = 0
    stopping: threading.Event


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Quiet: request lines would clutter the test output."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        count = 0
        while not self.server.stopping.is_set():
            level = self.server.base_level + count % LEVEL_SPAN
            ok, jpeg = cv2.imencode(".jpg", np.full((*FRAME_SIZE, 3), level, np.uint8))
            assert ok
            data = jpeg.tobytes()
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
            try:
                self.wfile.write(head.encode() + data + b"\r\n")
                self.wfile.flush()
            except OSError:  # the client went away
                return
            count += 1
            time.sleep(FRAME_INTERVAL_S)


class MjpegServer:
    """``with MjpegServer(port, base_level) as server:`` serves at ``server.url`` until the end."""

    def __init__(self, port: int = 0, base_level: int = 0) -> None:
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.base_level = base_level
        self._httpd.stopping = threading.Event()
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/stream"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """End every open stream and stop listening; the port is free again afterwards."""
        if self._httpd.stopping.is_set():
            return
        self._httpd.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MjpegServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
