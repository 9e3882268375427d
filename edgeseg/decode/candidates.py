"""What the decoder hands to postprocessing: scored candidates and the prototype tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class Candidates:
    """Candidates above the confidence threshold, before NMS, in network-input pixels.

    Attributes:
        boxes: (m, 4) float32 xyxy in network-input pixels.
        scores: (m,) float32 class confidence in 0..1.
        class_ids: (m,) int32.
        coefficients: (m, k) float32 mask coefficients.
        protos: (k, ph, pw) float32 prototype masks (logit space), ph = input height / 4
            for the supported families.
    """

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int32]
    coefficients: npt.NDArray[np.float32]
    protos: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        m = len(self.boxes)
        if self.boxes.shape != (m, 4) or self.scores.shape != (m,) or self.class_ids.shape != (m,):
            raise ValueError("boxes (m, 4), scores (m,), class_ids (m,) must agree")
        if self.coefficients.ndim != 2 or len(self.coefficients) != m:
            raise ValueError(f"coefficients must be (m, k) with m={m}, got {self.coefficients.shape}")
        if self.protos.ndim != 3 or self.protos.shape[0] != self.coefficients.shape[1]:
            raise ValueError(
                f"protos {self.protos.shape} must be (k, ph, pw) with k={self.coefficients.shape[1]}"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: npt.NDArray[np.integer] | npt.NDArray[np.bool_]) -> Candidates:
        """Candidates at ``index`` (all per-candidate fields at once; protos shared)."""
        return Candidates(
            self.boxes[index], self.scores[index], self.class_ids[index],
            self.coefficients[index], self.protos,
        )
