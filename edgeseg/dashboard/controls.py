"""What the dashboard may change in the running pipeline: a few methods the daemon implements.

The server validates every request before it calls these (``parse_control``), so an
implementation receives only values in range. A change must take effect on the next frames, not
on a restart: the confidence threshold and NMS mode by replacing the postprocessor's settings
(``FrameProcessor.finish`` reads them once per frame), the resolution through the processor's
``input_size`` (or the adaptive picker when ``None``), the source by switching the capture.
An implementation that refuses a value (a static model asked for another resolution, a source
that does not open) raises ``ValueError`` or an ``EdgesegError`` with a one-line reason; the
dashboard shows it to the user as a 400 answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Optional, Protocol, runtime_checkable

from edgeseg.postprocess.settings import NmsMethod

NMS_METHODS: Final[tuple[NmsMethod, ...]] = ("gaussian", "linear", "hard")
CONF_MIN, CONF_MAX = 0.0, 1.0
"""Confidence thresholds accepted: CONF_MIN <= value < CONF_MAX (as ``postprocess.conf_threshold``)."""
RESOLUTION_MIN, RESOLUTION_MAX, RESOLUTION_STEP = 320, 1280, 32
"""Fixed input sizes accepted (as ``model.imgsz``): multiples of 32 from 320 to 1280."""
SOURCE_MAX_LENGTH: Final = 2048
CONTROL_KEYS: Final = ("conf_threshold", "nms", "resolution", "source", "paused")
SHOWN_MAX_CHARS: Final = 40
"""A refused value is quoted in the one-line reason up to this many characters."""
_DIGITS = re.compile(r"[0-9]{1,5}")


@runtime_checkable
class Controls(Protocol):
    """The pipeline's knobs as the dashboard sees them.

    ``state()`` returns plain JSON values, at least: ``conf_threshold`` (float), ``nms`` (one of
    NMS_METHODS), ``resolution`` ("auto" or the fixed input size as an int), ``source`` (the URI,
    credentials masked), ``paused`` (bool); optionally ``resolutions`` (the fixed sizes the model
    accepts, for the page's menu) and anything else worth showing.
    """

    def set_conf_threshold(self, value: float) -> None: ...

    def set_nms(self, method: NmsMethod) -> None: ...

    def set_resolution(self, size: int | None) -> None:
        """A fixed square input size, or ``None`` for automatic (the adaptive picker)."""

    def set_source(self, uri: str) -> None: ...

    def set_paused(self, paused: bool) -> None: ...

    def state(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ControlRequest:
    """One validated POST /api/control body; ``None`` fields were not given.

    ``resolution`` is "auto" or an input size, so that "not given" and "auto" stay apart.
    """

    conf_threshold: Optional[float] = None
    nms: Optional[NmsMethod] = None
    resolution: Optional[int | str] = None
    source: Optional[str] = None
    paused: Optional[bool] = None

    def apply(self, controls: Controls) -> list[str]:
        """Call the setters for the given fields, in a fixed order; the names of those applied."""
        applied: list[str] = []
        if self.conf_threshold is not None:
            controls.set_conf_threshold(self.conf_threshold)
            applied.append("conf_threshold")
        if self.nms is not None:
            controls.set_nms(self.nms)
            applied.append("nms")
        if self.resolution is not None:
            controls.set_resolution(None if self.resolution == "auto" else int(self.resolution))
            applied.append("resolution")
        if self.source is not None:
            controls.set_source(self.source)
            applied.append("source")
        if self.paused is not None:
            controls.set_paused(self.paused)
            applied.append("paused")
        return applied


def shown(value: Any) -> str:
    """``value`` as a refusal quotes it: ASCII (no lone surrogate reaches a log or a reply), one
    line, cut to SHOWN_MAX_CHARS (a 16 KB list is not repeated back)."""
    text = ascii(value)
    return text if len(text) <= SHOWN_MAX_CHARS else text[:SHOWN_MAX_CHARS] + "..."


def _conf(value: Any) -> float:
    expected = f"conf_threshold: expected a number in [{CONF_MIN}, {CONF_MAX}), got {shown(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(expected)
    # Compared before any conversion: float(10**400) overflows, the comparison does not.
    if isinstance(value, float) and not math.isfinite(value) or not CONF_MIN <= value < CONF_MAX:
        raise ValueError(expected)
    return float(value)


def _nms(value: Any) -> NmsMethod:
    for method in NMS_METHODS:
        if value == method:
            return method
    raise ValueError(f"nms: expected one of {', '.join(NMS_METHODS)}, got {shown(value)}")


def _resolution(value: Any) -> int | str:
    expected = f"'auto' or a multiple of {RESOLUTION_STEP} from {RESOLUTION_MIN} to {RESOLUTION_MAX}"
    if value == "auto":
        return "auto"
    given = value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):  # ASCII only: "²".isdigit() is True
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"resolution: expected {expected}, got {shown(given)}")
    if not RESOLUTION_MIN <= value <= RESOLUTION_MAX or value % RESOLUTION_STEP:
        raise ValueError(f"resolution: expected {expected}, got {shown(given)}")
    return value


def check_source(value: Any) -> str:
    """A source URI as given to the dashboard, stripped; ``ValueError`` with one line otherwise.

    Refused at the door, before anything tries to open it: not a string, empty, too long,
    control characters (C0, DEL, C1), and text that is not valid Unicode: a lone surrogate such
    as ``\\udce9`` (what Python makes of a byte that is not UTF-8) cannot be encoded for the
    operating system, and OpenCV crashes the process on it.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("source: expected a non-empty URI string")
    if len(value) > SOURCE_MAX_LENGTH:
        raise ValueError(f"source: longer than {SOURCE_MAX_LENGTH} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ValueError("source: control characters are not allowed in a URI")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ascii(value[exc.start])
        raise ValueError(
            f"source: expected valid Unicode text, found the lone surrogate {bad} at character {exc.start} "
            "(a file name that is not UTF-8?)"
        ) from None
    return value.strip()


def _paused(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"paused: expected true or false, got {shown(value)}")
    return value


def parse_control(body: Any) -> ControlRequest:
    """Validate a decoded JSON body into a ControlRequest; ``ValueError`` with one line otherwise.

    The whole request is checked before anything is applied: a request with one bad field
    changes nothing.
    """
    if not isinstance(body, Mapping):
        raise ValueError(f"expected a JSON object of controls, got {type(body).__name__}")
    unknown = [k for k in body if k not in CONTROL_KEYS]
    if unknown:
        raise ValueError(f"unknown control {shown(unknown[0])}; expected any of {', '.join(CONTROL_KEYS)}")
    if not body:
        raise ValueError(f"no control given; expected any of {', '.join(CONTROL_KEYS)}")
    return ControlRequest(
        conf_threshold=_conf(body["conf_threshold"]) if "conf_threshold" in body else None,
        nms=_nms(body["nms"]) if "nms" in body else None,
        resolution=_resolution(body["resolution"]) if "resolution" in body else None,
        source=check_source(body["source"]) if "source" in body else None,
        paused=_paused(body["paused"]) if "paused" in body else None,
    )
