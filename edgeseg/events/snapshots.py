"""Event snapshots: the best frame as a JPEG with the object's mask and box drawn, and a cut-out.

A snapshot is drawn and encoded only when an event publishes a new best frame (``new``, a clearly
better frame, or a best frame not yet written at ``end``), never per frame: a 1080p JPEG encode
costs milliseconds in the output thread.

Files go to ``<dir>/<camera>/<event_id>.jpg`` and ``<event_id>-crop.png``. The directory is
bounded by a file count and a byte total per camera: an in-memory index, oldest first, is built
once from the directory at start and kept as files are written, so pruning costs no directory
listing per snapshot. A file is written to a temporary name and renamed, so a reader (the
dashboard, a user's script) never sees half a JPEG. It is not fsynced: a snapshot lost to a power
cut costs little, while an fsync per snapshot on an SD card would stall the pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from edgeseg.config.events import SnapshotConfig
from edgeseg.errors import SinkError
from edgeseg.sinks.annotate import annotate, class_color
from edgeseg.sinks.paths import prepare_directory
from edgeseg.sources.fsnames import os_error_text
from edgeseg.structures import ImageArray, Instances

LOG = logging.getLogger(__name__)

JPEG_SUFFIX = ".jpg"
CROP_SUFFIX = "-crop.png"
TMP_SUFFIX = ".tmp"
OUTLINE_THICKNESS = 2
PNG_COMPRESSION = 1
"""zlib level 1 for the cut-out: several times faster than OpenCV's default 3, files a little larger."""
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Event ids that are safe as file names (no separators, no leading dot, bounded length)."""
FALLBACK_CAMERA_DIR = "camera"
CAMERA_DIR_MAX = 64


def camera_dir_name(camera: str) -> str:
    """``camera`` as one safe directory name: other characters become ``_``, at most 64 of them."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", camera.strip())[:CAMERA_DIR_MAX].strip("_.-")
    return cleaned or FALLBACK_CAMERA_DIR


@dataclass(frozen=True, eq=False)
class SnapshotSource:
    """What a snapshot is drawn from: the best frame's image and the object in it.

    Attributes:
        image: the whole frame, HxWx3 BGR uint8 (held by reference: frames are never modified).
        box: xyxy in original pixels.
        score: the detection's score.
        class_id, class_names: the class and the model's class table (for the label and colour).
        crop, region: the mask crop and the integer region x0, y0, x1, y1 it covers, or None.
    """

    image: ImageArray
    box: Tuple[float, float, float, float]
    score: float
    class_id: int
    class_names: Tuple[str, ...]
    crop: Optional[npt.NDArray[np.bool_]] = None
    region: Optional[Tuple[int, int, int, int]] = None


@dataclass(frozen=True)
class WrittenSnapshot:
    """A snapshot as encoded: the JPEG's bytes and the files written (relative to the snapshot
    directory, None when a write failed or the crop is off)."""

    jpeg: bytes
    file: Optional[str]
    crop_file: Optional[str]


def _one_instance(source: SnapshotSource) -> Instances:
    """The object as a one-instance ``Instances``, so the snapshot looks like every other drawing."""
    height, width = int(source.image.shape[0]), int(source.image.shape[1])
    names = tuple(source.class_names)
    if not 0 <= source.class_id < len(names):  # a class table that does not cover the id: pad it
        names = names + ("",) * (source.class_id + 1 - len(names))
    masks: Tuple[npt.NDArray[np.bool_], ...] = ()
    mask_boxes = np.zeros((0, 4), np.int32)
    if source.crop is not None and source.region is not None:
        masks = (source.crop,)
        mask_boxes = np.asarray([source.region], np.int32)
    return Instances(
        image_size=(height, width),
        boxes=np.asarray([source.box], np.float32),
        scores=np.asarray([source.score], np.float32),
        class_ids=np.asarray([source.class_id], np.int32),
        class_names=names,
        masks=masks,
        mask_boxes=mask_boxes,
    )


