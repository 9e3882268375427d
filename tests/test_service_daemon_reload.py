"""A running ``Daemon`` reloads everything it reads, or refuses whole and keeps what runs.

End to end on the repository's demo bundle: the config file is rewritten and the daemon asked to
reload (as SIGHUP does); the outcome is read where ``engines activate`` reads it (the verdict
beside the pid file, one line) and at the real dashboard's port. The parts are tested alone in
``test_service_reload.py``; this is their wiring in the daemon.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import pytest
from mosquitto import free_port

from edgeseg.flash.daemon import Verdict, read_verdict
from edgeseg.service.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
TOKEN_1 = "first-token-0123456789abcdef"
TOKEN_2 = "second-token-0123456789abcdef"
WAIT_S = 60.0


def _wait(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _get(port: int, token: Optional[str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/state", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Served:
    """A daemon running a config file in a thread, and the file to rewrite."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.images = tmp_path / "imgs"
        self.images.mkdir()
        for p in sorted((DEMO / "selftest").glob("*.jpg")):
            (self.images / p.name).write_bytes(p.read_bytes())
        self.config = tmp_path / "config.yaml"
        self.pid_file = tmp_path / "edgeseg.pid"
        self.port = free_port()
        self.daemon: Optional[Daemon] = None
        self.thread: Optional[threading.Thread] = None

    def write(self, dashboard: str = "", extra: str = "", pid_file: Optional[Path] = None) -> None:
        self.config.write_text(
            f"model:\n  path: {DEMO}\n  threads: 1\n"
            f"source:\n  uri: {self.images}\n  loop: true\n"
            f"dashboard:\n  enabled: true\n  port: {self.port}\n{dashboard}"
            f"engines:\n  pid_file: {pid_file or self.pid_file}\n{extra}"
        )

    def start(self) -> Daemon:
        self.daemon = Daemon(str(self.config))
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        _wait(lambda: read_verdict(self.pid_file) is not None and self.daemon is not None
              and self.daemon.session.generation is not None, "the daemon to start")
        return self.daemon

    def reload(self) -> Verdict:
        """Ask for a reload and return its verdict (the one after those written so far)."""
        assert self.daemon is not None
        before = read_verdict(self.pid_file)
        count = before.reloads if before is not None else 0
        self.daemon.request_reload()
        _wait(lambda: (read_verdict(self.pid_file) or before or Verdict(0, -1, False, "")).reloads > count,
              "the reload's verdict")
        verdict = read_verdict(self.pid_file)
        assert verdict is not None
        return verdict

    def frames(self) -> int:
        assert self.daemon is not None
        return int(self.daemon.stats().get("frames", 0))

    def stop(self) -> None:
        if self.daemon is not None and self.thread is not None:
            self.daemon.request_stop()
            self.thread.join(WAIT_S)
            assert not self.thread.is_alive()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.stop()


def _token(token: str) -> str:
    return f"  token: {token}\n"


def test_a_rotated_token_is_in_force_at_reload_and_the_old_one_revoked(served: Served) -> None:
    served.write(_token(TOKEN_1))
    served.start()
    assert _get(served.port, TOKEN_1) == 200
    served.write(_token(TOKEN_2))
    verdict = served.reload()
    assert verdict.ok, verdict.message
    assert _get(served.port, TOKEN_1) == 401
    assert _get(served.port, TOKEN_2) == 200


def test_a_new_port_is_served_and_the_old_one_closed(served: Served) -> None:
    served.write(_token(TOKEN_1))
    served.start()
    old = served.port
    served.port = free_port()
    served.write(_token(TOKEN_1))
    verdict = served.reload()
    assert verdict.ok, verdict.message
    assert _get(served.port, TOKEN_1) == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old), timeout=5).close()


def _refused_and_kept(served: Served, verdict: Verdict, *words: str) -> None:
    """The reload was refused in one line naming ``words``, and what ran runs on unchanged."""
    assert not verdict.ok
    assert "\n" not in verdict.message and verdict.message.startswith("reload refused: ")
    for word in words:
        assert word in verdict.message, verdict.message
    assert served.daemon is not None and served.daemon.reloads == 0
    assert _get(served.port, TOKEN_1) == 200  # the running token, on the running port
    frames = served.frames()
    _wait(lambda: served.frames() > frames + 2, "frames after the refused reload")


def test_a_taken_port_refuses_the_reload_and_the_running_one_serves_on(served: Served) -> None:
    served.write(_token(TOKEN_1))
    served.start()
    running = served.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        served.port = taken.getsockname()[1]
        served.write(_token(TOKEN_2))
        verdict = served.reload()
        served.port = running
        _refused_and_kept(served, verdict, "dashboard.port")


def test_an_unreadable_token_file_refuses_the_reload(served: Served) -> None:
    token_file = served.tmp_path / "dashboard.token"
    token_file.write_text(TOKEN_1 + "\n")
    served.write(f"  token_file: {token_file}\n")
    served.start()
    token_file.unlink()
    token_file.mkdir()  # a folder where the token file was
    _refused_and_kept(served, served.reload(), "dashboard.token_file")


def test_an_invalid_mqtt_section_refuses_the_reload(served: Served) -> None:
    served.write(_token(TOKEN_1))
    served.start()
    served.write(_token(TOKEN_1), extra="mqtt:\n  uri: ftp://broker:21\n")
    _refused_and_kept(served, served.reload(), "mqtt.uri")


def test_a_field_only_a_restart_can_change_refuses_the_reload_and_says_so(served: Served) -> None:
    served.write(_token(TOKEN_1))
    served.start()
    served.write(_token(TOKEN_2), pid_file=served.tmp_path / "other.pid")
    _refused_and_kept(served, served.reload(), "engines.pid_file", "restart")
