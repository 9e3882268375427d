"""``edgeseg eval-tracks``: tracking accuracy (MOTA, IDF1, HOTA, identity switches) and zone and line
event accuracy of a model and the tracker on a video with ground-truth track ids.

::

    edgeseg eval-tracks --model engines/demo --source demo.mp4 --truth demo.json [--config CFG] [--imgsz N]
    edgeseg eval-tracks --truth crossings.json --truth-detections [--config CFG]

The video runs through the same pipeline as ``edgeseg run`` (the config's model, postprocessing
and ``tracker:`` settings; flags override them), then, frame by frame in order, through the
runtime's tracker (``edgeseg.tracking``) and, where the truth has zones or lines, the runtime's
zone logic (``edgeseg.zones``) on the truth's zones and lines. Frame timestamps are
``frame index / fps`` (the truth's ``info.fps``), so the result does not depend on the speed of
the machine. The first line printed is ``MOTA a IDF1 b HOTA c IDsw n`` (TrackEval, mask IoU:
``track_metrics.py``); then the details, and for a scene's truth the zone events, the line
crossings and the membership accuracy of the mask and the box anchor (``zone_accuracy.py``).

``--truth-detections`` feeds the truth's own masks (score 1) to the tracker and the zones instead
of a model's detections: what is still wrong then is the tracker's or the zone logic's, not the
model's (the tracking scenes' events are found exactly that way; see tests/test_synthetic_tracks.py).

A truth file that cannot be used (no ``track_id`` on an annotation, above all) is refused before
the model is loaded, in one line naming the file and the field.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgeseg.config import Config, load_config
from edgeseg.errors import EvalError
from edgeseg.evaluation.track_metrics import FrameObjects, TrackScores, match, score_tracks, similarity
from edgeseg.evaluation.track_truth import Truth, load_truth
from edgeseg.evaluation.zone_accuracy import (
    TOLERANCE_FRAMES,
    EventAccuracy,
    Identities,
    LineAccuracy,
    MembershipAccuracy,
    MembershipTally,
    PredictedCrossing,
    PredictedZoneEvent,
    line_accuracy,
    predicted_events,
    zone_event_accuracy,
)
from edgeseg.structures import FrameResult, Instances

log = logging.getLogger(__name__)

EXIT_OK = 0


@dataclass(frozen=True)
class TrackEvalReport:
    """Everything ``eval-tracks`` measured."""

    frames: int
    scores: TrackScores
    zone_events: Tuple[EventAccuracy, ...] = ()
    lines: Tuple[LineAccuracy, ...] = ()
    membership: Tuple[MembershipAccuracy, ...] = ()

    def lines_out(self) -> List[str]:
        """What the command prints: the metrics line first."""
        out = [self.scores.line(), f"eval-tracks: {self.frames} frames; {self.scores.details()}"]
        by_zone: Dict[str, List[EventAccuracy]] = {}
        for e in self.zone_events:
            by_zone.setdefault(e.zone, []).append(e)
        for zone, accs in by_zone.items():
            within = all(a.found == a.truth and a.max_error <= TOLERANCE_FRAMES for a in accs)
            out.append(f"zone {zone}: " + "; ".join(a.text() for a in accs)
                       + f": {'all' if within else 'NOT all'} found within {TOLERANCE_FRAMES} frames")
        out += [line.text() for line in self.lines]
        out += [m.text() for m in self.membership]
        return out


def instance_objects(instances: Instances, track_ids: Optional[np.ndarray] = None) -> FrameObjects:
    """The instances (those with a track id >= 0 when ``track_ids`` is given) as ``FrameObjects``."""
    from pycocotools import mask as coco_mask

    keep = list(range(len(instances))) if track_ids is None else [i for i in range(len(instances)) if track_ids[i] >= 0]
    ids = [int(track_ids[i]) if track_ids is not None else i for i in keep]
    names = [instances.class_names[int(instances.class_ids[i])] for i in keep]
    boxes = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in instances.boxes[keep]]
    if not instances.has_masks:
        return FrameObjects(ids, names, (), boxes)
    rles = []
    for i in keep:
        rle = coco_mask.encode(np.asfortranarray(instances.full_mask(i).astype(np.uint8)))
        rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"]})
    return FrameObjects(ids, names, rles, boxes)


def truth_objects(truth: Truth, frame: int) -> FrameObjects:
    objs = truth.objects.get(frame, [])
    return FrameObjects([o.track_id for o in objs], [o.class_name for o in objs], [o.rle for o in objs],
                        [list(o.bbox) for o in objs])


@dataclass
class _Run:
    """The per-frame bookkeeping of one evaluation."""

    truth: Truth
    class_names: Tuple[str, ...]
    tracker: Any
    zones: Any = None
    truth_frames: List[FrameObjects] = field(default_factory=list)
    predicted: List[FrameObjects] = field(default_factory=list)
    identities: Identities = field(default_factory=Identities)
    zone_events: List[PredictedZoneEvent] = field(default_factory=list)
    crossings: List[PredictedCrossing] = field(default_factory=list)
    membership: Optional[MembershipTally] = None

    def frame(self, frame: int, instances: Instances) -> None:
        timestamp = frame / self.truth.fps
        update = self.tracker.update(instances, timestamp, frame)
        truth = truth_objects(self.truth, frame)
        self.truth_frames.append(truth)
        self.predicted.append(instance_objects(instances, update.track_ids))
        # identities: every instance (tracked or not) matched to a true object in this frame
        pairs = match(similarity(truth, instance_objects(instances)))
        for t, k in pairs:
            self.identities.add(frame, int(update.track_ids[k]), int(truth.track_ids[t]))
        if self.membership is not None:
            self.membership.add(frame, instances, [(int(truth.track_ids[t]), k) for t, k in pairs])
        if self.zones is not None:
            zone_update = self.zones.update(instances, update)
            events, crossings = predicted_events(frame, zone_update, self.zones.transition_times, self.truth.fps)
            self.zone_events += events
            self.crossings += crossings


def _tracker_config(config: Config) -> Any:
    from edgeseg.config.tracker import TrackerConfig

    section = getattr(config, "tracker", None)
    return section if isinstance(section, TrackerConfig) else TrackerConfig()


def _score(truth: Truth, run: _Run, frames: Dict[int, Instances], names: Tuple[str, ...], where: str
           ) -> TrackEvalReport:
    """Feed the frames to the tracker and the zones in order, then score."""
    missing = truth.frames - len(frames)
    if missing:
        log.warning("%d of the %d annotated frames were not read from the video; they count as frames "
                    "without predictions", missing, truth.frames)
    size = truth.frame_size
    for frame in range(truth.frames):
        instances = frames.get(frame, Instances.empty(size, names))
        if instances.image_size != size:
            raise EvalError(f"{where}: frame {frame} is {instances.image_size[1]}x{instances.image_size[0]}, "
                            f"the truth's frames are {size[1]}x{size[0]}")
        run.frame(frame, instances)
    return TrackEvalReport(
        frames=truth.frames,
        scores=score_tracks(run.truth_frames, run.predicted),
        zone_events=tuple(zone_event_accuracy(truth, run.zone_events, run.identities)),
        lines=tuple(line_accuracy(truth, run.crossings, run.identities)),
        membership=tuple(run.membership.results()) if run.membership is not None else (),
    )


def _new_run(config: Config, truth: Truth, names: Tuple[str, ...]) -> _Run:
    from edgeseg.tracking.tracker import Tracker
    from edgeseg.zones.state import ZoneTracker

    run = _Run(truth, names, Tracker(_tracker_config(config), names))
    if truth.has_events:
        run.zones = ZoneTracker(truth.zones, truth.lines, names)
        run.membership = MembershipTally(truth)
    return run


def evaluate_tracks(config: Config, truth_path: str | Path, progress: bool = True,
                    truth: Optional[Truth] = None) -> TrackEvalReport:
    """Run the model of ``config`` on its source, track, and score against the truth file."""
    from edgeseg.app import build_pipeline, build_runtime
    from edgeseg.progress import progress_bar

    truth = load_truth(truth_path) if truth is None else truth
    results: Dict[int, Instances] = {}
    runtime = build_runtime(config)
    try:
        names = tuple(runtime.model.spec.class_names)
        known = set(truth.class_names.values())
        if not known & set(names):
            raise EvalError(f"model {runtime.model.spec.name}: none of its classes ({', '.join(names)}) is a "
                            f"category of {truth.path} ({', '.join(sorted(known))})")
        run = _new_run(config, truth, names)
        total = min(runtime.source.length or truth.frames, truth.frames)
        with progress_bar(total if progress else 0, "eval-tracks") as bar:

            def keep(result: FrameResult) -> None:
                if result.frame.frame_id < truth.frames:
                    results[result.frame.frame_id] = result.instances
                bar.update(1)

            build_pipeline(config, runtime, on_result=keep).run()
    finally:
        runtime.close()
    if not results:
        raise EvalError(f"source {config.source.uri}: no frame was read")
    return _score(truth, run, results, names, f"source {config.source.uri}")


def truth_instances(truth: Truth, frame: int, names: Tuple[str, ...]) -> Instances:
    """The truth's objects of ``frame`` as detections of score 1 with their exact masks."""
    from pycocotools import mask as coco_mask

    objs = truth.objects.get(frame, [])
    if not objs:
        return Instances.empty(truth.frame_size, names)
    boxes, crops, regions = [], [], []
    for o in objs:
        full = coco_mask.decode(dict(o.rle)).astype(np.bool_)
        ys, xs = np.nonzero(full)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        boxes.append([x0, y0, x1, y1])
        regions.append([x0, y0, x1, y1])
        crops.append(np.ascontiguousarray(full[y0:y1, x0:x1]))
    return Instances(
        image_size=truth.frame_size,
        boxes=np.asarray(boxes, np.float32),
        scores=np.ones(len(objs), np.float32),
        class_ids=np.asarray([names.index(o.class_name) for o in objs], np.int32),
        class_names=names,
        masks=tuple(crops),
        mask_boxes=np.asarray(regions, np.int32),
    )