def render_snapshot(source: SnapshotSource, mask_alpha: float) -> ImageArray:
    """A copy of the frame with the object's mask tinted, its outline, box and label drawn."""
    canvas = annotate(source.image, _one_instance(source), alpha=mask_alpha)
    if source.crop is not None and source.region is not None and source.crop.size:
        contours, _ = cv2.findContours(
            np.ascontiguousarray(source.crop, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
            offset=(int(source.region[0]), int(source.region[1])),
        )
        cv2.drawContours(canvas, contours, -1, class_color(source.class_id), OUTLINE_THICKNESS, cv2.LINE_AA)
    return canvas


def encode_jpeg(image: ImageArray, quality: int) -> bytes:
    ok, data = cv2.imencode(JPEG_SUFFIX, image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("cv2.imencode refused the snapshot")
    return data.tobytes()


def cutout_png(source: SnapshotSource, margin: int) -> bytes:
    """The object cut out of the frame as a BGRA PNG: mask pixels opaque, the rest transparent
    (the box, opaque, when there is no mask), ``margin`` pixels around it, clipped to the frame."""
    height, width = int(source.image.shape[0]), int(source.image.shape[1])
    if source.crop is not None and source.region is not None:
        rx0, ry0, rx1, ry1 = (int(v) for v in source.region)
    else:
        bx0, by0, bx1, by1 = source.box
        rx0, ry0 = int(np.floor(bx0)), int(np.floor(by0))
        rx1, ry1 = int(np.ceil(bx1)), int(np.ceil(by1))
    x0, y0 = max(rx0 - margin, 0), max(ry0 - margin, 0)
    x1, y1 = min(max(rx1 + margin, x0 + 1), width), min(max(ry1 + margin, y0 + 1), height)
    x0, y0 = min(x0, x1 - 1), min(y0, y1 - 1)
    bgra = cv2.cvtColor(np.ascontiguousarray(source.image[y0:y1, x0:x1]), cv2.COLOR_BGR2BGRA)
    if source.crop is not None and source.region is not None:
        alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
        # the crop's part that lies inside the cut-out window
        cx0, cy0, cx1, cy1 = max(rx0, x0), max(ry0, y0), min(rx1, x1), min(ry1, y1)
        if cx0 < cx1 and cy0 < cy1:
            piece = source.crop[cy0 - ry0 : cy1 - ry0, cx0 - rx0 : cx1 - rx0]
            alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = piece.astype(np.uint8) * 255
        bgra[..., 3] = alpha
    ok, data = cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("cv2.imencode refused the crop")
    return bytes(data.tobytes())


class SnapshotStore:
    """Writes event snapshots into ``<dir>/<camera>/``, keeping at most ``max_files`` files and
    ``max_bytes`` bytes there (the oldest go first).

    Raises ``SinkError`` at construction when the directory cannot be created or written. At run
    time a failed write is logged (once per kind of failure) and the snapshot's bytes are still
    returned: a full disk must not stop detection.
    """

    def __init__(self, config: SnapshotConfig, camera: str):
        self.config = config
        self.camera_dir = camera_dir_name(camera)
        self.directory = prepare_directory(config.directory(self.camera_dir))
        self._files: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._warned: set[str] = set()
        self._scan()

    @property
    def file_count(self) -> int:
        return len(self._files)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def _scan(self) -> None:
        """Index the files already there, oldest first, removing temporaries a crash left behind."""
        found = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            raise SinkError(f"snapshot directory {str(self.directory)!r}: {os_error_text(exc)}") from None
        for entry in entries:
            with contextlib.suppress(OSError):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
                    os.unlink(entry.path)
                    continue
                if entry.name.endswith((JPEG_SUFFIX, CROP_SUFFIX)):
                    stat = entry.stat(follow_symlinks=False)
                    found.append((stat.st_mtime, entry.name, stat.st_size))
        for _, name, size in sorted(found):
            self._files[name] = size
            self._bytes += size
        self._prune(keep=())

    def write(self, event_id: str, source: SnapshotSource) -> WrittenSnapshot:
        """Draw, encode and store the snapshot of ``event_id`` (replacing its previous one)."""
        if not SAFE_NAME.match(event_id):
            raise ValueError(f"event id {event_id!r} is not safe as a file name")
        try:
            jpeg = encode_jpeg(render_snapshot(source, self.config.mask_alpha), self.config.jpeg_quality)
            crop_png = cutout_png(source, self.config.crop_margin_px) if self.config.crop else None
        except cv2.error as exc:
            raise ValueError(f"cannot draw the snapshot: {str(exc).strip().splitlines()[-1]}") from None
        written = []
        jpeg_name = event_id + JPEG_SUFFIX
        jpeg_stored = self._store(jpeg_name, jpeg)
        if jpeg_stored:
            written.append(jpeg_name)
        crop_file = None
        if crop_png is not None:
            crop_name = event_id + CROP_SUFFIX
            if self._store(crop_name, crop_png):
                written.append(crop_name)
                crop_file = f"{self.camera_dir}/{crop_name}"
        self._prune(keep=written)
        return WrittenSnapshot(jpeg, f"{self.camera_dir}/{jpeg_name}" if jpeg_stored else None, crop_file)

    def _store(self, name: str, data: bytes) -> bool:
        """Write ``name`` by temporary file and rename; False (logged) when the disk refuses."""
        target = self.directory / name
        tmp = self.directory / f".{name}.{os.getpid()}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._warn(type(exc).__name__, f"cannot write snapshot {str(target)!r}: {os_error_text(exc)}")
            return False
        old = self._files.pop(name, None)
        if old is not None:
            self._bytes -= old
        self._files[name] = len(data)
        self._bytes += len(data)
        return True

    def _prune(self, keep: Sequence[str]) -> None:
        """Remove the oldest files until both bounds hold, sparing the ones just written."""
        limit_files, limit_bytes = self.config.max_files, self.config.max_bytes
        while self._files and (len(self._files) > limit_files or self._bytes > limit_bytes):
            name = next(iter(self._files))
            if name in keep:  # only what was just written is left over the bound
                break
            size = self._files.pop(name)
            self._bytes -= size
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._warn("prune", f"cannot remove old snapshot {str(self.directory / name)!r}: "
                           f"{os_error_text(exc)}")

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            LOG.warning("%s (said once)", message)

