"""The daemon and a real Mosquitto broker: a SIGKILLed daemon sends what was never acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_images
from mosquitto import MISSING_REASON, MOSQUITTO, Mosquitto, Subscriber

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=MISSING_REASON)


def _config(path: Path, model: Path, images: Path, broker: str, queue: Path, jsonl: Path) -> Path:
    path.write_text(
        f"model:\n  path: {model}\n  imgsz: 320\n  threads: 1\n"
        f"source:\n  uri: {images}\n  loop: true\n"
        f"output:\n  sinks: [jsonl:{jsonl}]\n"
        f"mqtt:\n  uri: {broker}\n  device_id: cam1\n  reconnect_min_s: 1\n  reconnect_max_s: 1\n"
        f"  queue:\n    path: {queue}\n"
        f"service:\n  stats_interval_s: 1\n"
        f"engines:\n  pid_file: {path.parent / 'edgeseg.pid'}\n"
    )
    return path


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edgeseg", "serve", "--config", str(config)], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_sigkilled_daemon_delivers_its_queue_after_restart(tmp_path: Path, model_dynamic: Path,
                                                           val_images: Path) -> None:
    first = copy_images(val_images, tmp_path / "first", 3)
    second = copy_images(val_images, tmp_path / "second", 2)
    queue = tmp_path / "queue.db"
    with Mosquitto(tmp_path / "broker") as broker:
        subscriber = Subscriber(broker.uri, ("edgeseg/cam1/detections",), client_id="test-sub")
        try:
            broker.stop()  # the daemon starts with the broker away: everything goes to the disk queue
            jsonl = tmp_path / "first.jsonl"
            daemon = _serve(_config(tmp_path / "c1.yaml", model_dynamic, first, broker.uri, queue, jsonl))
            deadline = time.monotonic() + 120
            while len(_lines(jsonl)) < 8 and time.monotonic() < deadline:
                time.sleep(0.1)
            daemon.send_signal(signal.SIGKILL)
            out, _ = daemon.communicate(timeout=30)
            written = [r["frame_id"] for r in _lines(jsonl)]
            assert len(written) >= 8, out
            # Each frame goes to the JSONL sink and then to the queue: all but possibly the last
            # frame written before the kill are in the queue.
            expected = set(written[:-1])

            broker.start()
            jsonl2 = tmp_path / "second.jsonl"
            daemon = _serve(_config(tmp_path / "c2.yaml", model_dynamic, second, broker.uri, queue, jsonl2))
            try:
                deadline = time.monotonic() + 60
                got: set[int] = set()
                while time.monotonic() < deadline and not expected <= got:
                    got = {p["frame_id"] for p in subscriber.payloads() if p["source"] == str(first)}
                    time.sleep(0.2)
            finally:
                daemon.send_signal(signal.SIGTERM)
                out2, _ = daemon.communicate(timeout=60)
            assert expected <= got, f"lost {sorted(expected - got)}; daemon said:\n{out2}"
            assert daemon.returncode == 0, out2
            assert any(p["source"] == str(second) for p in subscriber.payloads())  # and it goes on publishing
        finally:
            subscriber.close()
