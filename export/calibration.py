"""Calibration images for INT8 quantisation, fed exactly as the runtime feeds frames.

INT8 ranges are only as good as the tensors they were measured on: calibration preprocessing
that differs from inference (a missing ``/255``, BGR instead of RGB, a stretch instead of a
letterbox) is the classic cause of an INT8 model that detects nothing (NVIDIA/TensorRT issues 1564 and 2036).
So the reader below makes every tensor with ``edgeseg.preprocess.Preprocessor``, the runtime's
own letterbox and normalisation, at the model's static input size and with the normalisation its
metadata declares.

The folder is checked before any long work starts: a missing folder, one without images, or one
whose images all fail to decode is an ``ExportError`` of one line naming the folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from google.protobuf.message import DecodeError
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from edgeseg.errors import ConfigError, ExportError, ModelError
from edgeseg.model import Normalization, load_model
from edgeseg.preprocess import Preprocessor
from edgeseg.sources.images import decode_image
from edgeseg.sources.uri import IMAGE_EXTENSIONS, is_image_path, natural_key
from edgeseg.structures import ImageArray

log = logging.getLogger(__name__)

Tensor = npt.NDArray[np.float32]
Feed = dict[str, Tensor]

#: At most this many unreadable file names are listed in the one warning about them.
MAX_NAMES_IN_LOG = 5


@dataclass(frozen=True)
class CalibrationInput:
    """What a calibration tensor must look like for one model.

    Attributes:
        name: the model's image input name (the feed key).
        size: (height, width) of its static input.
        normalization: pixel scaling from the model's metadata, as the runtime applies it.
    """

    name: str
    size: tuple[int, int]
    normalization: Normalization


def model_input(fp32_onnx: Path) -> CalibrationInput:
    """The input a model expects, read the way the runtime reads it (``load_model``).

    Going through ``load_model`` rather than parsing the graph here means calibration cannot
    disagree with inference about size or normalisation. A dynamic-shape model is refused:
    each quantised model serves one resolution, so the caller fixes the size first.
    """
    _require_static_input(fp32_onnx)
    try:
        model = load_model(fp32_onnx, threads=1, device="cpu")
    except (ModelError, ConfigError) as exc:
        raise ExportError(f"quantise: {exc}") from None
    try:
        return CalibrationInput(model.backend.info.inputs[0].name, model.spec.input_size, model.spec.normalization)
    finally:
        model.close()


def _require_static_input(fp32_onnx: Path) -> None:
    """ExportError unless the model's first input has fixed, positive dimensions."""
    try:
        graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    except (OSError, DecodeError) as exc:
        raise ExportError(f"model {fp32_onnx}: not a readable ONNX file ({exc})") from None
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if not inputs:
        raise ExportError(f"model {fp32_onnx}: expected an image input, found none")
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or any(d.dim_param or d.dim_value <= 0 for d in dims):
        shape = ", ".join(d.dim_param or str(d.dim_value) for d in dims)
        raise ExportError(
            f"model {fp32_onnx}: expected a static input shape (one quantised model per resolution), "
            f"found [{shape}]; export it at a fixed size first"
        )


