"""Does the adaptive picker hold a target frame rate under a one-core CPU hog?

The real pipeline (file source looping over the COCO images, so it runs flat out) runs the
dynamic yolov8n-seg (or an engine bundle) with the adaptive controller, in three phases:

    quiet (--quiet-s)  ->  one busy process, ``while True: pass`` (--hog-s)  ->  quiet again (--after-s)

Every result is recorded (time, input size). The picker counts as settled ``--settle-s`` after
the hog starts; the figure is the frame rate delivered from then to the end of the hog phase,
against the target, with the worst ``--window-s`` window and the share of 1-s windows at 90% of
the target or more. The same hog phase is then run with the size pinned at the quiet phase's
choice (no picker) for comparison. The load average before and after shows what else ran.

    .venv/bin/python benchmarks/bench_adaptive.py --cpu 1           # one core that the hog shares
    .venv/bin/python benchmarks/bench_adaptive.py --target-fps 8    # two cores, the hog takes one

Without --target-fps the target comes from a calibration run on this machine, now (its speed
varies with what else runs): ``--target-ratio`` times the quiet frame rate at --calibrate-size.
At 0.5 x the 416 rate, a hog that takes 40-50% of the CPU leaves 512 and 640 short of the target
and 416 and 320 above it, while a quiet machine runs 512.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.adaptive.controller import AdaptiveController, open_adaptive
from edgeseg.config.adaptive import AdaptiveConfig
from edgeseg.model import LoadOptions, Model
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.pipeline.runner import Pipeline
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.sources import open_source
from edgeseg.sources.base import SourceOptions
from edgeseg.structures import FrameResult

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
DEFAULT_MODEL = REALDATA / "models" / "yolov8n-seg-dynamic-fp32-reconstructed.onnx"
DEFAULT_IMAGES = REALDATA / "coco_val2017_subset" / "images"
#: The figure the issue asks for: delivered FPS at least this fraction of the target.
HOLD_FRACTION = 0.9
HOG_CODE = "while True: pass"


@dataclass
class Recorder:
    """Every result's time, size and effort, and a way to mark phase boundaries."""

    controller: AdaptiveController | None = None
    times: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, result: FrameResult) -> None:
        if self.controller is not None:
            self.controller.observe(result)
        with self.lock:
            self.times.append(time.monotonic())
            self.sizes.append(max(result.resolution))

    def between(self, t0: float, t1: float) -> list[float]:
        with self.lock:
            return [t for t in self.times if t0 <= t < t1]


def rate(times: list[float], t0: float, t1: float) -> float:
    n = sum(1 for t in times if t0 <= t < t1)
    return n / (t1 - t0) if t1 > t0 else 0.0


def worst_window(times: list[float], t0: float, t1: float, window: float) -> float:
    if t1 - t0 < window:
        return rate(times, t0, t1)
    starts = [t0 + i * window / 2 for i in range(int((t1 - t0 - window) / (window / 2)) + 1)]
    return min(rate(times, s, s + window) for s in starts)


def make_processor(model: Model) -> FrameProcessor:
    return FrameProcessor(model, Postprocessor(PostprocessSettings(), model.spec.class_names))


