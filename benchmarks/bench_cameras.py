"""Many cameras: one process serving N cameras against N processes of one camera each, and one
camera unplugged while the others run.

    python benchmarks/bench_cameras.py scale --model engines/demo --source out/tracks/demo.mp4
    python benchmarks/bench_cameras.py scale \\
        --model ../shared/realdata/models/yolov8n-seg-dynamic-fp32-reconstructed.onnx --imgsz 640 \\
        --source ../shared/realdata/coco_val2017_subset/images --frames 60
    python benchmarks/bench_cameras.py unplug --model engines/demo --source out/tracks/demo.mp4

``scale`` runs ``edgeseg run`` as a user would (every camera reads the same file, ``--max-frames``
per camera): once with one camera (the memory baseline), once with N cameras in one process
(``--source camK=FILE`` N times, optionally ``--batch``), and N single-camera processes at the same
time. It prints aggregate FPS (all frames / wall time from the first start to the last end) and
the peak RSS of each process (``wait4``'s ru_maxrss, the kernel's own figure).

``unplug`` serves N-1 file cameras and one live MJPEG stream (a real HTTP server on loopback,
as an IP camera), kills the stream a third of the way through, and prints for each file camera:
frames written against its file's length (none may be lost) and its FPS before and after the
kill (from the results' arrival times).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _run(cmd: List[str]) -> Tuple[subprocess.Popen, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, time.perf_counter()


def _wait(proc: subprocess.Popen) -> Tuple[float, str, int]:
    """Peak RSS in MB (ru_maxrss is KiB on Linux), the output, and the exit code."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else ""
    return usage.ru_maxrss / 1024, out, proc.returncode


