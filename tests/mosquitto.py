"""A real Mosquitto broker on loopback, a counting subscriber, and a publisher child process.

``Mosquitto`` runs the Debian package's ``mosquitto`` binary on a free 127.0.0.1 port with a
generated config (optionally a password file made with ``mosquitto_passwd``, optionally a TLS
listener) and can be stopped and started again on the same port. Its persistence is on, so a
subscriber's persistent session (and the messages queued for it) survives a broker restart:
the subscriber counts what the publisher delivered, not what it happened to be connected for.

``Subscriber`` is a real paho client that records every message of its topics.

Run as a script, this module is the publisher child of the SIGKILL tests and the benchmark:

    python tests/mosquitto.py --uri mqtt://127.0.0.1:PORT --queue Q.db --device cam \\
        --start 0 --count 100 [--rate 200] [--hold]

It prints ``queued <frame_id>`` after each ``write`` returned (the message is then on disk),
``drained`` once the queue is empty, and with ``--hold`` stays up until it is killed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MISSING_REASON = "mosquitto not installed (apt-get install -y mosquitto)"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
CLASS_NAMES = ("person", "car", "dog")
IMAGE_SIZE = (48, 64)  # (height, width)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed right after it is picked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Generate a CA, a server certificate (SAN IP 127.0.0.1) and a client certificate with openssl."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgeseg test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "edgeseg-test-client")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        extra = ["-extfile", "san.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *extra)
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem",
                    folder / "client.key")


class Mosquitto:
    """``with Mosquitto(workdir) as broker:`` a broker at ``broker.uri`` until the end.

    Args:
        workdir: config, log, password file and persistence go here.
        users: user name to password; when given, anonymous clients are refused.
        tls: serve TLS (client certificates required) instead of plain MQTT.
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: TlsFiles | None = None):
        if MOSQUITTO is None:
            raise RuntimeError(MISSING_REASON)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.uri = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            "persistence true",
            f"persistence_location {workdir}/",
            "max_queued_messages 0",  # no limit on what a persistent session keeps for a subscriber
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to user mosquitto
        ]
        if users:
            if MOSQUITTO_PASSWD is None:
                raise RuntimeError("mosquitto_passwd not installed (apt-get install -y mosquitto)")
            passwd = workdir / "passwd"
            for i, (user, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run([MOSQUITTO_PASSWD, *create, "-b", str(passwd), user, password], check=True,
                               capture_output=True)
            lines.append(f"password_file {passwd}")
        if tls:
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                      "require_certificate true"]
        self.config_path.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start on ``self.port`` and wait until it accepts connections."""
        if self.running:
            return
        assert MOSQUITTO is not None
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (it saves its persistence) and wait; the port is free afterwards."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case it was paused
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is acknowledged (messages pile up in flight)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Subscriber:
    """A paho client recording every message on ``topics``, with a persistent session (QoS 1).

    The session (client id ``client_id``, clean_session False) survives broker restarts, so
    messages published while this client is reconnecting are kept for it by the broker.
    """

    def __init__(self, uri: str, topics: tuple[str, ...], client_id: str, clean: bool = False,
                 tls: TlsFiles | None = None):
        import paho.mqtt.client as mqtt

        host, port = uri.split("://")[1].rsplit(":", 1)
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []  # topic, payload, retain
        self._frame_ids: list[int] = []  # of the detections, parsed once on arrival
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(host, int(port), keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(START_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"subscriber could not subscribe at {uri}")

    def _on_connect(self, client, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, message):  # type: ignore[no-untyped-def]
        payload = bytes(message.payload)
        frame_id = json.loads(payload)["frame_id"] if message.topic.endswith("/detections") else None
        with self._lock:
            self.messages.append((message.topic, payload, bool(message.retain)))
            if frame_id is not None:
                self._frame_ids.append(int(frame_id))

    def payloads(self, topic_suffix: str = "/detections") -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(topic_suffix)]

    def frame_ids(self) -> list[int]:
        """Frame ids of the detections received, in arrival order (duplicates kept)."""
        with self._lock:
            return list(self._frame_ids)

    def wait_for_ids(self, expected: set[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expected <= set(self.frame_ids()):
                return True
            time.sleep(0.05)
        return expected <= set(self.frame_ids())

    def wait_for(self, topic_suffix: str, payload: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(t.endswith(topic_suffix) and p == payload for t, p, _ in self.messages):
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_occurrences(ids: list[int]) -> list[int]:
    """``ids`` without repeats, each at its first arrival (duplicates are allowed, losses are not)."""
    seen: set[int] = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def synthetic_result(frame_id: int, size: tuple[int, int] = IMAGE_SIZE, instances: int = 2):  # type: ignore[no-untyped-def]
    """A small FrameResult with ``instances`` masked instances, built from edgeseg.structures."""
    from edgeseg.structures import Frame, FrameResult, Instances

    height, width = size
    boxes, masks, regions = [], [], []
    for k in range(instances):
        x0, y0 = (3 + 7 * k) % (width - 12), (2 + 5 * k) % (height - 10)
        crop = np.zeros((10, 12), bool)
        crop[1:9, 2 + k % 3 : 11] = True
        boxes.append([x0 + 0.5, y0 + 0.5, x0 + 12.0, y0 + 10.0])
        masks.append(crop)
        regions.append([x0, y0, x0 + 12, y0 + 10])
    inst = Instances(
        image_size=size,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.linspace(0.9, 0.5, instances).astype(np.float32),
        class_ids=(np.arange(instances) % len(CLASS_NAMES)).astype(np.int32),
        class_names=CLASS_NAMES,
        masks=tuple(masks),
        mask_boxes=np.array(regions, np.int32).reshape(-1, 4),
    )
    frame = Frame(image=np.zeros((*size, 3), np.uint8), frame_id=frame_id, source="rtsp://cam/stream",
                  timestamp=1.7e9 + frame_id / 30)
    return FrameResult(frame=frame, instances=inst, model="test-model", resolution=(320, 320),
                       latency_ms={"infer": 4.2})


def _child_main(argv: list[str]) -> int:
    """The publisher child: queue frames ``start .. start+count-1`` through an MqttSink."""
    sys.path.insert(0, str(ROOT))
    from edgeseg.config.mqtt import MqttConfig
    from edgeseg.sinks.mqtt import MqttSink

    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--device", default="child")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="frames per second; 0 = as fast as possible")
    parser.add_argument("--hold", action="store_true", help="stay up after draining until killed")
    args = parser.parse_args(argv)
    config = MqttConfig(uri=args.uri, device_id=args.device, reconnect_min_s=1, reconnect_max_s=2,
                        queue={"path": args.queue})
    sink = MqttSink(config)
    print("started", flush=True)
    t0 = time.monotonic()
    for i in range(args.count):
        if args.rate > 0:
            time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
        sink.write(synthetic_result(args.start + i))
        print(f"queued {args.start + i}", flush=True)
    while not sink.wait_drained(1.0):  # until the broker has acknowledged everything (or we are killed)
        pass
    print("drained", flush=True)
    while args.hold:
        time.sleep(1)
    sink.close()
    return 0


def start_child(uri: str, queue: Path, *, start: int = 0, count: int = 0, rate: float = 0.0, hold: bool = False,
                device: str = "child") -> subprocess.Popen[str]:
    """The publisher child as a subprocess (stdout: its ``queued N`` / ``drained`` lines; stderr: ``<queue>.log``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--uri", uri, "--queue", str(queue), "--device", device,
           "--start", str(start), "--count", str(count), "--rate", str(rate)]
    if hold:
        cmd.append("--hold")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(f"{queue}.log", "a") as log:  # stderr to a file: a pipe nobody reads could block the child
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)


class ChildOutput:
    """Reads a child's stdout in a thread: the last queued frame id and whether it drained."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.last_queued = -1
        self.queued = 0
        self.started = threading.Event()
        self.drained = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "queued":
                self.last_queued = int(rest)
                self.queued += 1
            elif word == "started":
                self.started.set()
            elif word == "drained":
                self.drained.set()

    def wait_queued(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.queued < count and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.01)
        return self.queued >= count

    def kill(self) -> None:
        """SIGKILL and reap: no clean-up, no ``offline``, whatever is in flight stays unacknowledged."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._thread.join(STOP_TIMEOUT_S)



if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
