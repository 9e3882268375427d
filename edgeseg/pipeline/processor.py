"""The work done on one frame, split at the points where pipeline threads hand over.

``prepare`` (capture thread) letterboxes into a pooled tensor, ``infer`` (inference thread)
runs the backend and returns the tensor to its pool, ``finish`` (output thread) decodes and
postprocesses into a FrameResult. The threaded pipeline and the plain sequential loop of
``edgeseg bench`` call the same three methods, so they measure the same work.

Each Work carries the Model it was prepared for, so the model may be switched between frames
(the adaptive picker does): a frame in flight is inferred and decoded with the model its tensor
was sized for, never with the new one.

Several cameras share one processor (one model, one set of postprocessing settings as the
Session sets them); what differs per camera travels with its frames as a ``CameraSetup``: its own
tensor pool (a flooding camera waits on its own pool, never on the others'), a fixed model where
the camera pins a resolution, the postprocessing fields it overrides, and its own analytics.
``infer_batch`` runs the frames of several cameras in one backend call per model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from edgeseg.decode.prototype import decode_prototype_outputs
from edgeseg.geometry import Letterbox
from edgeseg.model import Model, ModelSpec
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.preprocess import Preprocessor, Tensor
from edgeseg.structures import Frame, FrameResult

if TYPE_CHECKING:
    from edgeseg.analytics.stage import AnalyticsStage
    from edgeseg.analytics.types import Event


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


@dataclass(frozen=True, eq=False)
class CameraSetup:
    """What one camera brings to the shared per-frame work.

    Attributes:
        name: the camera's name (every result and event carries it).
        preprocessor: the camera's own tensor pool (owned by its capture thread).
        model: a fixed model for this camera (it pins a resolution); None follows the shared one.
        overrides: postprocessing fields this camera sets itself (``PostprocessSettings`` field
            name to value); they replace the shared effective settings for its frames.
        analytics: the camera's tracker, zones and events; None without tracking.
    """

    name: str
    preprocessor: Preprocessor
    model: Optional[Model] = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    analytics: Optional[AnalyticsStage] = None

    def settings(self, shared: PostprocessSettings) -> PostprocessSettings:
        """The shared effective settings with this camera's own fields put in."""
        return dataclasses.replace(shared, **self.overrides) if self.overrides else shared


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
    #: The model this frame was prepared for (its backend infers it, its spec decodes it).
    model: Optional[Model] = None
    #: The camera the frame came from (None: the processor's own pool, settings and analytics).
    camera: Optional[CameraSetup] = None