def _frames(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("run: "):
            return int(line.split()[1])
    raise SystemExit(f"edgeseg run printed no summary:\n{output[-2000:]}")


def _base(args: argparse.Namespace) -> List[str]:
    cmd = [sys.executable, "-m", "edgeseg", "run", "--model", args.model, "--max-frames", str(args.frames),
           "--log-level", "warning", "--threads", str(args.threads)]
    if args.imgsz:
        cmd += ["--imgsz", str(args.imgsz)]
    if args.batch > 1:
        cmd += ["--batch", str(args.batch)]
    return cmd


def _once(cmds: List[List[str]]) -> Tuple[int, float, List[float]]:
    """Start every command at once; frames written, wall time to the last end, peak RSS of each."""
    t0 = time.perf_counter()
    procs = [_run(cmd)[0] for cmd in cmds]
    results = [_wait(p) for p in procs]
    wall = time.perf_counter() - t0
    for _, out, rc in results:
        if rc != 0:
            raise SystemExit(out[-2000:])
    return sum(_frames(o) for _, o, _ in results), wall, [r for r, _, _ in results]


def _median_run(cmds: List[List[str]], repeat: int) -> Tuple[int, float, List[float]]:
    """The run of median aggregate FPS among ``repeat`` (the machine's other load varies)."""
    runs = sorted((_once(cmds) for _ in range(repeat)), key=lambda r: r[0] / r[1])
    return runs[len(runs) // 2]


def scale(args: argparse.Namespace) -> None:
    n = args.cameras
    extra = args.one_process_args.split()
    each = args.process_args.split()
    sources = [x for k in range(n) for x in ("--source", f"cam{k}={args.source}")]
    plans = [
        ("1 camera, 1 process", [[*_base(args), *extra, "--source", f"cam0={args.source}"]]),
        (f"{n} cameras, 1 process" + (f" ({args.one_process_args})" if extra else ""),
         [[*_base(args), *extra, *sources]]),
        (f"{n} processes, 1 camera each" + (f" ({args.process_args})" if each else ""),
         [[*_base(args), *each, "--source", f"cam{k}={args.source}"] for k in range(n)]),
    ]
    rows = [(name, *_median_run(cmds, args.repeat)) for name, cmds in plans]
    base_rss = rows[0][3][0]
    print(f"model {args.model}" + (f" at {args.imgsz}" if args.imgsz else "") + f", source {args.source}, "
          f"{args.frames} frames per camera, --threads {args.threads}; median of {args.repeat} runs")
    print("| run | frames | wall s | aggregate FPS | peak RSS MB (per process) | RSS vs 1 camera |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, frames, wall, rss in rows:
        print(f"| {name} | {frames} | {wall:.1f} | {frames / wall:.1f} | "
              f"{' + '.join(f'{r:.0f}' for r in rss)} | {sum(rss) / base_rss:.2f}x |")


def unplug(args: argparse.Namespace) -> None:
    from sources_mjpeg import MjpegServer

    from edgeseg.app import build_pipeline, build_runtime
    from edgeseg.config import load_config
    from edgeseg.structures import FrameResult

    n_files = args.cameras - 1
    arrivals: Dict[str, List[float]] = {}
    lock = threading.Lock()

    def on_result(result: FrameResult) -> None:
        with lock:
            arrivals.setdefault(result.camera, []).append(time.perf_counter())

    with MjpegServer() as server:
        overrides = {
            "model": {"path": args.model, "threads": args.threads, **({"imgsz": args.imgsz} if args.imgsz else {})},
            "cameras": [*({"name": f"file{k}", "uri": args.source} for k in range(n_files)),
                        {"name": "stream", "uri": server.url}],
        }
        config = load_config(None, overrides)
        runtime = build_runtime(config)
        lengths = {c.spec.name: c.source.length for c in runtime.cameras}
        try:
            pipeline = build_pipeline(config, runtime, on_result=on_result)
            t0 = time.perf_counter()
            pipeline.start()
            expected = min(v for k, v in lengths.items() if k != "stream" and v)
            while len(arrivals.get("file0", ())) < expected // 3:
                time.sleep(0.05)
            killed = time.perf_counter()
            server.stop()
            while pipeline.running and any(len(arrivals.get(f"file{k}", ())) < (lengths[f"file{k}"] or 0)
                                           for k in range(n_files)):
                time.sleep(0.1)
            pipeline.stop()
            pipeline.join(60)
            stats = {c.name: c for c in pipeline.cameras()}
        finally:
            runtime.close()
    print(f"model {args.model}, {n_files} file cameras ({args.source}) + 1 MJPEG stream killed after "
          f"{killed - t0:.1f} s")
    print("| camera | frames written / in file | lost | FPS before kill | FPS after kill | change |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in range(n_files):
        name = f"file{k}"
        times = arrivals.get(name, [])
        before = [t for t in times if t <= killed]
        after = [t for t in times if t > killed]
        fps_b = _rate(before)
        fps_a = _rate(after)
        change = (fps_a / fps_b - 1) * 100 if fps_b else float("nan")
        print(f"| {name} | {len(times)} / {lengths[name]} | {(lengths[name] or 0) - len(times)} | "
              f"{fps_b:.1f} | {fps_a:.1f} | {change:+.1f}% |")
    s = stats["stream"]
    print(f"stream: {s.processed} frames before the kill, online={s.online} after it")


def _rate(times: List[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("scale", "unplug"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--source", required=True, help="a file or folder every camera reads")
        s.add_argument("--cameras", type=int, default=4)
        s.add_argument("--frames", type=int, default=150, help="frames per camera")
        s.add_argument("--imgsz", type=int, default=0)
        s.add_argument("--threads", type=int, default=0)
        s.add_argument("--batch", type=int, default=1)
        s.add_argument("--repeat", type=int, default=3, help="scale: runs per configuration (median)")
        s.add_argument("--one-process-args", default="", help="scale: extra edgeseg run flags of the 1-process runs")
        s.add_argument("--process-args", default="", help="scale: extra flags of each single-camera process")
    args = p.parse_args(argv)
    {"scale": scale, "unplug": unplug}[args.cmd](args)


if __name__ == "__main__":
    main()
