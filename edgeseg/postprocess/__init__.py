"""Postprocessing: candidates in network-input pixels -> instances in original-image pixels.

``Postprocessor`` runs the steps in order: class-aware NMS (``nms``), boxes back through the
letterbox, mask crops straight from the prototypes (``masks``), optional morphological
refinement (``refine``). Its ``settings`` attribute may be replaced at any time (the dashboard
changes thresholds live); each call reads it once, so a frame never mixes two settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgeseg.decode.candidates import Candidates
from edgeseg.geometry import Letterbox
from edgeseg.postprocess.masks import crop_masks, logit, pixel_regions
from edgeseg.postprocess.nms import suppress
from edgeseg.postprocess.refine import refine_mask, refine_masks
from edgeseg.postprocess.settings import NmsMethod, PostprocessSettings, RefineSettings
from edgeseg.structures import Instances

__all__ = [
    "NmsMethod",
    "PostprocessSettings",
    "Postprocessor",
    "RefineSettings",
    "crop_masks",
    "logit",
    "pixel_regions",
    "refine_mask",
    "refine_masks",
    "suppress",
]


class Postprocessor:
    """Turns one frame's ``Candidates`` into its ``Instances``.

    Not thread-safe: one output thread calls it (it reuses a workspace across frames).

    Attributes:
        settings: the thresholds and methods in force; replace it to change them.
        class_names: the model's class table, passed on to every ``Instances``.
    """

    def __init__(self, settings: PostprocessSettings, class_names: Sequence[str]) -> None:
        self.settings = settings
        self.class_names = tuple(class_names)
        # Cells-last prototype copies for crop_masks, one per prototype shape (3.3 MB at 640).
        self._workspaces: dict[tuple[int, ...], npt.NDArray[np.float32]] = {}

    def __call__(
        self, candidates: Candidates, letterbox: Letterbox, settings: PostprocessSettings | None = None
    ) -> Instances:
        """NMS, boxes to original pixels, masks, refinement; empty ``Instances`` if none survive.

        ``settings`` overrides ``self.settings`` for this call, so that a caller who decoded
        with one settings object can postprocess with the very same one.

        Instances whose box lies entirely in the letterbox padding (zero width or height once
        mapped back and clipped to the image) are dropped: they cover no image pixel.
        """
        settings = self.settings if settings is None else settings
        keep, scores = suppress(candidates.boxes, candidates.scores, candidates.class_ids, settings)
        boxes = letterbox.boxes_to_image(candidates.boxes[keep])
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not inside.all():
            keep, scores, boxes = keep[inside], scores[inside], boxes[inside]
        if len(keep) == 0:
            return Instances.empty(letterbox.image_size, self.class_names)

        class_ids = candidates.class_ids[keep].astype(np.int32, copy=False)
        if not settings.masks:
            return Instances(letterbox.image_size, boxes, scores, class_ids, self.class_names)
        regions = pixel_regions(boxes, letterbox.image_size)
        crops = crop_masks(
            candidates.coefficients[keep],
            candidates.protos,
            regions,
            letterbox,
            settings.mask_threshold,
            workspace=self._workspace(candidates.protos.shape),
        )
        crops = refine_masks(crops, settings.refine)
        return Instances(letterbox.image_size, boxes, scores, class_ids, self.class_names, crops, regions)

    def _workspace(self, proto_shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        """The (ph * pw, k) buffer for prototypes of ``proto_shape`` (k, ph, pw), made once."""
        workspace = self._workspaces.get(proto_shape)
        if workspace is None:
            k, ph, pw = proto_shape
            workspace = self._workspaces[proto_shape] = np.empty((ph * pw, k), np.float32)
        return workspace
