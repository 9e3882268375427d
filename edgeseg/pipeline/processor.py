"""The work done on one frame, split at the points where pipeline threads hand over.

``prepare`` (capture thread) letterboxes into a pooled tensor, ``infer`` (inference thread)
runs the backend and returns the tensor to its pool, ``finish`` (output thread) decodes and
postprocesses into a FrameResult. The threaded pipeline and the plain sequential loop of
``edgeseg bench`` call the same three methods, so they measure the same work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgeseg.decode.prototype import decode_prototype_outputs
from edgeseg.geometry import Letterbox
from edgeseg.model import Model
from edgeseg.postprocess import Postprocessor
from edgeseg.preprocess import Preprocessor, Tensor
from edgeseg.structures import Frame, FrameResult


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


@dataclass
class Work:
    """A frame on its way through the pipeline, with what each stage has added."""

    frame: Frame
    letterbox: Letterbox
    tensor: Tensor | None
    outputs: Sequence[npt.NDArray[np.float32]] = ()
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: Order in which an inference worker took the frame (restores order after parallel workers).
    seq: int = -1


class FrameProcessor:
    """Preprocess, infer, decode and postprocess for one model.

    ``input_size`` may be changed between frames (the adaptive picker does); each frame keeps
    the size it was prepared with.
    """

    def __init__(
        self,
        model: Model,
        postprocessor: Postprocessor,
        preprocessor: Preprocessor | None = None,
        inference_workers: int = 1,
    ):
        self.model = model
        self.spec = model.spec
        self.postprocessor = postprocessor
        # Tensors in flight: one being filled, two in the double buffer, one per inference worker.
        self.preprocessor = preprocessor or Preprocessor(model.spec.normalization, pool_size=3 + inference_workers)
        self.input_size = model.spec.input_size

    def prepare(self, frame: Frame, timeout: float | None = None) -> Work | None:
        """Letterbox ``frame`` into a pooled tensor; None if no pooled tensor freed in time.

        The wait for a free tensor is back-pressure from downstream and is not timed.
        """
        tensor = self.preprocessor.acquire(self.input_size, timeout)
        if tensor is None:
            return None
        t0 = time.perf_counter()
        letterbox = self.preprocessor.fill(frame.image, tensor)
        return Work(frame, letterbox, tensor, latency_ms={"preprocess": _ms_since(t0)})

    def release(self, work: Work) -> None:
        """Return the work's tensor to its pool (after inference, or when the frame is dropped)."""
        if work.tensor is not None:
            self.preprocessor.release(work.tensor)
            work.tensor = None

    def infer(self, work: Work) -> Work:
        """Run the backend on the work's tensor; the tensor goes back to its pool."""
        assert work.tensor is not None, "infer called twice on one frame"
        t0 = time.perf_counter()
        try:
            work.outputs = self.model.backend.infer(work.tensor)
        finally:
            self.release(work)
        work.latency_ms["infer"] = _ms_since(t0)
        return work

    def finish(self, work: Work) -> FrameResult:
        """Decode and postprocess the outputs into instances in original-image pixels."""
        settings = self.postprocessor.settings
        t0 = time.perf_counter()
        candidates = decode_prototype_outputs(
            work.outputs[self.spec.pred_index],
            work.outputs[self.spec.proto_index],
            self.spec.num_classes,
            settings.conf_threshold,
            multi_label=settings.multi_label,
            max_candidates=settings.max_candidates,
        )
        t1 = time.perf_counter()
        work.latency_ms["decode"] = (t1 - t0) * 1e3
        instances = self.postprocessor(candidates, work.letterbox, settings)
        work.latency_ms["postprocess"] = _ms_since(t1)
        work.outputs = ()
        return FrameResult(
            frame=work.frame,
            instances=instances,
            model=self.spec.name,
            resolution=work.letterbox.input_size,
            latency_ms=work.latency_ms,
        )
