"""What the tracker (and the whole analytics stage) costs per frame at 50 objects, with and without masks.

Synthetic scene: ``--objects`` objects in a 1280x720 frame, each an ellipse mask crop of 40x40 to
120x120 pixels, moving at a constant velocity of up to 6 px per frame and bouncing off the
frame's edges (so they cross each other), with a pixel of jitter on each box and scores of 0.6
to 0.95, except that each frame a tenth of them dips to 0.2..0.45 (a partial occlusion: those
go through ByteTrack's second stage). The instances of every frame are built
before the clock starts; only ``Tracker.update`` is timed, after ``--warmup`` frames.

    .venv/bin/python benchmarks/bench_tracking.py                 # 50 objects, 500 frames
    .venv/bin/python benchmarks/bench_tracking.py --objects 100 --frames 1000
    .venv/bin/python benchmarks/bench_tracking.py --stage analytics   # tracker + zones + lines + events

``--stage analytics`` times what the output thread runs per frame with ``--track``: the
``AnalyticsStage`` (tracker, 3 zones (two by mask, one by box anchor) and 2 lines, the event
lifecycle with RLE masks in its documents; snapshots off, as they are by default).

Prints, per mode, the median and p90 milliseconds per update and the number of identities
published (a check that tracking works: ideally the number of objects).
"""

from __future__ import annotations

import argparse
import time
from typing import List

import numpy as np

from edgeseg.analytics.stage import AnalyticsStage
from edgeseg.config.events import EventsConfig
from edgeseg.config.tracker import TrackerConfig
from edgeseg.config.zones import LineConfig, ZoneConfig
from edgeseg.structures import Frame, FrameResult, Instances
from edgeseg.tracking import Tracker

WIDTH, HEIGHT = 1280, 720
CLASS_NAMES = ("person", "car", "dog")


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0


def make_frames(objects: int, frames: int, masks: bool, seed: int = 0) -> List[Instances]:
    """The instances of every frame of the synthetic scene."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 121, size=(objects, 2))  # w, h
    pos = rng.uniform([0, 0], [WIDTH, HEIGHT], size=(objects, 2)) - sizes / 2
    pos = np.clip(pos, 0, np.array([WIDTH, HEIGHT]) - sizes)
    vel = rng.uniform(-6, 6, size=(objects, 2))
    classes = rng.integers(0, len(CLASS_NAMES), size=objects).astype(np.int32)
    base_scores = rng.uniform(0.6, 0.95, size=objects)
    shapes = [_ellipse(int(h), int(w)) for w, h in sizes]
    out = []
    for _ in range(frames):
        pos += vel
        for axis, limit in ((0, WIDTH), (1, HEIGHT)):
            low = pos[:, axis] < 0
            high = pos[:, axis] + sizes[:, axis] > limit
            vel[low | high, axis] *= -1
            pos[:, axis] = np.clip(pos[:, axis], 0, limit - sizes[:, axis])
        corner = np.rint(pos).astype(np.int32)
        regions = np.concatenate([corner, corner + sizes.astype(np.int32)], axis=1)
        boxes = (regions + rng.normal(0, 1.0, size=regions.shape)).astype(np.float32)
        scores = np.clip(base_scores + rng.normal(0, 0.03, size=objects), 0.0, 1.0)
        dips = rng.random(objects) < 0.1  # a tenth of the objects, half hidden: second stage
        scores[dips] = rng.uniform(0.2, 0.45, size=int(dips.sum()))
        scores = scores.astype(np.float32)
        out.append(
            Instances(
                image_size=(HEIGHT, WIDTH),
                boxes=boxes,
                scores=scores,
                class_ids=classes,
                class_names=CLASS_NAMES,
                masks=tuple(shapes) if masks else (),
                mask_boxes=regions if masks else np.zeros((0, 4), np.int32),
            )
        )
    return out


def run(objects: int, frames: int, warmup: int, masks: bool) -> None:
    instances = make_frames(objects, frames + warmup, masks)
    tracker = Tracker(TrackerConfig(enabled=True, use_masks=masks), CLASS_NAMES)
    times = []
    ids = set()
    for i, inst in enumerate(instances):
        start = time.perf_counter()
        update = tracker.update(inst, timestamp=i / 30.0, frame_id=i)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed * 1e3)
        ids.update(int(t) for t in update.track_ids if t >= 0)
    ms = np.array(times)
    label = "with masks (mask IoU)" if masks else "without masks (box IoU)"
    print(
        f"{label:26s} {objects} objects, {len(ms)} frames: median {np.median(ms):.3f} ms, "
        f"p90 {np.percentile(ms, 90):.3f} ms per update; {len(ids)} identities"
    )


def analytics_stage(masks: bool) -> AnalyticsStage:
    """The stage with the zones and lines of the benchmark's scene (normalised coordinates)."""
    zones = [
        ZoneConfig(name="left", coordinates="normalized", points=[(0, 0), (0.4, 0), (0.4, 1), (0, 1)]),
        ZoneConfig(name="middle", coordinates="normalized", points=[(0.3, 0.2), (0.7, 0.2), (0.5, 0.9)]),
        ZoneConfig(name="right", coordinates="normalized", points=[(0.6, 0), (1, 0), (1, 1), (0.6, 1)],
                   method="box_anchor"),
    ]
    lines = [
        LineConfig(name="gate", coordinates="normalized", points=[(0.5, 0), (0.5, 1)]),
        LineConfig(name="road", coordinates="normalized", points=[(0, 0.5), (1, 0.5)]),
    ]
    return AnalyticsStage(TrackerConfig(enabled=True, use_masks=masks), zones, lines, EventsConfig(), "bench",
                          CLASS_NAMES)


def run_analytics(objects: int, frames: int, warmup: int, masks: bool) -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    results = [
        FrameResult(Frame(image, i, "bench", i / 30.0), inst, "bench", (HEIGHT, WIDTH))
        for i, inst in enumerate(make_frames(objects, frames + warmup, masks))
    ]
    stage = analytics_stage(masks)
    times, events = [], 0
    for i, result in enumerate(results):
        start = time.perf_counter()
        out = stage(result)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed * 1e3)
        events += len(out.analytics.events) if out.analytics is not None else 0
    events += len(stage.finish())
    ms = np.array(times)
    label = "with masks (mask IoU)" if masks else "without masks (box IoU)"
    print(
        f"analytics {label:26s} {objects} objects, {len(ms)} frames: median {np.median(ms):.3f} ms, "
        f"p90 {np.percentile(ms, 90):.3f} ms per frame (tracker + 3 zones + 2 lines + events); {events} events"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--stage", choices=["tracker", "analytics"], default="tracker",
                        help="time the tracker alone or the whole analytics stage")
    args = parser.parse_args()
    for masks in (False, True):
        (run if args.stage == "tracker" else run_analytics)(args.objects, args.frames, args.warmup, masks)


if __name__ == "__main__":
    main()
