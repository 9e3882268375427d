"""``edgeseg synth``: write the synthetic shapes dataset and, optionally, the demo video.

``add_synth_parser(subparsers)`` registers the command on the ``edgeseg`` parser; it sets
``func`` (args -> exit code) as the other commands do. Bad values are ``ExportError``s, which
``edgeseg.cli.main`` prints as one line with exit code 2.

::

    edgeseg synth --out data/shapes [--train 2000] [--val 200] [--size 320] [--seed 0]
                  [--video data/demo.mp4 [--video-frames 150] [--tracking-scene crossings|anchors]]

``--video`` writes the demo video, or with ``--tracking-scene`` a scripted tracking scene
(``export/data/scenes.py``); both with their per-frame ground truth (track ids; a scene's also
has its zones, lines and true events) next to the video.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Final

from edgeseg.errors import ExportError
from export.data.scenes import SCENES, write_tracking_scene
from export.data.synthetic import DEFAULT_SIZE, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE, write_split, write_video

EXIT_OK: Final = 0
DEFAULT_TRAIN: Final = 2000
DEFAULT_VAL: Final = 200


def _count(text: str) -> int:
    """A non-negative integer argument."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate the requested splits and video, then print one summary line per output."""
    if args.video_frames is not None and args.video is None:
        raise ExportError("synth: --video-frames needs --video PATH (the mp4 to write)")
    if args.tracking_scene is not None and args.video is None:
        raise ExportError("synth: --tracking-scene needs --video PATH (the mp4 to write)")
    if args.video is not None and Path(args.video).suffix.lower() != ".mp4":
        raise ExportError(f"synth: --video {args.video}: expected a .mp4 path (the ground truth goes next to it)")
    out = Path(args.out)
    for split, count in (("train", args.train), ("val", args.val)):
        if count == 0:
            continue
        start = time.perf_counter()
        s = write_split(out, split, count, size=args.size, seed=args.seed)
        per_class = ", ".join(f"{k} {v}" for k, v in s.per_class.items())
        print(f"synth: {s.images} {split} images ({s.images_dir}), {s.instances} instances ({per_class}), "
              f"{s.dropped} dropped as hidden; {s.annotations} in {time.perf_counter() - start:.1f} s")
    if args.video is not None:
        start = time.perf_counter()
        frames = VIDEO_FRAMES if args.video_frames is None else args.video_frames
        if args.tracking_scene is not None:
            sc = write_tracking_scene(args.tracking_scene, Path(args.video), frames=frames, seed=args.seed)
            agreement = ", ".join(f"{z} {v:.3f}" for z, v in (sc.anchor_agreement or {}).items())
            print(f"synth: tracking scene {args.tracking_scene}: video {sc.video} ({sc.frames} frames), ground truth "
                  f"{sc.annotations} ({sc.instances} instances of {sc.tracks} tracks, {sc.zone_events} zone visits, "
                  f"{sc.crossings} line crossings; box anchor agrees with the masks: {agreement or 'no zones'}) "
                  f"in {time.perf_counter() - start:.1f} s")
        else:
            v = write_video(Path(args.video), frames=frames, seed=args.seed)
            print(f"synth: video {v.video} ({v.frames} frames), ground truth {v.annotations} "
                  f"({v.instances} instances of {v.tracks} tracks) in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def add_synth_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``synth`` on the ``edgeseg`` parser's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "synth",
        help="write the synthetic shapes dataset (COCO, RLE masks) and optionally the demo video",
        description="Synthetic instance segmentation: circles, squares, triangles, stars and rings over "
        "cluttered backgrounds, with occlusion, lighting changes and noise. Deterministic by seed. Writes "
        "OUT/train/, OUT/val/, OUT/instances_train.json and OUT/instances_val.json.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    p.add_argument("--train", type=_count, default=DEFAULT_TRAIN, metavar="N",
                   help=f"training images (default {DEFAULT_TRAIN})")
    p.add_argument("--val", type=_count, default=DEFAULT_VAL, metavar="N",
                   help=f"validation images (default {DEFAULT_VAL})")
    p.add_argument("--size", type=_count, default=DEFAULT_SIZE, metavar="PX",
                   help=f"square image side (default {DEFAULT_SIZE})")
    p.add_argument("--seed", type=_count, default=0, help="the same seed writes byte-identical files (default 0)")
    p.add_argument("--video", metavar="PATH.mp4",
                   help=f"also write the demo video ({VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}, {VIDEO_FPS} fps, mp4v) and "
                        "PATH.json, its per-frame COCO ground truth (image id = 0-based frame index)")
    p.add_argument("--video-frames", type=_count, metavar="N",
                   help=f"frames of the demo video (default {VIDEO_FRAMES}, {VIDEO_FRAMES // VIDEO_FPS} s)")
    p.add_argument("--tracking-scene", choices=sorted(SCENES), metavar="NAME",
                   help="with --video: write this scripted tracking scene instead of the demo video: "
                        + "; ".join(f"{n}: {SCENES[n].description}" for n in sorted(SCENES))
                        + ". Its PATH.json also holds the zones, lines and true events")
    p.set_defaults(func=cmd_synth)
    return p
