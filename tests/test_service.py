"""The service: sd_notify, watchdog only on progress, SIGHUP reload, SIGTERM drain, the unit file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeseg.service.daemon import Daemon
from edgeseg.service.logs import JournaldFormatter
from edgeseg.service.notify import Notifier, watchdog_interval_s
from edgeseg.sinks.base import Sink
from edgeseg.structures import FrameResult

ROOT = Path(__file__).resolve().parents[1]


class NotifySocket:
    """The service manager's end of sd_notify: a real Unix datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:  # TimeoutError only from Python 3.10
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, prefix: str, timeout: float = 60, after: int = 0) -> int:
        """Index of the first message from ``after`` on that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (_, m) in enumerate(self.messages[after:], after):
                if m.startswith(prefix):
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} after message {after}; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_notifier_sends_the_protocol_fields(notify_socket: NotifySocket) -> None:
    n = Notifier(str(notify_socket.path))
    assert n.ready("warming up") and n.watchdog() and n.status("12 FPS") and n.reloading() and n.stopping()
    notify_socket.wait_for("STOPPING=1", timeout=5)
    lines = [m for _, m in notify_socket.messages]
    assert lines[:4] == ["READY=1", "STATUS=warming up", "WATCHDOG=1", "STATUS=12 FPS"]
    assert "RELOADING=1" in lines and any(m.startswith("MONOTONIC_USEC=") for m in lines)


def test_notifier_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False


@pytest.mark.parametrize(
    "usec, pid, expected",
    [
        ("60000000", None, 30.0), ("60000000", "self", 30.0), ("60000000", "1", None),
        (None, None, None), ("x", None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert watchdog_interval_s() == expected


@pytest.mark.parametrize(
    "level, prefix", [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"), (logging.ERROR, "<3>")]
)
def test_journald_lines_carry_priority(level: int, prefix: str) -> None:
    record = logging.LogRecord("edgeseg.x", level, __file__, 1, "line one\nline two", None, None)
    text = JournaldFormatter("%(name)s: %(message)s").format(record)
    assert text == f"{prefix}edgeseg.x: line one | line two"


def _write_config(path: Path, model: Path, images: Path, out: Path, **postprocess: object) -> None:
    path.write_text(
        f"model:\n  path: {model}\n  imgsz: 320\n  threads: 1\n"
        f"source:\n  uri: {images}\n  loop: true\n"
        f"output:\n  sinks: [jsonl:{out}]\n"
        f"service:\n  stats_interval_s: 1\n  stall_s: 5\n"
        f"engines:\n  pid_file: {path.parent / 'edgeseg.pid'}\n"
        + ("postprocess:\n" + "".join(f"  {k}: {v}\n" for k, v in postprocess.items()) if postprocess else "")
    )


def test_serve_lifecycle_under_a_service_manager(tmp_path: Path, model_dynamic: Path, val_images: Path,
                                                 notify_socket: NotifySocket) -> None:
    from conftest import copy_images

    images = copy_images(val_images, tmp_path / "imgs", 3)
    cfg, out = tmp_path / "config.yaml", tmp_path / "results.jsonl"
    _write_config(cfg, model_dynamic, images, out)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000",
           "JOURNAL_STREAM": "8:1234"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "serve", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = notify_socket.wait_for("READY=1")
        notify_socket.wait_for("WATCHDOG=1", after=ready)
        notify_socket.wait_for("STATUS=", after=ready)
        assert (tmp_path / "edgeseg.pid").read_text().strip() == str(proc.pid)

        # A valid change is applied: RELOADING=1, then READY=1 again.
        _write_config(cfg, model_dynamic, images, out, conf_threshold=0.6)
        mark = len(notify_socket.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING=1", after=mark)
        notify_socket.wait_for("READY=1", after=reloading)

        # An invalid one is refused and the daemon keeps serving (and pinging the watchdog).
        cfg.write_text(cfg.read_text() + "bogus_key: 1\n")
        mark = len(notify_socket.messages)
        proc.send_signal(signal.SIGHUP)
        again = notify_socket.wait_for("READY=1", after=mark)
        notify_socket.wait_for("WATCHDOG=1", after=again)
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    notify_socket.wait_for("STOPPING=1", timeout=5)
    lines = output.splitlines()
    assert any(line.startswith("<6>edgeseg.serve: reloaded") for line in lines), output
    assert any(line.startswith("<3>edgeseg.serve: reload refused") and "bogus_key" in line for line in lines), output
    assert "Traceback" not in output
    results = [json.loads(line) for line in out.read_text().splitlines()]  # appended across the reload
    assert len(results) >= 3 and all(r["schema"] == "edgeseg/frame-result" for r in results)
    assert not (tmp_path / "edgeseg.pid").exists()


class BlockingSink(Sink):
    """Blocks the output thread after ``after`` frames until released: a stuck disk or network."""

    def __init__(self, after: int) -> None:
        self.after, self.count = after, 0
        self.blocked, self.release = threading.Event(), threading.Event()

    def write(self, result: FrameResult) -> None:
        self.count += 1
        if self.count > self.after:
            self.blocked.set()
            self.release.wait(60)


def test_watchdog_is_withheld_while_a_stage_is_stuck(tmp_path: Path, model_dynamic: Path, val_images: Path,
                                                     notify_socket: NotifySocket,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import copy_images

    images = copy_images(val_images, tmp_path / "imgs", 2)
    cfg = tmp_path / "config.yaml"
    _write_config(cfg, model_dynamic, images, tmp_path / "r.jsonl")
    cfg.write_text(cfg.read_text().replace("stall_s: 5", "stall_s: 2"))
    sink = BlockingSink(after=3)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(str(cfg), extra_sinks=lambda _c: [sink], notifier=Notifier(str(notify_socket.path)))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert sink.blocked.wait(60)
        stuck_at = time.monotonic()
        time.sleep(4.5)
        pings = [t for t, m in notify_socket.messages if m == "WATCHDOG=1"]
        assert pings and pings[-1] < stuck_at + 2.6  # pinging stopped once the stall passed stall_s
        sink.release.set()
        time.sleep(1.5)
        assert [t for t, m in notify_socket.messages if m == "WATCHDOG=1"][-1] > stuck_at + 4.5  # resumed
    finally:
        sink.release.set()
        daemon.request_stop()
        thread.join(60)
    assert not thread.is_alive()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt systemd)")
def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "edgeseg.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ProtectSystem=strict" in unit
    rendered = tmp_path / "edgeseg.service"
    rendered.write_text(unit.replace("/opt/edgeseg/venv/bin/edgeseg", str(Path(sys.executable).parent / "edgeseg")))
    proc = subprocess.run(["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_serve_hosts_the_dashboard_and_its_controls_reach_the_pipeline(tmp_path: Path, model_dynamic: Path,
                                                                       val_images: Path) -> None:
    import re
    import urllib.request

    from conftest import copy_images

    images = copy_images(val_images, tmp_path / "imgs", 3)
    cfg, out = tmp_path / "config.yaml", tmp_path / "results.jsonl"
    _write_config(cfg, model_dynamic, images, out)
    cfg.write_text(cfg.read_text() + "dashboard:\n  enabled: true\n  port: 0\n"
                   "adaptive:\n  enabled: true\n  target_fps: 2\n  resolutions: [320, 416]\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "serve", "--config", str(cfg)], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if m := re.search(r"dashboard on (http://\S+/)", line):
                url = m.group(1)
        assert url, "".join(lines)
        threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()

        def call(path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        while not (state := call("api/state")).get("stats", {}).get("frames"):
            time.sleep(0.2)
        call("api/control", {"conf_threshold": 0.7, "resolution": 416})
        time.sleep(2)
        state = call("api/state")
        assert state["controls"]["conf_threshold"] == 0.7 and state["controls"]["resolution"] == 416
        assert state["stats"]["resolution"] == [416, 416]  # the pinned size is the one running
        recent = [json.loads(line) for line in out.read_text().splitlines()[-3:]]
        assert all(i["score"] >= 0.7 for r in recent for i in r["instances"])
        call("api/control", {"paused": True})
        time.sleep(1)
        before = call("api/state")["stats"]["frames"]
        time.sleep(1.5)
        assert call("api/state")["stats"]["frames"] == before
        with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        for family in ("edgeseg_frames_processed_total", "edgeseg_stage_latency_seconds_bucket",
                       "edgeseg_adaptive_switches_total", "edgeseg_telemetry_source_up"):
            assert family in metrics, family
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines)


DEMO = ROOT / "engines" / "demo"


class PacedSink(Sink):
    """Records every result; ``delay_s`` per write is the load the picker sees (the sink stage)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.results: list[FrameResult] = []
        self.lock = threading.Lock()

    def write(self, result: FrameResult) -> None:
        time.sleep(self.delay_s)
        with self.lock:
            self.results.append(result)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def since(self, index: int) -> list[FrameResult]:
        with self.lock:
            return self.results[index:]