def evaluate_truth_detections(config: Config, truth: Truth) -> TrackEvalReport:
    """The tracker and the zone logic alone: the truth's own masks are the detections (score 1).

    What remains wrong is theirs (identity switches at occlusions, inertia in the event times),
    not the model's.
    """
    names = tuple(truth.class_names[k] for k in sorted(truth.class_names))
    run = _new_run(config, truth, names)
    frames = {f: truth_instances(truth, f, names) for f in range(truth.frames)}
    return _score(truth, run, frames, names, f"truth {truth.path}")


# -- the command ----------------------------------------------------------------------------------


def cmd_eval_tracks(args: argparse.Namespace) -> int:
    """Check the truth, then run and print the report."""
    truth = load_truth(args.truth)  # refused before any model is loaded
    overrides: Dict[str, Any] = {"source": {"uri": args.source, "loop": False}} if args.source else {}
    model: Dict[str, Any] = {}
    if args.model is not None:
        model["path"] = args.model
    if args.imgsz is not None:
        model["imgsz"] = args.imgsz
    if model:
        overrides["model"] = model
    if args.conf is not None:
        overrides["postprocess"] = {"conf_threshold": args.conf}
    if args.log_level:
        overrides["log_level"] = args.log_level
    config = load_config(args.config, overrides)
    logging.basicConfig(level=getattr(logging, config.log_level.upper()),
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    if args.truth_detections:
        report = evaluate_truth_detections(config, truth)
    else:
        if args.source is None:
            raise EvalError("eval-tracks: --source VIDEO is required (unless --truth-detections)")
        report = evaluate_tracks(config, args.truth, truth=truth)
    for line in report.lines_out():
        print(line)
    return EXIT_OK


def add_eval_tracks_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``eval-tracks`` on the ``edgeseg`` parser's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "eval-tracks",
        help="tracking accuracy (MOTA, IDF1, HOTA, ID switches) and zone/line events against a video's truth",
        description="Run the model and the tracker over a video and score the tracks against its ground "
        "truth (COCO json with a track_id on every annotation, as edgeseg synth --video or --tracking-scene "
        "writes). Prints 'MOTA a IDF1 b HOTA c IDsw n' (TrackEval, mask IoU), then details; when the truth "
        "has zones or lines, the enter/leave frame errors, the crossing counts and the membership accuracy "
        "of the mask and of the box anchor.",
    )
    p.add_argument("--model", metavar="M", help="ONNX model or engine bundle directory (else the config's)")
    p.add_argument("--source", metavar="VIDEO", help="the video the truth annotates")
    p.add_argument("--truth", required=True, metavar="TRUTH.json", help="per-frame COCO json with track ids")
    p.add_argument("--config", metavar="FILE", help="YAML configuration (model, postprocess, tracker)")
    p.add_argument("--imgsz", type=int, metavar="N", help="input size for dynamic models")
    p.add_argument("--conf", type=float, metavar="T", help="confidence threshold (postprocess.conf_threshold)")
    p.add_argument("--truth-detections", action="store_true",
                   help="no model: the truth's own masks are the detections, to measure the tracker and the "
                   "zone logic alone")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.set_defaults(func=cmd_eval_tracks)
    return p

