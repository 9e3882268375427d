"""Time the postprocessing stage (NMS, boxes, mask crops) on real model outputs.

The model runs once per image to collect its outputs, which are decoded into candidates; only
``Postprocessor`` calls are timed, cycling over those frames. At conf 0.001 the decoder passes
hundreds to thousands of candidates per frame, so Gaussian Soft-NMS, which rarely decays a
score below 0.001, keeps up to ``max_detections`` = 100 heavily overlapping instances: the
worst case of the mask stage. Hard NMS keeps fewer.

    .venv/bin/python benchmarks/bench_postprocess.py --frames 400
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.decode.candidates import Candidates
from edgeseg.decode.prototype import decode_prototype_outputs
from edgeseg.geometry import Letterbox
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
DEFAULT_MODEL = REALDATA / "models" / "yolov8n-seg-640-fp32-reconstructed.onnx"
DEFAULT_IMAGES = REALDATA / "coco_val2017_subset" / "images"
#: Letterbox fill value of Ultralytics preprocessing.
PAD_VALUE = 114
#: Confidence at which COCO evaluation runs; lets max_detections be reached.
BENCH_CONF = 0.001
#: Untimed calls before timing (first-call allocations, caches).
WARMUP_CALLS = 10
PERCENTILE_90 = 90

Frame = tuple[Candidates, Letterbox]


def letterbox_tensor(
    image: npt.NDArray[np.uint8], input_size: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], Letterbox]:
    """Resize with the gain, pad with 114, RGB, /255, NCHW float32."""
    letterbox = Letterbox.fit((image.shape[0], image.shape[1]), input_size)
    rh, rw = letterbox.resized
    canvas = np.full((*input_size, 3), PAD_VALUE, np.uint8)
    canvas[letterbox.pad_y : letterbox.pad_y + rh, letterbox.pad_x : letterbox.pad_x + rw] = cv2.resize(
        image, (rw, rh), interpolation=cv2.INTER_LINEAR
    )
    tensor = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1)[None], np.float32) / 255.0
    return tensor, letterbox


def collect(model: Path, images: list[Path], conf: float) -> tuple[list[Frame], tuple[str, ...]]:
    """Run the model once per image; decoded candidates and letterbox per frame."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names_map = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])
    names = tuple(str(names_map[i]) for i in range(len(names_map)))
    model_input = session.get_inputs()[0]
    input_size = (int(model_input.shape[2]), int(model_input.shape[3]))
    frames: list[Frame] = []
    for path in images:
        image = cv2.imread(str(path))
        if image is None:
            raise SystemExit(f"bench_postprocess: cannot read image {path}")
        tensor, letterbox = letterbox_tensor(np.asarray(image, np.uint8), input_size)
        preds, protos = session.run(None, {model_input.name: tensor})
        frames.append((decode_prototype_outputs(preds, protos, len(names), conf), letterbox))
    return frames, names


def time_postprocessor(
    postprocessor: Postprocessor, frames: list[Frame], count: int
) -> tuple[list[float], list[int]]:
    """Milliseconds and instance count per timed call, cycling over ``frames``."""
    for i in range(WARMUP_CALLS):
        postprocessor(*frames[i % len(frames)])
    times, instances = [], []
    for i in range(count):
        candidates, letterbox = frames[i % len(frames)]
        start = time.perf_counter()
        result = postprocessor(candidates, letterbox)
        times.append((time.perf_counter() - start) * 1e3)
        instances.append(len(result))
    return times, instances


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="prototype-mask ONNX model (static input)"
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="directory of .jpg images")
    parser.add_argument("--count", type=int, default=32, help="images to run the model on (default 32)")
    parser.add_argument("--frames", type=int, default=320, help="timed postprocess calls (default 320)")
    parser.add_argument("--conf", type=float, default=BENCH_CONF, help="confidence threshold (default 0.001)")
    args = parser.parse_args(argv)
    if not args.model.is_file() or not args.images.is_dir():
        print(
            f"bench_postprocess: need --model file and --images dir (got {args.model}, {args.images})",
            file=sys.stderr,
        )
        return 2
    images = sorted(args.images.glob("*.jpg"))[: args.count]
    if not images:
        print(f"bench_postprocess: no .jpg images in {args.images}", file=sys.stderr)
        return 2

    frames, names = collect(args.model, images, args.conf)
    candidates = [len(c) for c, _ in frames]
    print(
        f"{len(frames)} images from {args.images}, {args.model.name}, conf {args.conf}: "
        f"candidates per frame median {statistics.median(candidates):.0f}, max {max(candidates)}; "
        f"cv2 threads {cv2.getNumThreads()}"
    )
    base = PostprocessSettings(conf_threshold=args.conf)
    print(f"{'settings':<34} {'median ms':>9} {'p90 ms':>8} {'instances (mean, max)':>22}")
    for label, settings in (
        ("gaussian Soft-NMS + masks", replace(base, nms="gaussian")),
        ("hard NMS (IoU 0.5) + masks", replace(base, nms="hard")),
        ("hard NMS (IoU 0.7) + masks", replace(base, nms="hard", iou_threshold=0.7)),
        ("gaussian Soft-NMS, boxes only", replace(base, nms="gaussian", masks=False)),
    ):
        times, counts = time_postprocessor(Postprocessor(settings, names), frames, args.frames)
        p90 = float(np.percentile(times, PERCENTILE_90))
        print(
            f"{label:<34} {statistics.median(times):>9.2f} {p90:>8.2f} "
            f"{statistics.mean(counts):>15.1f}, {max(counts):>4}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