class FrameProcessor:
    """Preprocess, infer, decode and postprocess for one model.

    ``switch(model)`` (or assigning ``model`` or ``input_size``) changes what the next frame is
    prepared for; the model and its input size are swapped together, in one assignment that
    ``prepare`` reads once, and each frame keeps the model and size it was prepared with. All
    models switched to must share the normalisation and class table of the first (the
    resolutions of one network or one bundle do).
    """

    def __init__(
        self,
        model: Model,
        postprocessor: Postprocessor,
        preprocessor: Preprocessor | None = None,
        inference_workers: int = 1,
        analytics: Optional[AnalyticsStage] = None,
    ):
        #: Tracks, zones and events after postprocessing (``--track``), in the output thread.
        self.analytics = analytics
        #: (model, input size) for the next frame, replaced as a whole so a reader never mixes two.
        self._active: tuple[Model, tuple[int, int]] = (model, model.spec.input_size)
        self.postprocessor = postprocessor
        # Tensors in flight: one being filled, two in the double buffer, one per inference worker.
        self.preprocessor = preprocessor or Preprocessor(model.spec.normalization, pool_size=3 + inference_workers)

    @property
    def model(self) -> Model:
        """The model the next frame is prepared for."""
        return self._active[0]

    @model.setter
    def model(self, model: Model) -> None:
        self.switch(model)

    @property
    def spec(self) -> ModelSpec:
        return self._active[0].spec

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the next frame is letterboxed to."""
        return self._active[1]

    @input_size.setter
    def input_size(self, size: tuple[int, int]) -> None:
        self._active = (self._active[0], size)

    def switch(self, model: Model, input_size: tuple[int, int] | None = None) -> None:
        """Prepare the next frames for ``model`` (at its own input size unless one is given)."""
        self._active = (model, input_size or model.spec.input_size)

    def prepare(self, frame: Frame, timeout: float | None = None, camera: Optional[CameraSetup] = None) -> Work | None:
        """Letterbox ``frame`` into a pooled tensor; None if no pooled tensor freed in time.

        The wait for a free tensor is back-pressure from downstream and is not timed. ``camera``:
        the camera's pool and fixed model are used instead of the processor's.
        """
        model, input_size = self._active
        if camera is not None and camera.model is not None:
            model, input_size = camera.model, camera.model.spec.input_size
        preprocessor = self._preprocessor_of(camera)
        tensor = preprocessor.acquire(input_size, timeout)
        if tensor is None:
            return None
        t0 = time.perf_counter()
        letterbox = preprocessor.fill(frame.image, tensor)
        return Work(frame, letterbox, tensor, latency_ms={"preprocess": _ms_since(t0)}, model=model, camera=camera)

    def _preprocessor_of(self, camera: Optional[CameraSetup]) -> Preprocessor:
        return self.preprocessor if camera is None else camera.preprocessor

    def release(self, work: Work) -> None:
        """Return the work's tensor to its pool (after inference, or when the frame is dropped)."""
        if work.tensor is not None:
            self._preprocessor_of(work.camera).release(work.tensor)
            work.tensor = None

    def infer(self, work: Work) -> Work:
        """Run the backend on the work's tensor; the tensor goes back to its pool."""
        assert work.tensor is not None, "infer called twice on one frame"
        backend = (work.model or self.model).backend
        t0 = time.perf_counter()
        try:
            work.outputs = backend.infer(work.tensor)
        finally:
            self.release(work)
        work.latency_ms["infer"] = _ms_since(t0)
        return work

    def infer_batch(self, works: Sequence[Work]) -> Sequence[Work]:
        """Run the frames of several cameras: one backend call per model among them (frames of a
        camera that pins its own resolution, or prepared before a switch, form their own group).

        Each frame's ``infer`` latency is its share of its group's call (call time / frames), the
        inference cost the frame added, which is what the picker's load figures add up.
        """
        if len(works) == 1:
            return [self.infer(works[0])]
        groups: Dict[int, List[Work]] = {}
        for work in works:
            assert work.tensor is not None, "infer called twice on one frame"
            groups.setdefault(id(work.model or self.model), []).append(work)
        for group in groups.values():
            backend = (group[0].model or self.model).backend
            t0 = time.perf_counter()
            try:
                stacked = np.concatenate([w.tensor for w in group if w.tensor is not None], axis=0)
            finally:
                for w in group:
                    self.release(w)
            outputs = backend.infer_batch(stacked)
            share = _ms_since(t0) / len(group)
            for w, out in zip(group, outputs):
                w.outputs = out
                w.latency_ms["infer"] = share
        return works

    def finish(self, work: Work) -> FrameResult:
        """Decode and postprocess the outputs into instances in original-image pixels."""
        camera = work.camera
        settings = self.postprocessor.settings if camera is None else camera.settings(self.postprocessor.settings)
        spec = (work.model or self.model).spec
        t0 = time.perf_counter()
        candidates = decode_prototype_outputs(
            work.outputs[spec.pred_index],
            work.outputs[spec.proto_index],
            spec.num_classes,
            settings.conf_threshold,
            multi_label=settings.multi_label,
            max_candidates=settings.max_candidates,
        )
        t1 = time.perf_counter()
        work.latency_ms["decode"] = (t1 - t0) * 1e3
        instances = self.postprocessor(candidates, work.letterbox, settings)
        work.latency_ms["postprocess"] = _ms_since(t1)
        work.outputs = ()
        result = FrameResult(
            frame=work.frame,
            instances=instances,
            model=spec.name,
            resolution=work.letterbox.input_size,
            latency_ms=work.latency_ms,
            camera="" if camera is None else camera.name,
        )
        analytics = self.analytics if camera is None else camera.analytics
        if analytics is not None:
            t2 = time.perf_counter()
            result = analytics(result)
            work.latency_ms["analytics"] = _ms_since(t2)
        return result

    def finish_analytics(self, camera: Optional[CameraSetup] = None) -> Tuple[Event, ...]:
        """At the end of a run (or of one camera): the ``end`` of every open event (none without
        analytics)."""
        analytics = self.analytics if camera is None else camera.analytics
        return analytics.finish() if analytics is not None else ()