def _wait(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_dashboard_change_under_lowered_effort_does_not_keep_the_reduction(tmp_path: Path) -> None:
    """The issue's reproduction, through the daemon's public face (on the repository's demo bundle).

    The picker lowers post-processing effort under load (refinement off, max_detections halved);
    the dashboard then changes the confidence threshold; the load goes. The reduction must go with
    it: the user's threshold is kept and max_detections is back at its full value. (It used to
    stay halved: the dashboard's change replaced the effort-reduced settings, which then became
    the picker's full-effort base.)
    """
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((DEMO / "selftest").glob("*.jpg")):
        (images / p.name).write_bytes(p.read_bytes())
    cfg = tmp_path / "config.yaml"
    # 10 instances at full effort on every demo image (it finds 17+ above 0.05), 5 at fewer-detections.
    cfg.write_text(
        f"model:\n  path: {DEMO}\n  threads: 1\n"
        f"source:\n  uri: {images}\n  loop: true\n"
        f"postprocess:\n  conf_threshold: 0.05\n  max_detections: 10\n  refine:\n    open_px: 1\n"
        f"adaptive:\n  enabled: true\n  latency_budget_ms: 150\n  min_dwell_s: 0\n  min_dwell_frames: 2\n"
        f"  warmup_frames: 0\n  ewma_alpha: 1.0\n  retry_backoff_s: 0\n"
        f"engines:\n  pid_file: {tmp_path / 'edgeseg.pid'}\n"
    )
    sink = PacedSink()
    sink.delay_s = 0.3  # 300 ms a frame: over the 150 ms budget at every rung
    daemon = Daemon(str(cfg), extra_sinks=lambda _c: [sink])
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()

    def effort() -> int:
        return int(daemon.stats().get("adaptive", {}).get("effort", -1))

    try:
        _wait(lambda: effort() == 2, "the picker to lower effort to no-refine+fewer-detections")
        daemon.controls.set_conf_threshold(0.06)
        sink.delay_s = 0.0  # the load is gone
        _wait(lambda: effort() == 0, "the picker to restore full effort")
        mark = sink.count() + 6  # past the frames in flight when effort came back
        _wait(lambda: sink.count() >= mark + 4, "results at full effort")
        recent = sink.since(mark)
        assert daemon.controls.state()["conf_threshold"] == 0.06
    finally:
        daemon.request_stop()
        thread.join(60)
    assert not thread.is_alive()
    assert [len(r.instances) for r in recent] == [10] * len(recent)  # max_detections back at 10, not 5
    assert all(float(s) >= 0.06 for r in recent for s in r.instances.scores)  # the user's threshold stays
