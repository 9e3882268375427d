"""The ``events:`` section: what an event carries, when it is updated, and its snapshots.

Same rules as the rest of the schema (``edgeseg/config/schema.py``): unknown keys are refused,
every field is described, bounded and defaulted, and the model is frozen. Times are seconds of
frame time (the frames' capture timestamps), so that a recorded clip gives the same events on any
machine.

    events:
      mask: rle                    # the best frame's mask in the event: rle, polygon or none
      stationary_end_s: 300        # a parked car's event ends after 5 minutes stationary
      default_loiter_s: {person: 30}
      snapshots: {enabled: true, max_files: 2000, crop: true}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from pydantic import Field, field_validator

from edgeseg.config.errors import parse_section
from edgeseg.strict import StrictModel

ANY_CLASS = "*"
"""A class key that stands for every class (in ``default_loiter_s`` and zone loiter maps)."""
SNAPSHOT_SUBDIR = "snapshots"
MAX_LOITER_S = 7 * 24 * 3600.0
"""A week: any longer threshold is a typo (or milliseconds)."""


def default_state_dir() -> Path:
    """systemd's ``STATE_DIRECTORY`` (its first entry), else ``~/.local/state/edgeseg``: the same
    place the MQTT queue lives (``edgeseg.config.mqtt``)."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path.home() / ".local" / "state" / "edgeseg"


class SnapshotConfig(StrictModel):
    """The best frame of each event as a JPEG (mask drawn) and a cut-out PNG, in a directory
    bounded by ``max_files`` and ``max_bytes`` (the oldest files are removed first)."""

    enabled: bool = Field(False, description="write a JPEG of each event's best frame (and expose it to MQTT)")
    dir: Optional[str] = Field(
        None, min_length=1, max_length=4096,
        description="directory of the snapshots (<dir>/<camera>/<event_id>.jpg); default: the state "
        "directory's snapshots/ ($STATE_DIRECTORY, else ~/.local/state/edgeseg)",
    )
    max_files: int = Field(
        1000, ge=1, le=1_000_000,
        description="most files kept per camera (JPEGs and crops count one each); the oldest are removed first",
    )
    max_bytes: int = Field(
        512 * 1024 * 1024, ge=1024 * 1024, le=1024**4,
        description="most bytes kept per camera (1 MiB..1 TiB); the oldest files are removed first",
    )
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of the snapshots (10..100)")
    mask_alpha: float = Field(
        0.4, ge=0.0, le=1.0, description="opacity of the mask's tint on the snapshot (its outline is always drawn)"
    )
    crop: bool = Field(
        True, description="also write <event_id>-crop.png: the object cut out by its mask, transparent background"
    )
    crop_margin_px: int = Field(
        0, ge=0, le=512, description="pixels of the frame kept around the object in the crop (transparent)"
    )

    def directory(self, camera_dir: str) -> Path:
        """Where this camera's snapshots go: ``<dir>/<camera_dir>``."""
        base = Path(self.dir).expanduser() if self.dir is not None else default_state_dir() / SNAPSHOT_SUBDIR
        return base / camera_dir


class EventsConfig(StrictModel):
    """Event lifecycle: ``new`` when a track is confirmed, ``update`` on a meaningful change, ``end``
    once per track. Loiter thresholds are seconds of dwell in one zone visit, per class name
    (``*`` = every class); a zone's own thresholds come first."""

    mask: Literal["rle", "polygon", "none"] = Field(
        "rle", description="the best frame's mask in the event: COCO RLE, COCO polygons, or left out"
    )
    path_points: int = Field(
        20, ge=2, le=1000, description="most points of an event's sparse path (centroids spread by distance)"
    )
    min_path_px: float = Field(
        10.0, ge=0.0, le=10_000.0, description="a centroid joins the path once this many pixels from the last point"
    )
    better_snapshot_delta: float = Field(
        0.1, ge=0.0, le=1.0,
        description="an update for a better best frame only when its score beats the last published one by this",
    )
    snapshot_interval_s: float = Field(
        1.0, ge=0.0, le=3600.0, description="at most one better-snapshot update per event this often (frame time)"
    )
    stationary_end_s: float = Field(
        300.0, gt=0.0, le=MAX_LOITER_S,
        description="an event whose object stays stationary this long ends (stationary_timeout); the parked "
        "object starts a new event only once it moves again",
    )
    max_crossings: int = Field(
        100, ge=1, le=100_000, description="most line crossings kept in an event (the most recent)"
    )
    default_loiter_s: Dict[str, float] = Field(
        default_factory=dict,
        description="loitering threshold per class name (* = any class) for zones without their own: an update "
        "once per visit when the dwell passes it",
    )
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig, description="best-frame snapshots")

    @field_validator("default_loiter_s")
    @classmethod
    def _loiter_bounds(cls, value: Dict[str, float]) -> Dict[str, float]:
        return check_loiter_map(value)


def check_loiter_map(value: Dict[str, float]) -> Dict[str, float]:
    """Refuse an empty class name or a threshold outside (0, a week] in a loiter map, naming it."""
    for name, seconds in value.items():
        if not name.strip():
            raise ValueError("class names must not be empty")
        if not 0.0 < float(seconds) <= MAX_LOITER_S:
            raise ValueError(f"{name!r}: expected seconds in (0, {MAX_LOITER_S:.0f}], found {seconds}")
    return value


def parse_events_config(raw: Any, origin: str = "events") -> EventsConfig:
    """Validate the ``events`` section alone, or raise a one-line ``ConfigError``."""
    return parse_section(EventsConfig, raw, origin)