def run_fixed(model: Model, images: Path, seconds: float, priority: bool, hog: bool) -> float:
    """Frame rate of the pipeline pinned at ``model``'s size for ``seconds`` (after 1 s warm-up)."""
    rec = Recorder()
    hog_proc = subprocess.Popen([sys.executable, "-c", HOG_CODE]) if hog else None
    try:
        with open_source(str(images), SourceOptions(loop=True)) as source:
            pipeline = Pipeline(source, make_processor(model), [], inference_priority=priority, on_result=rec)
            pipeline.start()
            t0 = time.monotonic()
            time.sleep(seconds + 1.0)
            pipeline.stop()
            pipeline.join(30)
    finally:
        if hog_proc is not None:
            hog_proc.kill()
            hog_proc.wait()
    return rate(rec.times, t0 + 1.0, t0 + 1.0 + seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="dynamic ONNX or engine bundle directory")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--sizes", default="320,416,512,640")
    ap.add_argument("--start-size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--target-fps", type=float, default=None)
    ap.add_argument("--calibrate-size", type=int, default=416)
    ap.add_argument("--target-ratio", type=float, default=0.5,
                    help="without --target-fps: target = this x the quiet FPS at --calibrate-size")
    ap.add_argument("--quiet-s", type=float, default=20.0)
    ap.add_argument("--hog-s", type=float, default=30.0)
    ap.add_argument("--after-s", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=8.0)
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin the pipeline and the hog to this one CPU (the hog then takes half of it)")
    ap.add_argument("--min-dwell-s", type=float, default=None, help="default: the config's")
    ap.add_argument("--min-dwell-frames", type=int, default=None, help="default: the config's")
    ap.add_argument("--inference-priority", action="store_true",
                    help="raise the inference thread (with CAP_SYS_NICE it is shielded from a nice-0 hog)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the pinned-size comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("edgeseg.adaptive").setLevel(logging.INFO)

    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = round(os.getloadavg()[0], 2)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # threads and child processes started from here inherit it
    options = LoadOptions(threads=args.threads)  # the ladder's other sizes load the same way
    model = options.load(args.model, imgsz=args.start_size)
    target = args.target_fps
    if target is None:
        calib = options.load(args.model, imgsz=args.calibrate_size) if \
            args.calibrate_size != args.start_size else model
        quiet = run_fixed(calib, args.images, 6.0, args.inference_priority, hog=False)
        target = round(quiet * args.target_ratio, 1)
        print(f"calibration: {quiet:.2f} FPS at {args.calibrate_size}, quiet -> target {target} FPS", file=sys.stderr)

    tuning = {k: v for k, v in (("min_dwell_s", args.min_dwell_s), ("min_dwell_frames", args.min_dwell_frames))
              if v is not None}
    config = AdaptiveConfig(enabled=True, target_fps=target, resolutions=sizes, **tuning)
    processor = make_processor(model)
    controller = open_adaptive(config, args.model, model, processor, options)
    rec = Recorder(controller)
    hog: subprocess.Popen[bytes] | None = None
    with open_source(str(args.images), SourceOptions(loop=True)) as source:
        pipeline = Pipeline(source, processor, [], inference_priority=args.inference_priority, on_result=rec)
        controller.attach(pipeline)
        pipeline.start()
        t_start = time.monotonic()
        try:
            time.sleep(args.quiet_s)
            quiet_size = max(processor.input_size)
            t_hog = time.monotonic()
            hog = subprocess.Popen([sys.executable, "-c", HOG_CODE])
            time.sleep(args.hog_s)
            hog.kill()
            hog.wait()
            hog = None
            t_after = time.monotonic()
            time.sleep(args.after_s)
            t_end = time.monotonic()
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
            pipeline.stop()
            pipeline.join(60)
    history = controller.history()
    mono_to_wall = time.time() - time.monotonic()  # switch times are wall-clock
    settled = t_hog + args.settle_s
    hog_fps = rate(rec.times, settled, t_after)
    hog_worst = worst_window(rec.times, settled, t_after, args.window_s)
    seconds = range(int(t_after - settled))
    held = sum(rate(rec.times, settled + i, settled + i + 1) >= HOLD_FRACTION * target for i in seconds)
    with rec.lock:
        hog_sizes = sorted({sz for t, sz in zip(rec.times, rec.sizes) if settled <= t < t_after})
    settled_switches = sum(1 for s in history if settled <= s.time - mono_to_wall < t_after)
    report = {
        "load_average_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "model": str(args.model), "threads": args.threads, "inference_priority": args.inference_priority,
        "cpu": args.cpu, "target_fps": target,
        "picker": config.model_dump(include={"headroom", "hysteresis", "min_dwell_s", "min_dwell_frames",
                                             "ewma_alpha", "warmup_frames"}),
        "quiet": {"size": quiet_size, "fps": round(rate(rec.times, t_start + args.settle_s, t_hog), 2)},
        "hog": {
            "settled_after_s": args.settle_s, "measured_s": round(t_after - settled, 1), "sizes": hog_sizes,
            "switches_after_settling": settled_switches, "fps": round(hog_fps, 2),
            "fps_over_target": round(hog_fps / target, 3), f"worst_{args.window_s:g}s_window_fps": round(hog_worst, 2),
            "seconds_at_90pct_of_target": f"{held}/{len(seconds)}",
            "holds_within_10pct": hog_fps >= HOLD_FRACTION * target,
        },
        "after": {"size": max(processor.input_size),
                  "fps": round(rate(rec.times, t_after + args.settle_s, t_end), 2)},
        "switches": [
            {"t_s": round(s.time - mono_to_wall - t_start, 1), "to": s.to_size, "effort": s.effort_name,
             "reason": s.reason} for s in history
        ],
        "table": [r.as_dict() for r in controller.table.rows()],
    }
    if not args.no_baseline:
        pinned = controller.ladder.get(quiet_size)
        fixed = run_fixed(pinned, args.images, min(args.hog_s, 15.0), args.inference_priority, hog=True)
        report["pinned_under_hog"] = {"size": quiet_size, "fps": round(fixed, 2),
                                      "fps_over_target": round(fixed / target, 3)}
    controller.close()
    model.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"target {target} FPS; quiet: {report['quiet']}")
        print(f"hog: {report['hog']}")
        print(f"after: {report['after']}")
        if "pinned_under_hog" in report:
            print(f"pinned at {quiet_size} under the hog (no picker): {report['pinned_under_hog']}")
        for s in report["switches"]:
            print(f"  t={s['t_s']:>6}s -> {s['to']} ({s['effort']}): {s['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
