"""The configuration file: one YAML document, every field described, bounded and defaulted.

In the manner of Frigate's config: unknown keys are refused (a typo never silently means "use
the default"), each field has a description and bounds, and the document carries a ``version``.
Command-line flags are applied to the raw document before validation, so an override is
checked exactly like the file it overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, List, Literal, Optional, Tuple

from pydantic import Field, ValidationError, model_validator

from edgeseg import MAX_IMAGE_PIXELS
from edgeseg.config.adaptive import AdaptiveConfig
from edgeseg.config.cameras import CameraConfig, CameraSpec, camera_specs, check_cameras
from edgeseg.config.dashboard import DashboardConfig
from edgeseg.config.engines import EnginesConfig
from edgeseg.config.errors import describe_validation_error
from edgeseg.config.events import EventsConfig
from edgeseg.config.mqtt import MqttConfig
from edgeseg.config.openvino import OpenVinoConfig
from edgeseg.config.tracker import TrackerConfig
from edgeseg.config.yaml_loader import load_yaml
from edgeseg.config.zones import LineList, ZoneList
from edgeseg.errors import ConfigError
from edgeseg.postprocess.settings import (
    DEFAULT_CONF_THRESHOLD,
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_SOFT_SIGMA,
    PostprocessSettings,
    RefineSettings,
)
from edgeseg.sinks.base import SinkOptions
from edgeseg.sources.base import DEFAULT_MAX_PIXELS, RECONNECT_INITIAL_S, RECONNECT_MAX_S, SourceOptions
from edgeseg.sources.camera_name import NAME_PATTERN, camera_name
from edgeseg.strict import StrictModel

#: The configuration format this code reads.
CONFIG_VERSION: Final = 1
#: The service's configuration, read by `serve` and `engines` when no --config is given, so that
#: a public key configured there is enforced whether or not the engineer names the file.
DEFAULT_SERVICE_CONFIG: Final = "/etc/edgeseg/config.yaml"


class ModelConfig(StrictModel):
    path: Optional[str] = Field(None, description="ONNX model file (or engine bundle directory)")
    imgsz: Optional[int] = Field(
        None, ge=320, le=1280, multiple_of=32,
        description="input size for dynamic models (multiple of 32); static models use their own",
    )
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = Field(
        "auto",
        description="what runs the model: auto = ONNX Runtime for an ONNX file, a bundle's own choice "
        "(TensorRT where its plan fits, else ONNX Runtime); openvino = the ONNX file (or a bundle's "
        "fp32 ONNX) through OpenVINO (model.openvino); onnxruntime or tensorrt = only that runtime's engines",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where ONNX Runtime runs")
    threads: int = Field(0, ge=0, le=256, description="inference threads; 0 = every physical core")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="engine precision to pick from a bundle; auto = fastest measured"
    )
    openvino: OpenVinoConfig = Field(
        default_factory=OpenVinoConfig,
        description="the OpenVINO backend (model.backend: openvino): device, inference precision, compile cache",
    )


class SourceConfig(StrictModel):
    """The longest reconnect backoff (reconnect_max_s) must be at least the first (reconnect_initial_s)."""

    uri: Optional[str] = Field(None, description="source URI: file, folder, glob, v4l2://, csi://, rtsp://, http://")
    name: Optional[str] = Field(
        None, pattern=NAME_PATTERN,
        description="the camera's name in events and snapshots (letters, digits, _ and -); "
        "default: derived from the URI (a file's stem, a stream's host, a device node)",
    )
    loop: bool = Field(False, description="restart a file or folder source when it ends")
    reconnect_initial_s: float = Field(RECONNECT_INITIAL_S, gt=0, le=60, description="first reconnect backoff")
    reconnect_max_s: float = Field(RECONNECT_MAX_S, gt=0, le=3600, description="longest reconnect backoff")
    width: int = Field(0, ge=0, le=8192, description="camera capture width; 0 = device default")
    height: int = Field(0, ge=0, le=8192, description="camera capture height; 0 = device default")
    fps: int = Field(0, ge=0, le=480, description="camera frame rate; 0 = device default")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, le=MAX_IMAGE_PIXELS,
        description="image files: skip (one log line) an image whose header gives more pixels "
        "(width x height) than this, before decoding it; guards against decompression bombs",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> SourceConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


class RefineConfig(StrictModel):
    open_px: int = Field(0, ge=0, le=32, description="opening radius (removes specks), pixels; 0 = off")
    close_px: int = Field(0, ge=0, le=32, description="closing radius (fills holes), pixels; 0 = off")
    min_area: int = Field(0, ge=0, le=1_000_000, description="drop mask components smaller than this; 0 = off")


class PostprocessConfig(StrictModel):
    conf_threshold: float = Field(DEFAULT_CONF_THRESHOLD, ge=0.0, lt=1.0, description="minimum class score")
    nms: Literal["gaussian", "linear", "hard"] = Field("gaussian", description="Soft-NMS kind, or hard NMS")
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, gt=0.0, le=1.0, description="NMS IoU threshold")
    soft_sigma: float = Field(DEFAULT_SOFT_SIGMA, gt=0.0, le=10.0, description="Gaussian Soft-NMS sigma")
    max_detections: int = Field(100, ge=1, le=1000, description="most instances per frame")
    multi_label: bool = Field(False, description="allow one instance per class above threshold per anchor")
    masks: bool = Field(True, description="compute instance masks (off: boxes only)")
    mask_threshold: float = Field(DEFAULT_MASK_THRESHOLD, gt=0.0, lt=1.0, description="mask probability cut")
    refine: RefineConfig = Field(default_factory=RefineConfig, description="morphological mask refinement")

    def settings(self) -> PostprocessSettings:
        return PostprocessSettings(
            conf_threshold=self.conf_threshold,
            nms=self.nms,
            iou_threshold=self.iou_threshold,
            soft_sigma=self.soft_sigma,
            max_detections=self.max_detections,
            multi_label=self.multi_label,
            masks=self.masks,
            mask_threshold=self.mask_threshold,
            refine=RefineSettings(self.refine.open_px, self.refine.close_px, self.refine.min_area),
        )


class OutputConfig(StrictModel):
    sinks: List[str] = Field(
        default_factory=list, description="outputs, each KIND:PATH or a broker URI (the kinds: edgeseg run --help)"
    )
    mask_format: Literal["rle", "polygon", "none"] = Field("rle", description="mask encoding in JSON outputs")
    video_fps: float = Field(25.0, gt=0, le=240, description="frame rate of annotated videos")


class PipelineConfig(StrictModel):
    inference_priority: bool = Field(True, description="give the inference thread the highest priority allowed")
    inference_workers: int = Field(
        1, ge=1, le=8,
        description="inference threads running frames concurrently (use with model.threads so that "
        "workers x threads matches the cores)",
    )
    max_frames: int = Field(0, ge=0, description="stop after this many frames; 0 = until the source ends")
    batch: int = Field(
        1, ge=1, le=32,
        description="most frames (of different cameras) gathered into one inference call; at most the "
        "engine's batch size (a batch-1 engine takes them one at a time)",
    )
    gather_ms: float = Field(
        5.0, ge=0.0, le=1000.0,
        description="after a batch's first frame, how long the inference thread waits for other cameras' "
        "frames before it runs a partial batch (a slow camera never delays the others longer); 0 = no wait",
    )


class ServiceConfig(StrictModel):
    stats_interval_s: float = Field(10.0, ge=1.0, le=3600.0, description="STATUS=, log and MQTT stats period")
    stall_s: float = Field(
        30.0, ge=2.0, le=3600.0,
        description="a stage thread stuck this long withholds the watchdog ping (keep <= WatchdogSec)",
    )
    log_format: Literal["auto", "journald", "plain"] = Field(
        "auto", description="journald priority prefixes; auto = when run by systemd"
    )


class Config(StrictModel):
    version: Literal[1] = Field(CONFIG_VERSION, description="configuration format version")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="the model: an ONNX file or an engine bundle, and where it runs"
    )
    source: SourceConfig = Field(
        default_factory=SourceConfig, description="where frames come from, and how a live source reconnects"
    )
    cameras: List[CameraConfig] = Field(
        default_factory=list,
        description="several cameras served by one process (one model, batched inference): each a uri with "
        "its own name, source options, input size, thresholds, zones, lines and sinks; source: holds what "
        "they inherit. Exclusive with source.uri (and top-level zones and lines); [] = none",
    )
    postprocess: PostprocessConfig = Field(
        default_factory=PostprocessConfig, description="decoding: score threshold, NMS, instance masks"
    )
    output: OutputConfig = Field(
        default_factory=OutputConfig, description="where frame results go, and how masks are encoded"
    )
    pipeline: PipelineConfig = Field(
        default_factory=PipelineConfig, description="the stage threads: inference priority and workers, frame limit"
    )
    service: ServiceConfig = Field(
        default_factory=ServiceConfig,
        description="the daemon (edgeseg serve): stats period, stall watchdog, log format",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT output; off without a uri")
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="the live web dashboard")
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig, description="adaptive input resolution")
    engines: EnginesConfig = Field(
        default_factory=EnginesConfig, description="installed bundles, signature key, the daemon's pid file"
    )
    tracker: TrackerConfig = Field(
        default_factory=TrackerConfig,
        description="multi-object tracking (ByteTrack-style, mask IoU); on with enabled or run --track",
    )
    zones: ZoneList = Field(
        default_factory=list, description="polygons whose occupancy is decided by the mask (needs the tracker)"
    )
    lines: LineList = Field(
        default_factory=list, description="tripwires crossed by a track's mask centroid, with a direction "
        "(needs the tracker)",
    )
    events: EventsConfig = Field(
        default_factory=EventsConfig, description="tracked-object events: payload, snapshots, loitering"
    )

    @model_validator(mode="after")
    def _cameras_rules(self) -> Config:
        check_cameras(self)  # before the next: top-level zones with cameras say where zones belong
        return self

    @model_validator(mode="after")
    def _zones_need_the_tracker(self) -> Config:
        if (self.zones or self.lines) and not self.tracker.enabled:
            raise ValueError("zones and lines need the tracker: set tracker.enabled: true (or run --track)")
        return self

    @model_validator(mode="after")
    def _snapshots_to_publish(self) -> Config:
        if self.mqtt.publish_snapshots and not (self.tracker.enabled and self.events.snapshots.enabled):
            raise ValueError("mqtt.publish_snapshots needs snapshots: set tracker.enabled and "
                             "events.snapshots.enabled")
        return self

    def camera_name(self) -> str:
        """The camera's name: ``source.name``, or one derived from the URI (with ``cameras:``, the
        first camera's; ``camera_specs`` names them all)."""
        if self.cameras:
            return self.camera_specs()[0].name
        return self.source.name or camera_name(self.source.uri or "")

    def camera_specs(self) -> List[CameraSpec]:
        """Every camera, resolved (names final, ``source:`` defaults filled in), in config order;
        without ``cameras:``, the one camera of ``source:``."""
        return camera_specs(self)

    def uses_camera_topics(self) -> bool:
        """Whether MQTT topics carry a camera level (``mqtt.camera_topics``; ``auto``: when the
        config has a ``cameras:`` list, so a one-source config keeps its topics)."""
        mode = getattr(self.mqtt, "camera_topics", "auto")
        return bool(self.cameras) if mode == "auto" else mode == "on"

    def sink_specs(self) -> List[Tuple[str, str]]:
        """Every output of the file with the field that names it: ``output.sinks`` (shared by
        the cameras) and each camera's own ``cameras.N.sinks``."""
        out = [("output.sinks", spec) for spec in self.output.sinks]
        for i, camera in enumerate(self.cameras):
            out.extend((f"cameras.{i}.sinks", spec) for spec in camera.sinks)
        return out

    def source_options(self) -> SourceOptions:
        s = self.source
        return SourceOptions(
            s.loop, s.reconnect_initial_s, s.reconnect_max_s, s.width, s.height, s.fps, max_pixels=s.max_pixels
        )

    def sink_options(self, append: bool = False) -> SinkOptions:
        return SinkOptions(mask_format=self.output.mask_format, fps=self.output.video_fps, append=append,
                           camera_topics=self.uses_camera_topics())


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_config(raw: Any, overrides: Mapping[str, Any] | None = None, origin: str = "config") -> Config:
    """Validate a raw document (plus overrides) into a Config, or raise a one-line ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, found {type(raw).__name__}")
    doc = _deep_merge(raw, overrides or {})
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {describe_validation_error(exc)}") from None


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML file (or defaults when ``path`` is None) and apply command-line overrides."""
    if path is None:
        return parse_config({}, overrides, origin="command line")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p}: cannot read ({exc})") from None
    raw = load_yaml(text, f"config file {p}")  # duplicate keys and alias bombs refused
    return parse_config(raw, overrides, origin=str(p))
