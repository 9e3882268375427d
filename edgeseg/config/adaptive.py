"""The ``adaptive:`` section: adaptive resolution and post-processing effort.

Unknown keys are refused, every field is described and bounded, as in ``schema.py``. With
``enabled`` the picker needs exactly one goal: a frame rate (``target_fps``) or a per-frame
processing latency (``latency_budget_ms``).
"""

from __future__ import annotations

from typing import List, Literal, Optional

from pydantic import Field, model_validator

from edgeseg.strict import StrictModel

#: Post-processing reductions, in the order the picker applies them once even the smallest
#: resolution does not fit: "no-refine" turns morphological refinement off, "fewer-detections"
#: halves max_detections, "boxes-only" stops making masks (results then carry boxes only, which
#: changes what subscribers receive: opt-in).
EffortStep = Literal["no-refine", "fewer-detections", "boxes-only"]
EFFORT_ORDER: tuple[EffortStep, ...] = ("no-refine", "fewer-detections", "boxes-only")
#: Reductions allowed unless configured otherwise: boxes-only changes the output, so it is opt-in.
DEFAULT_EFFORT_LEVELS: tuple[EffortStep, ...] = ("no-refine", "fewer-detections")


class AdaptiveConfig(StrictModel):
    """With enabled, exactly one goal: target_fps or latency_budget_ms (never both). resolutions are
    multiples of 32 from 320 to 1280; each effort level at most once."""

    enabled: bool = Field(False, description="switch input resolution and post-processing effort to meet the goal")
    target_fps: Optional[float] = Field(
        None, gt=0, le=1000, description="goal: frames per second delivered (give this or latency_budget_ms)"
    )
    latency_budget_ms: Optional[float] = Field(
        None, gt=0, le=60_000,
        description="goal: processing time per frame, preprocess to sinks, milliseconds (or target_fps)",
    )
    resolutions: List[int] = Field(
        default_factory=list, max_length=16,
        description="input sizes to choose from (multiples of 32, 320..1280); empty = a bundle's engines, "
        "or 320, 416, 512, 640 for a dynamic ONNX",
    )
    headroom: float = Field(
        0.10, ge=0.0, le=1.0, description="a size fits when its predicted cost leaves this fraction spare"
    )
    hysteresis: float = Field(
        0.10, ge=0.0, lt=0.5,
        description="step down only when this fraction over the fit line, up only when this fraction under it",
    )
    min_dwell_s: float = Field(3.0, ge=0.0, le=600.0, description="no switch until this long after the last one")
    min_dwell_frames: int = Field(
        30, ge=1, le=100_000, description="no switch until this many frames were measured after the last one"
    )
    warmup_frames: int = Field(
        3, ge=0, le=100,
        description="frames at a new size not measured (frames in flight, first inference at a new shape)",
    )
    ewma_alpha: float = Field(
        0.1, gt=0.0, le=1.0, description="weight of the newest frame in the moving averages of latency and rate"
    )
    retry_backoff_s: float = Field(
        30.0, ge=0.0, le=3600.0,
        description="a step up undone within two dwells blocks that step (and those above) this long, "
        "doubling each time",
    )
    effort_levels: List[EffortStep] = Field(
        default_factory=lambda: list(DEFAULT_EFFORT_LEVELS),
        description="post-processing reductions allowed below the smallest size, applied in the order "
        "no-refine, fewer-detections, boxes-only",
    )
    preload: bool = Field(
        False, description="load every size of a bundle at start (memory known up front, no load at a switch)"
    )
    history: int = Field(100, ge=1, le=10_000, description="switches kept for the dashboard")

    @model_validator(mode="after")
    def _goal(self) -> AdaptiveConfig:
        if self.target_fps is not None and self.latency_budget_ms is not None:
            raise ValueError("give target_fps or latency_budget_ms, not both")
        if self.enabled and self.target_fps is None and self.latency_budget_ms is None:
            raise ValueError("enabled needs a goal: set target_fps or latency_budget_ms")
        bad = [r for r in self.resolutions if r % 32 or not 320 <= r <= 1280]
        if bad:
            raise ValueError(f"resolutions {bad}: expected multiples of 32 from 320 to 1280")
        if len(set(self.effort_levels)) != len(self.effort_levels):
            raise ValueError("effort_levels: each step at most once")
        return self

    @property
    def effort_steps(self) -> tuple[EffortStep, ...]:
        """The allowed reductions in the order they are applied."""
        return tuple(s for s in EFFORT_ORDER if s in self.effort_levels)
