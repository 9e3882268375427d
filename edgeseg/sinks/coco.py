"""``coco:PATH``: a COCO results file, the input of ``COCO.loadRes`` and ``COCOeval``.

Results are gathered in memory and written once at close, through a temporary file in the same
directory and an atomic rename: a run that dies half-way leaves either the previous file or no
file, never a truncated JSON that an evaluation would misread. Masks are always COCO RLE here
(evaluation needs RLE whatever the live outputs use); without masks the file holds box results.

A COCO results file is one JSON array, for a finite set of images: it cannot be appended to and
must be held whole until it is written. That suits ``edgeseg run`` over a dataset, not a daemon,
where it would grow in memory without bound and be rewritten from scratch (losing what came
before) at each reload; ``serve`` therefore refuses it (:data:`SERVE_REFUSAL`) and the daemon's
lasting record is the JSONL sink, which holds the same results, line by line, bounded by disk.
While open, the sink holds a lock beside its file (removed at close) so that a second writer is refused.

Several cameras (``edgeseg run --source A --source B``): two cameras' frames have the same frame
ids (and two folders may hold the same file names), so their image ids would collide. The first
camera the sink sees keeps its image ids as above; the k-th further camera's are offset by
``k * CAMERA_ID_STRIDE`` (10**12: camera 2's frame 5 is image 1000000000005). When the file ends up
holding more than one camera, every result also carries ``"camera"`` (COCO tools ignore keys they
do not know); a one-camera file is exactly as before. With ``image_ids`` (a dataset's file names
to its ids) the ids are the dataset's and are never offset: two cameras over one dataset are two
sets of results for the same images, told apart by ``camera``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Dict, List

import numpy as np

from edgeseg.errors import SinkError
from edgeseg.sinks.base import Sink
from edgeseg.sinks.locks import lock_beside, unlock_beside
from edgeseg.sinks.mask_codec import rle_from_crop
from edgeseg.sinks.paths import prepare_file
from edgeseg.structures import Frame, FrameResult

LOG = logging.getLogger(__name__)

BBOX_DECIMALS = 2
SCORE_DECIMALS = 5
"""More decimals than the live schema: COCOeval ranks detections by score, ties blur the order."""
SERVE_REFUSAL = (
    "a COCO results file is written whole at the end of a run, so under 'serve' it would grow in "
    "memory without bound and be rewritten at each reload; use jsonl:PATH for the daemon, coco: with 'edgeseg run'"
)
"""Why ``serve`` refuses ``coco:`` sinks (checked by the daemon on start and on every reload)."""
CAMERA_ID_STRIDE = 10**12
"""Image id offset per further camera: above any frame id or numeric file stem (12 digits in COCO)."""
CAMERA_KEY = "camera"
TEMP_SUFFIX = ".tmp"
RESULTS_FILE_MODE = 0o644
"""Temporary files are created private (0600); the results file is an ordinary readable file."""


class CocoResultsSink(Sink):
    """Collects ``{image_id, category_id, bbox, score, segmentation}`` results, written at close.

    Args:
        path: the results JSON to write.
        image_ids: file name to COCO image id. Without it, a frame whose name has a numeric stem
            (``000000000139.jpg``) gets that number, any other frame its ``frame_id``. With it, a
            frame whose name (or base name) is not in the mapping is skipped and counted.
        category_ids: class name to COCO category id. Without it the category id is the class id.
            With it, instances of classes not in the mapping are skipped and counted.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_ids: Mapping[str, int] | None = None,
        category_ids: Mapping[str, int] | None = None,
    ):
        self.path = prepare_file(path)
        self._lock: IO[str] | None = lock_beside(self.path)  # the file itself is replaced by rename
        self.image_ids = dict(image_ids) if image_ids is not None else None
        self.category_ids = dict(category_ids) if category_ids is not None else None
        self.results: list[dict[str, Any]] = []
        self.cameras: Dict[str, int] = {}
        """camera -> its index in the order first seen (its image id offset, in strides)."""
        self.skipped_frames = 0
        self.skipped_instances = 0
        self._closed = False

    def image_id(self, frame: Frame) -> int | None:
        """The COCO image id of a frame, or ``None`` when the mapping does not know it."""
        if self.image_ids is not None:
            for key in (frame.name, Path(frame.name).name):
                if key in self.image_ids:
                    return int(self.image_ids[key])
            return None
        stem = Path(frame.name).stem
        return int(stem) if stem.isdigit() else int(frame.frame_id)

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"coco sink {str(self.path)!r} is closed")
        image_id = self.image_id(result.frame)
        if image_id is None:
            self.skipped_frames += 1
            return
        camera = result.camera
        index = self.cameras.setdefault(camera, len(self.cameras))
        if self.image_ids is None:
            image_id += index * CAMERA_ID_STRIDE
        instances = result.instances
        names = instances.names
        xyxy = instances.boxes.astype(np.float64)
        xywh = np.round(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1), BBOX_DECIMALS)
        scores = np.round(instances.scores.astype(np.float64), SCORE_DECIMALS)
        for i in range(len(instances)):
            if self.category_ids is None:
                category_id = int(instances.class_ids[i])
            elif names[i] in self.category_ids:
                category_id = int(self.category_ids[names[i]])
            else:
                self.skipped_instances += 1
                continue
            entry: dict[str, Any] = {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": xywh[i].tolist(),
                "score": float(scores[i]),
                CAMERA_KEY: camera,
            }
            if instances.has_masks:
                entry["segmentation"] = rle_from_crop(
                    instances.masks[i], instances.mask_boxes[i], instances.image_size
                )
            self.results.append(entry)

    def file_results(self) -> List[Dict[str, Any]]:
        """The results as the file holds them: with ``camera`` only when there is more than one."""
        if len(self.cameras) > 1:
            return self.results
        return [{k: v for k, v in entry.items() if k != CAMERA_KEY} for entry in self.results]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._report_and_write()
        finally:
            unlock_beside(self.path, self._lock)
            self._lock = None

    def _report_and_write(self) -> None:
        if self.skipped_frames or self.skipped_instances:
            LOG.warning(
                "coco results %s: skipped %d frames not in image_ids and %d instances of classes "
                "not in category_ids",
                self.path,
                self.skipped_frames,
                self.skipped_instances,
            )
        self._write_atomically()

    def _write_atomically(self) -> None:
        temp_name: str | None = None
        try:
            with tempfile.NamedTemporaryFile(
                "w",
                encoding="utf-8",
                dir=self.path.parent,
                prefix=f".{self.path.name}.",
                suffix=TEMP_SUFFIX,
                delete=False,
            ) as temp:
                temp_name = temp.name
                json.dump(self.file_results(), temp)
                temp.flush()
                os.fsync(temp.fileno())
            os.chmod(temp_name, RESULTS_FILE_MODE)
            os.replace(temp_name, self.path)
        except OSError as exc:
            if temp_name is not None and os.path.exists(temp_name):
                os.unlink(temp_name)
            raise SinkError(f"cannot write COCO results {str(self.path)!r}: {exc}") from exc
