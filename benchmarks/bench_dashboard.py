"""Dashboard: what one viewer costs the pipeline, in frames per second.

One real pipeline (the COCO-trained yolov8n-seg of ../shared/realdata, dynamic ONNX at --imgsz,
over --images real COCO val2017 images in a loop) runs for the whole benchmark with a
``DashboardSink`` attached and a ``DashboardServer`` listening, as in the daemon. Windows of
--seconds alternate between no viewer and one viewer (one MJPEG stream at the configured
stream_fps and one SSE connection, read by plain socket clients in this process, which stand in
for a browser on another machine), --rounds times each, so slow drifts of a shared machine fall
on both sides. FPS per window = frames finished in the window / its length.

    .venv/bin/python benchmarks/bench_dashboard.py                      # 320, 4 rounds of 10 s
    .venv/bin/python benchmarks/bench_dashboard.py --imgsz 640 --rounds 6 --json

Two figures, each against the target of at most 5 %:
  FPS cost  100 * (1 - viewer FPS / no-viewer FPS), the median over the rounds of each pair of
            adjacent windows (pairs cancel the drift of a machine shared with other jobs);
  CPU cost  100 * (viewer CPU per frame / no-viewer CPU per frame - 1), this process's CPU time
            (pipeline, ONNX Runtime pool, dashboard threads and the in-process viewer clients)
            per finished frame: what a CPU-bound device loses, and far less noisy than FPS on a
            shared machine.
The pipeline runs with the daemon's default thread priorities (--no-priority to turn them off).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import MODEL_DYNAMIC, VAL_IMAGES, copy_images  # noqa: E402 - tests/ is put on the path first
from dashboard_controls import RecordingControls  # noqa: E402

from edgeseg.app import build_processor  # noqa: E402
from edgeseg.config import parse_config  # noqa: E402
from edgeseg.config.dashboard import DashboardConfig  # noqa: E402
from edgeseg.dashboard import DashboardServer, DashboardSink  # noqa: E402
from edgeseg.model import load_model  # noqa: E402
from edgeseg.pipeline.runner import Pipeline  # noqa: E402
from edgeseg.service.stats import snapshot  # noqa: E402
from edgeseg.sources import open_source  # noqa: E402
from edgeseg.sources.base import SourceOptions  # noqa: E402

TARGET_COST_PERCENT = 5.0
WARMUP_S = 5.0
BOUNDARY = b"--edgesegframe\r\n"


class Viewer:
    """One MJPEG and one SSE connection, read as fast as they come, counting what arrives."""

    def __init__(self, port: int):
        self.port = port
        self.frames = 0
        self.events = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, args=("/stream.mjpg", BOUNDARY, "frames"), daemon=True),
            threading.Thread(target=self._read, args=("/events", b"event: stats", "events"), daemon=True),
        ]

    def _read(self, path: str, marker: bytes, counter: str) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.settimeout(1.0)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            tail = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(1 << 16)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                self.bytes += len(chunk)
                window = tail + chunk
                setattr(self, counter, getattr(self, counter) + window.count(marker) - tail.count(marker))
                tail = window[-len(marker):]

    def __enter__(self) -> Viewer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


class Window:
    """Frames, wall time and this process's CPU time over one measuring window."""

    def __init__(self, pipeline: Pipeline, seconds: float):
        process = psutil.Process()
        c0, t0, cpu0 = pipeline.counters.processed, time.perf_counter(), sum(process.cpu_times()[:2])
        time.sleep(seconds)
        self.frames = pipeline.counters.processed - c0
        self.wall_s = time.perf_counter() - t0
        self.cpu_s = sum(process.cpu_times()[:2]) - cpu0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1e3 * self.cpu_s / max(self.frames, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    for path in (MODEL_DYNAMIC, VAL_IMAGES):
        if not path.exists():
            raise SystemExit(f"bench_dashboard: real material missing: {path} (expected ../shared/realdata)")
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    folder = copy_images(VAL_IMAGES, work / "images", args.images)
    config = parse_config({"model": {"imgsz": args.imgsz}})
    model = load_model(MODEL_DYNAMIC, imgsz=args.imgsz, threads=args.threads)
    processor = build_processor(config, model)
    source = open_source(str(folder), SourceOptions(loop=True))
    dashboard = DashboardConfig(port=0, stream_fps=args.stream_fps, jpeg_quality=args.jpeg_quality)
    feed = DashboardSink.from_config(dashboard)
    pipeline = Pipeline(source, processor, [feed], inference_priority=args.priority)
    started = time.monotonic()
    server = DashboardServer(dashboard, feed, RecordingControls(processor), lambda: snapshot(pipeline, model, started))
    windows: dict[str, list[Window]] = {"none": [], "viewer": []}
    delivered: list[dict[str, float]] = []
    with server:
        pipeline.start()
        try:
            time.sleep(WARMUP_S)
            for _ in range(args.rounds):
                for condition in ("none", "viewer"):
                    if condition == "none":
                        encodes = feed.encodes
                        windows["none"].append(Window(pipeline, args.seconds))
                        assert feed.encodes == encodes, "frames were encoded with no viewer connected"
                        continue
                    with Viewer(server.port) as client:
                        e0 = feed.encodes
                        windows["viewer"].append(Window(pipeline, args.seconds))
                        delivered.append({
                            "stream_fps": client.frames / args.seconds,
                            "events_per_s": client.events / args.seconds,
                            "encodes_per_s": (feed.encodes - e0) / args.seconds,
                            "kbytes_per_s": client.bytes / args.seconds / 1024,
                        })
                    deadline = time.monotonic() + 10.0
                    while feed.viewers and time.monotonic() < deadline:  # the server notices the closed socket
                        time.sleep(0.05)
        finally:
            pipeline.stop()
            pipeline.join(30)
            source.close()
            model.close()
    fps = {k: [w.fps for w in v] for k, v in windows.items()}
    cpu = {k: [w.cpu_ms_per_frame for w in v] for k, v in windows.items()}
    none, viewer = statistics.median(fps["none"]), statistics.median(fps["viewer"])
    cpu_none, cpu_viewer = statistics.median(cpu["none"]), statistics.median(cpu["viewer"])
    return {
        "model": model.spec.name,
        "imgsz": args.imgsz,
        "threads": args.threads,
        "window_s": args.seconds,
        "rounds": args.rounds,
        "stream_fps_cap": args.stream_fps,
        "jpeg_quality": args.jpeg_quality,
        "fps_no_viewer": [round(v, 2) for v in fps["none"]],
        "fps_one_viewer": [round(v, 2) for v in fps["viewer"]],
        "median_fps_no_viewer": round(none, 2),
        "median_fps_one_viewer": round(viewer, 2),
        "viewer_cost_percent": round(100.0 * statistics.median(
            1.0 - v / n for n, v in zip(fps["none"], fps["viewer"])), 2),
        "viewer_cost_percent_of_medians": round(100.0 * (1.0 - viewer / none), 2),
        "cpu_ms_per_frame_no_viewer": [round(v, 2) for v in cpu["none"]],
        "cpu_ms_per_frame_one_viewer": [round(v, 2) for v in cpu["viewer"]],
        "viewer_cpu_cost_percent": round(100.0 * (cpu_viewer / cpu_none - 1.0), 2),
        "target_percent": TARGET_COST_PERCENT,
        "delivered": {k: round(statistics.median(d[k] for d in delivered), 2) for k in delivered[0]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads; 0 = every physical core")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    parser.add_argument("--rounds", type=int, default=4, help="no-viewer/viewer window pairs")
    parser.add_argument("--stream-fps", type=float, default=DashboardConfig().stream_fps)
    parser.add_argument("--jpeg-quality", type=int, default=DashboardConfig().jpeg_quality)
    parser.add_argument("--no-priority", dest="priority", action="store_false",
                        help="leave every pipeline thread at the default priority")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model {result['model']} at {args.imgsz}, {args.rounds} x {args.seconds:.0f} s windows each")
        print(f"  no viewer : {result['fps_no_viewer']} -> median {result['median_fps_no_viewer']} FPS")
        print(f"  one viewer: {result['fps_one_viewer']} -> median {result['median_fps_one_viewer']} FPS")
        d = result["delivered"]
        print(f"  viewer got {d['stream_fps']} frames/s ({d['kbytes_per_s']} KiB/s), {d['events_per_s']} events/s; "
              f"{d['encodes_per_s']} encodes/s")
        print(f"  CPU per frame, no viewer : {result['cpu_ms_per_frame_no_viewer']} ms")
        print(f"  CPU per frame, one viewer: {result['cpu_ms_per_frame_one_viewer']} ms")
        for key, what in (("viewer_cost_percent", "of pipeline FPS (median of paired windows)"),
                          ("viewer_cpu_cost_percent", "CPU per frame (what a CPU-bound device loses)")):
            verdict = "within" if result[key] <= TARGET_COST_PERCENT else "OVER"
            print(f"  viewer cost {result[key]} % {what}: {verdict} the {TARGET_COST_PERCENT:.0f} % target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
