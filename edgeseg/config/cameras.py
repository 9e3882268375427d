"""The ``cameras:`` section: several sources served by one daemon, each with its own name and settings.

    source:                 # what every camera inherits unless it says otherwise
      reconnect_max_s: 10
    cameras:
      - name: gate          # default: derived from the URI (clips/gate.mp4 -> gate)
        uri: rtsp://cam-gate.local/stream1
        imgsz: 320          # this camera's network input; default: the shared, picked size
        postprocess: {conf_threshold: 0.4}   # only the given fields replace postprocess:
        zones: [...]        # as the top-level zones:, in this camera's frame
      - uri: clips/yard.mp4
        loop: true

One model serves every camera (frames are batched), so what a camera may change is what does
not need another model: its source options, its input size, its decoding thresholds, its zones,
lines and extra sinks. A camera's name is one MQTT topic level (``<prefix>/<device>/<camera>/...``)
and a folder name (snapshots), hence the pattern, the uniqueness and the reserved names: the
levels ``<prefix>/<device>/`` already uses for the device itself.

What can be checked from the document alone is checked here, each refusal one line naming the
field (``field 'cameras': camera name 'gate' is used twice (cameras[0] and cameras[2])``);
``camera_specs`` then resolves every camera into a ``CameraSpec`` the pipeline opens as is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Final, FrozenSet, List, Optional, Sequence, Tuple

from pydantic import Field, field_validator, model_validator

from edgeseg import MAX_IMAGE_PIXELS
from edgeseg.config.errors import rule_error
from edgeseg.config.zones import LineConfig, LineList, ZoneConfig, ZoneList
from edgeseg.sources.base import SourceOptions
from edgeseg.sources.camera_name import NAME_PATTERN, camera_name
from edgeseg.strict import StrictModel

if TYPE_CHECKING:
    from edgeseg.config.schema import Config

#: Topic levels ``<prefix>/<device>/`` uses for the device itself: a camera of one of these names
#: would publish into them (``.../status`` is the device's availability-like level, ``.../events``
#: the device-level events...), so they are refused as camera names. Compared as written (MQTT
#: topic levels are case-sensitive).
RESERVED_CAMERA_NAMES: Final[FrozenSet[str]] = frozenset(
    {"available", "stats", "detections", "events", "zones", "status", "snapshots", "cameras", "homeassistant"}
)
#: Longest camera name (the pattern's own bound; a derived name with a suffix is cut to fit).
NAME_MAX: Final = 64

_NAME = re.compile(NAME_PATTERN)
_RESERVED_WORDS = ", ".join(sorted(RESERVED_CAMERA_NAMES))
_ZONES_NEED_TRACKER = "zones and lines need the tracker: set tracker.enabled: true (or run --track)"


def reserved_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot name a camera (it is a device-level topic level), or None."""
    if name in RESERVED_CAMERA_NAMES:
        return f"camera name {name!r} is reserved, a device-level MQTT topic level ({_RESERVED_WORDS})"
    return None


