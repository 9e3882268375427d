"""The ground truth of a tracking evaluation: a video's per-frame COCO json with track ids.

The format is what ``edgeseg synth --video`` and ``--tracking-scene`` write (``export/data``):
COCO instances (image id = 0-based frame index, or the image's ``frame_index`` when given) where
every annotation carries a ``track_id``, the identity of the object it shows across frames
(the convention of COCO-style video sets such as TAO). A scene's truth adds its ``zones`` and
``lines`` (in the configuration's form), the true ``events`` and the per-frame ``membership``;
all are optional. Anything that cannot be used is refused at start, in one line that names the
file and the field (``truth t.json: field 'annotations.3.track_id': missing ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pydantic import ValidationError

from edgeseg.config.errors import describe_validation_error
from edgeseg.config.zones import LineConfig, ZoneConfig
from edgeseg.errors import EvalError
from edgeseg.evaluation.coco_json import read_coco_json
from edgeseg.sources.fsnames import printable_name

#: Frame rate assumed when the truth's ``info`` does not say (only times in seconds depend on it).
DEFAULT_FPS = 15.0


@dataclass(frozen=True)
class TruthObject:
    """One annotated object in one frame: its identity, class and visible mask (COCO RLE)."""

    track_id: int
    class_name: str
    rle: Mapping[str, Any]
    bbox: Tuple[float, float, float, float]


@dataclass(frozen=True)
class Truth:
    """A loaded, checked truth file.

    Attributes:
        path: the file, for messages.
        fps: frames per second of the video (``info.fps``), to turn frames into seconds.
        frames: the number of frames annotated (images listed).
        frame_size: (height, width) of the frames.
        objects: frame index -> the objects annotated in it (frames without objects are absent).
        class_names: the categories' names by category id.
        zones, lines: the scene's zones and lines, validated as the configuration's.
        zone_events: per track and zone: ``enter_frame`` and ``leave_frame`` (None: still inside).
        crossings: per line: ``track_id``, ``direction``, ``frame``.
        membership: per zone and track: ``frames``, ``inside`` (the mask rule), ``anchor_inside``.
    """

    path: str
    fps: float
    frames: int
    frame_size: Tuple[int, int]
    objects: Dict[int, List[TruthObject]]
    class_names: Dict[int, str]
    zones: Tuple[ZoneConfig, ...] = ()
    lines: Tuple[LineConfig, ...] = ()
    zone_events: Tuple[Mapping[str, Any], ...] = ()
    crossings: Tuple[Mapping[str, Any], ...] = ()
    membership: Tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    @property
    def has_events(self) -> bool:
        return bool(self.zones or self.lines)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_truth(path: str | Path) -> Truth:
    """Read and check a truth file; raise a one-line ``EvalError`` naming the file and the field."""
    path = Path(path)
    where = f"truth {printable_name(str(path))}"
    doc = read_coco_json(path, "truth", "a COCO instances file with track ids")

    class_names: Dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not _int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise EvalError(f"{where}: field 'categories.{i}': expected an integer id and a name")
        class_names[cat["id"]] = cat["name"]

    frame_of: Dict[int, int] = {}
    sizes = set()
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not _int(im.get("id")):
            raise EvalError(f"{where}: field 'images.{i}.id': expected an integer")
        frame: Any = im.get("frame_index", im["id"])
        if not _int(frame) or frame < 0:
            raise EvalError(f"{where}: field 'images.{i}.frame_index': expected a frame index >= 0, found {frame!r}")
        if not (_int(im.get("width")) and _int(im.get("height")) and im["width"] > 0 and im["height"] > 0):
            raise EvalError(f"{where}: field 'images.{i}': expected positive integer width and height")
        frame_of[im["id"]] = frame
        sizes.add((im["height"], im["width"]))
    if not frame_of:
        raise EvalError(f"{where}: field 'images': empty (no frame is annotated)")
    if len(sizes) > 1:
        raise EvalError(f"{where}: field 'images': frames of different sizes {sorted(sizes)} (expected one video)")
    frame_size = sizes.pop()

    objects: Dict[int, List[TruthObject]] = {}
    seen: Dict[Tuple[int, int], int] = {}
    for i, ann in enumerate(doc["annotations"]):
        f = f"annotations.{i}"
        if not isinstance(ann, dict):
            raise EvalError(f"{where}: field '{f}': expected an object")
        if "track_id" not in ann:
            raise EvalError(
                f"{where}: field '{f}.track_id': missing (eval-tracks needs a ground-truth track id on every "
                "annotation; edgeseg synth --video writes them)"
            )
        track_id = ann["track_id"]
        if not _int(track_id) or track_id < 0:
            raise EvalError(f"{where}: field '{f}.track_id': expected an integer >= 0, found {track_id!r}")
        if ann.get("image_id") not in frame_of:
            raise EvalError(f"{where}: field '{f}.image_id': no image has id {ann.get('image_id')!r}")
        if ann.get("category_id") not in class_names:
            raise EvalError(f"{where}: field '{f}.category_id': no category has id {ann.get('category_id')!r}")
        frame = frame_of[ann["image_id"]]
        if (frame, track_id) in seen:
            raise EvalError(
                f"{where}: field '{f}.track_id': track {track_id} is already in frame {frame} "
                f"(annotations.{seen[(frame, track_id)]}); a track has one instance per frame"
            )
        seen[(frame, track_id)] = i
        rle = _rle(ann.get("segmentation"), frame_size, f"{where}: field '{f}.segmentation'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise EvalError(f"{where}: field '{f}.bbox': expected [x, y, w, h]")
        objects.setdefault(frame, []).append(
            TruthObject(track_id, class_names[ann["category_id"]], rle, (bbox[0], bbox[1], bbox[2], bbox[3]))
        )

    info: Dict[str, Any] = doc["info"] if isinstance(doc.get("info"), dict) else {}
    fps = info.get("fps", DEFAULT_FPS)
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
        raise EvalError(f"{where}: field 'info.fps': expected a positive number, found {fps!r}")
    zones = _sections(doc, "zones", ZoneConfig, where)
    lines = _sections(doc, "lines", LineConfig, where)
    events: Dict[str, Any] = doc["events"] if isinstance(doc.get("events"), dict) else {}
    return Truth(
        path=printable_name(str(path)),
        fps=float(fps),
        frames=max(frame_of.values()) + 1,
        frame_size=frame_size,
        objects=objects,
        class_names=class_names,
        zones=tuple(zones),
        lines=tuple(lines),
        zone_events=_rows(events.get("zones"), ("track_id", "zone", "enter_frame", "leave_frame"), where,
                          "events.zones"),
        crossings=_rows(events.get("crossings"), ("track_id", "line", "direction", "frame"), where,
                        "events.crossings"),
        membership=_rows(doc.get("membership"), ("zone", "track_id", "frames", "inside"), where, "membership"),
    )


def _rle(segmentation: Any, frame_size: Tuple[int, int], where: str) -> Mapping[str, Any]:
    """The annotation's mask as COCO RLE (polygons are converted)."""
    from pycocotools import mask as coco_mask

    height, width = frame_size
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width]:
            raise EvalError(f"{where}.size: expected [{height}, {width}] (the frame's), found {size!r}")
        if isinstance(counts, list):
            return dict(coco_mask.frPyObjects(segmentation, height, width))
        if not isinstance(counts, str):
            raise EvalError(f"{where}.counts: expected a COCO RLE string or list")
        return {"size": [height, width], "counts": counts}
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        try:
            return dict(coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width)))
        except (TypeError, ValueError) as exc:
            raise EvalError(f"{where}: not COCO polygons ({exc})") from None
    raise EvalError(f"{where}: expected a COCO RLE or polygons")


def _sections(doc: Mapping[str, Any], key: str, model: Any, where: str) -> List[Any]:
    raw = doc.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise EvalError(f"{where}: field '{key}': expected a list, found {type(raw).__name__}")
    out = []
    names = set()
    for i, item in enumerate(raw):
        try:
            parsed = model.model_validate(item)
        except ValidationError as exc:
            raise EvalError(f"{where}: {describe_validation_error(exc, f'{key}.{i}')}") from None
        if parsed.name in names:
            raise EvalError(f"{where}: field '{key}.{i}.name': {parsed.name!r} is used twice")
        names.add(parsed.name)
        out.append(parsed)
    return out


def _rows(raw: Any, keys: Sequence[str], where: str, name: str) -> Tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise EvalError(f"{where}: field '{name}': expected a list, found {type(raw).__name__}")
    for i, row in enumerate(raw):
        if not isinstance(row, dict):
            raise EvalError(f"{where}: field '{name}.{i}': expected an object")
        for key in keys:
            if key not in row:
                raise EvalError(f"{where}: field '{name}.{i}.{key}': missing")
    return tuple(raw)

