"""The ``tracker:`` section: the multi-object tracker's thresholds, buffers and stationary rule.

Unknown keys are refused, every field is described and bounded, as in ``schema.py``. The
defaults are ByteTrack's (high 0.5, low 0.1, new tracks from 0.6; first-stage similarity 0.2,
second-stage IoU 0.5, tentative IoU 0.3) with SORT's three hits to confirm a track.

    tracker:
      enabled: true
      min_hits: 3
      lost_buffer_s: 1.0
      stationary_after_s: 10
      stationary_max_move: 0.1     # of the box diagonal

Cross-field rules: low_threshold < high_threshold <= new_track_threshold.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, ValidationInfo, field_validator

from edgeseg.config.errors import parse_section
from edgeseg.strict import StrictModel


class TrackerConfig(StrictModel):
    """Detections at high_threshold or more are matched first, those between low_threshold and
    high_threshold second (ByteTrack); new tracks start from new_track_threshold. Times are frame
    timestamps, so a recorded clip gives the same tracks at any processing speed."""

    enabled: bool = Field(False, description="track objects across frames (identities, zones, events)")
    high_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="detections scoring this or more are matched in the first stage"
    )
    low_threshold: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="detections scoring this up to high_threshold are matched in the second stage only "
        "(recovers occluded objects); below it, ignored. Must be below high_threshold",
    )
    new_track_threshold: float = Field(
        0.6, gt=0.0, le=1.0,
        description="an unmatched detection scoring this or more starts a tentative track (at least high_threshold)",
    )
    match_iou: float = Field(
        0.2, gt=0.0, le=1.0,
        description="least overlap to match in the first stage: mask IoU where track and detection have masks, "
        "else box IoU (times the detection's score with fuse_score)",
    )
    low_match_iou: float = Field(
        0.5, gt=0.0, le=1.0, description="least box IoU to match a low-score detection in the second stage"
    )
    tentative_match_iou: float = Field(
        0.3, gt=0.0, le=1.0, description="least overlap to match a tentative track (not yet confirmed)"
    )
    fuse_score: bool = Field(
        True, description="first stage: weigh the overlap by the detection's score (ByteTrack), favouring "
        "confident detections among overlapping ones",
    )
    use_masks: bool = Field(
        True, description="match on mask IoU where the track and the detection have masks (else box IoU only)"
    )
    min_hits: int = Field(
        3, ge=1, le=100,
        description="consecutive matches for a tentative track to be confirmed (published); 1 = at once",
    )
    lost_buffer_s: float = Field(
        1.0, ge=0.0, le=3600.0,
        description="a lost (unmatched) track is kept this many seconds for re-identification, then removed",
    )
    lost_buffer_frames: Optional[int] = Field(
        None, ge=1, le=1_000_000,
        description="when set, a lost track is removed after this many frames unmatched instead of lost_buffer_s "
        "(for sources whose timestamps are read times rather than capture times)",
    )
    stationary_after_s: float = Field(
        10.0, gt=0.0, le=86_400.0,
        description="a confirmed track that stays within stationary_max_move this many seconds is stationary",
    )
    stationary_max_move: float = Field(
        0.1, gt=0.0, le=10.0,
        description="how far a stationary object's centroid may wander, as a fraction of its box diagonal; "
        "beyond it the track is moving again",
    )
    stationary_min_px: float = Field(
        2.0, ge=0.0, le=10_000.0,
        description="the stationary move threshold is never below this many pixels (small objects' masks jitter)",
    )
    stationary_buffer_factor: float = Field(
        10.0, ge=1.0, le=1000.0,
        description="a stationary track is kept lost this many times longer (lost_buffer_s or lost_buffer_frames): "
        "a parked car missed for a few seconds keeps its identity instead of starting a new event",
    )
    trail_length: int = Field(
        30, ge=0, le=10_000, description="centroids kept per track for drawing its trail (0: no trails)"
    )

    @field_validator("low_threshold")
    @classmethod
    def _low_below_high(cls, value: float, info: ValidationInfo) -> float:
        high = info.data.get("high_threshold")
        if high is not None and value >= high:
            raise ValueError(f"must be below high_threshold ({high})")
        return value

    @field_validator("new_track_threshold")
    @classmethod
    def _new_from_high(cls, value: float, info: ValidationInfo) -> float:
        high = info.data.get("high_threshold")
        if high is not None and value < high:
            raise ValueError(f"must be at least high_threshold ({high}): only high-score detections start tracks")
        return value


def parse_tracker_config(raw: Any, origin: str = "tracker") -> TrackerConfig:
    """Validate the ``tracker`` section alone, or raise a one-line ``ConfigError``."""
    return parse_section(TrackerConfig, raw, origin)
