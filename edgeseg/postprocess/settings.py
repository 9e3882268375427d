"""Postprocessing parameters, as one frozen object passed from the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NmsMethod = Literal["gaussian", "linear", "hard"]

#: Default confidence below which candidates are discarded before NMS.
DEFAULT_CONF_THRESHOLD = 0.25
#: Default IoU above which hard NMS suppresses, and linear Soft-NMS starts decaying.
DEFAULT_IOU_THRESHOLD = 0.5
#: Default Gaussian Soft-NMS spread (Bodla et al. 2017 use 0.5).
DEFAULT_SOFT_SIGMA = 0.5
#: Default mask probability threshold (sigmoid of the prototype combination).
DEFAULT_MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class RefineSettings:
    """Morphological mask refinement; all zero means off.

    Attributes:
        open_px: radius of an opening (removes specks and thin spurs), pixels.
        close_px: radius of a closing (fills pinholes and small gaps), pixels.
        min_area: connected components smaller than this many pixels are removed.
    """

    open_px: int = 0
    close_px: int = 0
    min_area: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.open_px or self.close_px or self.min_area)


@dataclass(frozen=True)
class PostprocessSettings:
    """Everything that decides which candidates become instances and how masks are made.

    Attributes:
        conf_threshold: minimum class score of a candidate (and of a Soft-NMS-decayed score).
        nms: "gaussian" or "linear" Soft-NMS, or "hard" NMS; always class-aware.
        iou_threshold: IoU threshold of hard NMS and of linear Soft-NMS.
        soft_sigma: spread of Gaussian Soft-NMS.
        max_detections: most instances kept per frame, highest scores first.
        max_candidates: most candidates entering NMS, highest scores first.
        multi_label: a candidate may yield one instance per class above the threshold
            (as COCO evaluation protocols do), not only its best class.
        masks: build instance masks (off: boxes only, cheaper).
        mask_threshold: probability above which a mask pixel is set.
        refine: optional morphological refinement.
    """

    conf_threshold: float = DEFAULT_CONF_THRESHOLD
    nms: NmsMethod = "gaussian"
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    soft_sigma: float = DEFAULT_SOFT_SIGMA
    max_detections: int = 100
    max_candidates: int = 30000
    multi_label: bool = False
    masks: bool = True
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    refine: RefineSettings = RefineSettings()