class CameraPostprocessOverride(StrictModel):
    """Only the fields given replace the shared postprocess: settings for this camera (NMS kind,
    refinement and the rest stay shared). Bounds are those of postprocess:."""

    conf_threshold: Optional[float] = Field(
        None, ge=0.0, lt=1.0, description="minimum class score for this camera; null = postprocess.conf_threshold"
    )
    iou_threshold: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="NMS IoU threshold for this camera; null = postprocess.iou_threshold"
    )
    max_detections: Optional[int] = Field(
        None, ge=1, le=1000, description="most instances per frame of this camera; null = postprocess.max_detections"
    )
    mask_threshold: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="mask probability cut for this camera; null = postprocess.mask_threshold"
    )
    masks: Optional[bool] = Field(
        None, description="compute instance masks for this camera (false: boxes only); null = postprocess.masks"
    )

    def given(self) -> Dict[str, Any]:
        """The fields this camera sets, by name (``{}`` when it sets none)."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class CameraConfig(StrictModel):
    """One camera. Every source option left out (null) is the top-level source: value; the
    longest reconnect backoff must be at least the first, once both are resolved."""

    name: Optional[str] = Field(
        None, pattern=NAME_PATTERN,
        description="the camera's name: one MQTT topic level, in events, snapshots, metrics and the dashboard "
        "(letters, digits, _ and -; unique; not a device-level topic: " + _RESERVED_WORDS + "); default: "
        "derived from the URI (a file's stem, a stream's host, a device node), -2, -3... when two derive the same",
    )
    uri: str = Field(
        ..., min_length=1, description="source URI: file, folder, glob, v4l2://, csi://, rtsp://, http://"
    )
    loop: Optional[bool] = Field(None, description="restart a file or folder source when it ends; null = source.loop")
    reconnect_initial_s: Optional[float] = Field(
        None, gt=0, le=60, description="first reconnect backoff; null = source.reconnect_initial_s"
    )
    reconnect_max_s: Optional[float] = Field(
        None, gt=0, le=3600, description="longest reconnect backoff; null = source.reconnect_max_s"
    )
    width: Optional[int] = Field(
        None, ge=0, le=8192, description="camera capture width (0 = device default); null = source.width"
    )
    height: Optional[int] = Field(
        None, ge=0, le=8192, description="camera capture height (0 = device default); null = source.height"
    )
    fps: Optional[int] = Field(
        None, ge=0, le=480, description="camera frame rate (0 = device default); null = source.fps"
    )
    max_pixels: Optional[int] = Field(
        None, ge=1, le=MAX_IMAGE_PIXELS,
        description="image files: skip an image whose header gives more pixels than this; null = source.max_pixels",
    )
    imgsz: Optional[int] = Field(
        None, ge=320, le=1280, multiple_of=32,
        description="this camera's fixed network input size (multiple of 32); null = the shared size "
        "(model.imgsz, or the one the adaptive picker chooses)",
    )
    postprocess: CameraPostprocessOverride = Field(
        default_factory=CameraPostprocessOverride,
        description="this camera's decoding thresholds",
    )
    zones: ZoneList = Field(
        default_factory=list,
        description="this camera's zones, in its frame (as the top-level zones:; needs the tracker)",
    )
    lines: LineList = Field(
        default_factory=list,
        description="this camera's tripwires, in its frame (as the top-level lines:; needs the tracker)",
    )
    sinks: List[str] = Field(
        default_factory=list,
        description="outputs of this camera only, each KIND:PATH or a broker URI, besides output.sinks "
        "(which every camera writes to, with its camera field)",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: Optional[str]) -> Optional[str]:
        if name is not None and name in RESERVED_CAMERA_NAMES:
            raise ValueError(
                f"is reserved, a device-level MQTT topic level ({_RESERVED_WORDS}): choose another name"
            )
        return name

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if (self.reconnect_initial_s is not None and self.reconnect_max_s is not None
                and self.reconnect_max_s < self.reconnect_initial_s):
            raise rule_error("reconnect_max_s", "must be >= reconnect_initial_s "
                             f"({self.reconnect_max_s:g} < {self.reconnect_initial_s:g})")
        return self


@dataclass(frozen=True)
class CameraSpec:
    """One camera as the pipeline opens it: every default resolved, the name final."""

    name: str
    uri: str
    #: The camera's source options, each its own value or the top-level source: one.
    source: SourceOptions
    #: Its fixed network input size, or None for the shared (picked) size.
    imgsz: Optional[int]
    #: The postprocess fields this camera overrides (``{}`` when none).
    postprocess: Dict[str, Any]
    zones: Tuple[ZoneConfig, ...]
    lines: Tuple[LineConfig, ...]
    #: Its own outputs, besides ``output.sinks``.
    sinks: Tuple[str, ...]


def _suffixed(base: str, n: int) -> str:
    suffix = f"-{n}"
    return base[: NAME_MAX - len(suffix)] + suffix


def resolve_names(cameras: Sequence[CameraConfig]) -> List[str]:
    """Every camera's final name, in order: its own, or one derived from its URI.

    Given names are kept as they are (they are checked unique elsewhere); a derived name that is
    taken (by a given name or an earlier derived one) gets the first free ``-2``, ``-3``...
    suffix, so naming one camera never renames another.
    """
    taken = {c.name for c in cameras if c.name is not None}
    names: List[str] = []
    for camera in cameras:
        if camera.name is not None:
            names.append(camera.name)
            continue
        base = camera_name(camera.uri)
        name, n = base, 2
        while name in taken:
            name, n = _suffixed(base, n), n + 1
        taken.add(name)
        names.append(name)
    return names


def split_named_source(text: str) -> Tuple[Optional[str], str]:
    """``NAME=URI`` as (NAME, URI); anything else as (None, text).

    Only a left side that is a camera name (letters, digits, _ and -: no ``:``, ``/`` or ``\\``)
    names the source, so ``rtsp://host/a=b``, ``C:\\clips\\a=b.mp4`` and ``./a=b.mp4`` stay whole
    URIs; so does a text naming a file or folder that exists as written (``gate=1.mp4`` on disk).
    ``NAME=`` with nothing after it is refused (``ValueError``), unless such a file exists.
    """
    name, sep, uri = text.partition("=")
    if not sep or _NAME.match(name) is None or os.path.exists(text):
        return None, text
    if not uri:
        raise ValueError(f"expected NAME=URI, found nothing after {text!r}")
    return name, uri


def _rule_duplicate_names(cameras: Sequence[CameraConfig]) -> None:
    first: Dict[str, int] = {}
    for i, camera in enumerate(cameras):
        if camera.name is None:
            continue
        if camera.name in first:
            raise rule_error("cameras", f"camera name {camera.name!r} is used twice "
                                        f"(cameras[{first[camera.name]}] and cameras[{i}])")
        first[camera.name] = i


def check_cameras(config: Config) -> None:
    """The rules of ``cameras:`` that span sections, as one-line errors naming the field.

    Raises ``PydanticCustomError`` (through ``rule_error``) so that the error keeps its field path
    when reported by ``describe_validation_error``. An empty ``cameras: []`` is no list at all.
    """
    cameras = config.cameras
    if not cameras:
        if config.uses_camera_topics():
            name = config.camera_name()
            problem = reserved_name_problem(name)
            if problem is not None:
                field = "source.name" if config.source.name else "source.uri"
                raise rule_error(field, problem + ("; choose another name" if config.source.name else
                                                   "; set source.name"))
        return
    if config.source.uri is not None:
        raise rule_error("cameras", "cameras and source.uri are exclusive: give every source as a camera's "
                                    "uri (source: then holds the options they inherit), or drop cameras")
    if config.source.name is not None:
        raise rule_error("source.name", "names the one camera of source.uri: with cameras, give each its "
                                        "cameras[i].name")
    for section in ("zones", "lines"):
        if getattr(config, section):
            raise rule_error(section, f"top-level {section} are refused with cameras: a {section[:-1]} belongs "
                                      f"to a camera, give it as cameras[i].{section}")
    _rule_duplicate_names(cameras)
    source = config.source
    for i, (camera, name) in enumerate(zip(cameras, resolve_names(cameras))):
        if camera.name is None and name in RESERVED_CAMERA_NAMES:
            raise rule_error(f"cameras.{i}.name", f"the name derived from the uri, {name!r}, is reserved (a "
                                                  f"device-level MQTT topic level: {_RESERVED_WORDS}); give the "
                                                  "camera a name")
        if (camera.zones or camera.lines) and not config.tracker.enabled:
            raise rule_error(f"cameras.{i}.{'zones' if camera.zones else 'lines'}", _ZONES_NEED_TRACKER)
        initial = source.reconnect_initial_s if camera.reconnect_initial_s is None else camera.reconnect_initial_s
        longest = source.reconnect_max_s if camera.reconnect_max_s is None else camera.reconnect_max_s
        if longest < initial:
            field = "reconnect_max_s" if camera.reconnect_max_s is not None else "reconnect_initial_s"
            raise rule_error(f"cameras.{i}.{field}", f"reconnect_max_s must be >= reconnect_initial_s, found "
                                                    f"{longest:g} < {initial:g} (a value left out is source:'s)")


def _source_options(camera: CameraConfig, shared: SourceOptions) -> SourceOptions:
    own = {name: getattr(camera, name)
           for name in ("loop", "reconnect_initial_s", "reconnect_max_s", "width", "height", "fps", "max_pixels")
           if getattr(camera, name) is not None}
    return replace(shared, **own)


def camera_specs(config: Config) -> List[CameraSpec]:
    """Every camera of ``config`` resolved, in config order (what ``Config.camera_specs`` returns).

    Without ``cameras:``, the one camera of ``source:`` (its name ``Config.camera_name()``, the
    top-level zones and lines, no overrides and no sinks of its own).
    """
    shared = config.source_options()
    if not config.cameras:
        return [CameraSpec(config.camera_name(), config.source.uri or "", shared, None, {},
                           tuple(config.zones), tuple(config.lines), ())]
    return [
        CameraSpec(name, camera.uri, _source_options(camera, shared), camera.imgsz, camera.postprocess.given(),
                   tuple(camera.zones), tuple(camera.lines), tuple(camera.sinks))
        for camera, name in zip(config.cameras, resolve_names(config.cameras))
    ]


__all__ = ["NAME_MAX", "RESERVED_CAMERA_NAMES", "CameraConfig", "CameraPostprocessOverride", "CameraSpec",
           "camera_specs", "check_cameras", "reserved_name_problem", "resolve_names", "split_named_source"]