def calibration_images(folder: Path, limit: int | None = None) -> list[Path]:
    """The readable images directly inside ``folder``, natural order, at most ``limit`` of them.

    Every candidate is decoded once here (a few ms each) so that a folder of truncated or
    non-image files fails now, in one line, not after minutes of calibration. Unreadable files
    are skipped with one warning. With ``limit`` the images kept are spread evenly over the
    folder's order rather than taken from its start: ``edgeseg calibration collect`` names
    frames in capture order, so the first N would all come from the same minute.
    """
    folder = Path(folder)
    if limit is not None and limit < 1:
        raise ExportError(f"calibration limit {limit}: expected at least 1 image")
    if not folder.is_dir():
        raise ExportError(f"calibration folder {folder}: not found; expected a folder of calibration images")
    candidates = sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_path(p)),
        key=natural_key,
    )
    if not candidates:
        raise ExportError(
            f"calibration folder {folder}: no image files; expected images "
            f"({' '.join(sorted(IMAGE_EXTENSIONS))}), e.g. from 'edgeseg calibration collect'"
        )
    readable: list[Path] = []
    bad: list[Path] = []
    for path in candidates:
        image, _reason = decode_image(path)
        (readable if image is not None else bad).append(path)
    if not readable:
        raise ExportError(
            f"calibration folder {folder}: none of its {len(candidates)} image files decodes; "
            f"expected readable images"
        )
    if bad:
        names = ", ".join(p.name for p in bad[:MAX_NAMES_IN_LOG])
        log.warning("calibration folder %s: skipping %d unreadable image(s): %s%s", folder, len(bad), names,
                    " ..." if len(bad) > MAX_NAMES_IN_LOG else "")
    if limit is None or limit >= len(readable):
        return readable
    picks = np.linspace(0, len(readable) - 1, limit).round().astype(int)
    return [readable[i] for i in picks]


class PreprocessedReader(CalibrationDataReader):
    """Feeds calibration images to ONNX Runtime's calibrators as the runtime would feed them.

    Each image gives one tensor from the runtime's ``Preprocessor``; with ``flip`` it also gives
    its mirror image (flipped before the letterbox, like a camera mounted the other way round),
    which doubles the variety of positions without new pixels. ``window`` restricts the reader
    to part of the list so that a caller can calibrate in chunks: ONNX Runtime's histogram
    calibrators hold every intermediate tensor of one ``collect_data`` call in memory, several
    hundred MB per 640 image, so 80 images in one call would need tens of GB.
    """

    def __init__(
        self,
        images: Sequence[Path],
        spec: CalibrationInput,
        *,
        flip: bool = False,
        progress: bool = True,
    ) -> None:
        if not images:
            raise ExportError("calibration: expected at least one image, got an empty list")
        self.images = list(images)
        self.spec = spec
        self.flip = flip
        self._pre = Preprocessor(spec.normalization, pool_size=1)
        self._start = 0
        self._stop = len(self.images)
        self._next = 0
        self._pending: list[Tensor] = []
        self._bar = tqdm(total=len(self.images), desc="calibration", unit="image", disable=not progress or None,
                         leave=False, dynamic_ncols=True)

    def __len__(self) -> int:
        """Number of images (each gives one or, with ``flip``, two tensors)."""
        return len(self.images)

    def tensor(self, image: ImageArray) -> Tensor:
        """One (1, 3, H, W) input for ``image``: the runtime's preprocessing, copied out of its pool."""
        pooled = self._pre.acquire(self.spec.size)
        if pooled is None:  # pool of one, released below: cannot happen unless misused
            raise ExportError("calibration: preprocessing buffer still in use")
        try:
            self._pre.fill(image, pooled)
            return pooled.copy()
        finally:
            self._pre.release(pooled)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only images ``start_index`` to ``end_index`` (exclusive) on the next pass."""
        self._start, self._stop = max(0, start_index), min(len(self.images), end_index)
        self._next = self._start
        self._pending.clear()

    def rewind(self) -> None:
        """Start the current window again."""
        self._next = self._start
        self._pending.clear()

    def get_next(self) -> Feed | None:
        """The next input feed, or None at the end of the window (ORT's reader protocol)."""
        while not self._pending:
            if self._next >= self._stop:
                return None
            path = self.images[self._next]
            self._next += 1
            self._bar.update(1)
            image, reason = decode_image(path)
            if image is None:  # checked by calibration_images; a file changed since is skipped
                log.warning("calibration: skipping %s: %s", path, reason)
                continue
            self._pending.append(self.tensor(image))
            if self.flip:
                self._pending.append(self.tensor(np.ascontiguousarray(image[:, ::-1])))
        return {self.spec.name: self._pending.pop(0)}

    def close(self) -> None:
        """Close the progress bar."""
        self._bar.close()
