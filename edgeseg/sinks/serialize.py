"""The one JSON form of a frame result (schema ``edgeseg/frame-result``, version 3).

JSONL files, MQTT payloads and the dashboard all publish this dict, so it is built by one pure
function: same input, same output, no I/O. The contract it follows is the JSON Schema in
``edgeseg/schemas/frame_result.v3.json`` (:func:`load_schema`). Every result is written as
version 3: a top-level ``camera`` (the camera's name, so that one file or one subscriber can
tell several cameras apart; "" where a run has no camera, the self-test) and, when the result
has analytics (tracking on), a ``track_id`` per instance (null for an instance without a
confirmed track); without tracking the instances carry no ``track_id``.

Earlier versions, kept (``frame_result.v1.json``, ``frame_result.v2.json``) for consumers and
files written before: version 1 (runs without tracking) had neither ``camera`` nor ``track_id``;
version 2 (runs with tracking) was version 1 plus ``track_id`` on every instance. A version 3
document without tracking is version 1 plus ``camera``; with tracking, version 2 plus ``camera``.
A consumer reads ``version`` to know which it has.
Floats are rounded to what the numbers mean (a tenth of a pixel, four decimals of score) to keep
payloads small on constrained links. File names and URIs are text as the file system gave them,
which may hold bytes that are not UTF-8; they are written with each such byte as ``\\xNN``
(``sources.fsnames.printable_name``), because the ``\\udcNN`` escape ``json.dumps`` would use is an
unpaired surrogate that strict JSON parsers refuse.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeseg.package_data import package_text
from edgeseg.sinks.base import MaskFormat
from edgeseg.sinks.mask_codec import polygons_from_crop, rle_from_crop
from edgeseg.sources.fsnames import printable_name
from edgeseg.structures import FrameResult, Instances

SCHEMA_NAME = "edgeseg/frame-result"
VERSION_UNTRACKED = 1
"""Frame results of runs without tracking, before cameras (no longer written)."""
VERSION_TRACKED = 2
"""Frame results with analytics before cameras: version 1 plus ``track_id`` per instance (no longer written)."""
VERSION_CAMERA = 3
"""What is written now: ``camera`` on every result, ``track_id`` per instance when tracking."""
SCHEMA_VERSION = VERSION_CAMERA
"""The latest version, the one written."""
SCHEMA_RESOURCES = {
    VERSION_UNTRACKED: "schemas/frame_result.v1.json",
    VERSION_TRACKED: "schemas/frame_result.v2.json",
    VERSION_CAMERA: "schemas/frame_result.v3.json",
}
SCHEMA_RESOURCE = SCHEMA_RESOURCES[SCHEMA_VERSION]

BOX_DECIMALS = 1
"""Boxes to a tenth of a pixel: finer than any detector's localisation error."""
SCORE_DECIMALS = 4
POLYGON_DECIMALS = 1
LATENCY_DECIMALS = 3
"""Microsecond resolution for stage latencies in milliseconds."""
TIMESTAMP_DECIMALS = 6
"""Microsecond resolution for capture times in seconds."""


def load_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The frame-result JSON Schema (draft 2020-12) of ``version``, read from the installed package.

    The default is the version written now (3); a document says its own in ``version``.
    """
    if version not in SCHEMA_RESOURCES:
        raise ValueError(f"frame-result schema version must be one of {sorted(SCHEMA_RESOURCES)}, got {version!r}")
    schema: dict[str, Any] = json.loads(package_text("edgeseg", SCHEMA_RESOURCES[version]))
    return schema


def _mask_dict(instances: Instances, index: int, mask_format: MaskFormat) -> dict[str, Any] | None:
    """The ``mask`` field of one instance, or ``None`` when masks are off or absent."""
    if mask_format == "none" or not instances.has_masks:
        return None
    crop = instances.masks[index]
    region = instances.mask_boxes[index]
    if mask_format == "rle":
        rle = rle_from_crop(crop, region, instances.image_size)
        return {"format": "rle", "size": rle["size"], "counts": rle["counts"]}
    if mask_format == "polygon":
        polygons = [
            [round(v, POLYGON_DECIMALS) for v in polygon] for polygon in polygons_from_crop(crop, region)
        ]
        return {"format": "polygon", "polygons": polygons}
    raise ValueError(f"mask format must be one of rle, polygon, none; got {mask_format!r}")


def instances_to_dicts(
    instances: Instances, mask_format: MaskFormat, track_ids: npt.NDArray[np.integer] | None = None
) -> list[dict[str, Any]]:
    """The ``instances`` list of a frame result: one dict per instance, in order.

    ``track_ids`` (aligned with the instances; -1, or any id below 1, for none) adds ``track_id``
    to each, null where there is no track (tracking on).
    """
    boxes = np.round(instances.boxes.astype(np.float64), BOX_DECIMALS).tolist()
    scores = np.round(instances.scores.astype(np.float64), SCORE_DECIMALS).tolist()
    areas = instances.areas.tolist()
    names = instances.names
    out = [
        {
            "class_id": int(instances.class_ids[i]),
            "class_name": names[i],
            "score": scores[i],
            "box": boxes[i],
            "area": int(areas[i]),
            "mask": _mask_dict(instances, i, mask_format),
        }
        for i in range(len(instances))
    ]
    if track_ids is not None:
        ids = np.asarray(track_ids).reshape(-1)
        if len(ids) != len(instances):
            raise ValueError(f"analytics.tracks.track_ids: expected one per instance ({len(instances)}), "
                             f"found {len(ids)}")
        for entry, track_id in zip(out, ids.tolist()):
            entry["track_id"] = int(track_id) if track_id >= 1 else None
    return out


def frame_result_to_dict(result: FrameResult, mask_format: MaskFormat) -> dict[str, Any]:
    """A frame result as a JSON-ready dict following schema ``edgeseg/frame-result`` version 3:
    its camera, and track ids when the result has analytics."""
    analytics = result.analytics
    track_ids = None if analytics is None else analytics.tracks.track_ids
    frame = result.frame
    image_h, image_w = result.instances.image_size
    res_h, res_w = result.resolution
    return {
        "schema": SCHEMA_NAME,
        "version": VERSION_CAMERA,
        "camera": str(result.camera),
        "frame_id": int(frame.frame_id),
        "source": printable_name(frame.source),
        "name": printable_name(frame.name),
        "timestamp": round(float(frame.timestamp), TIMESTAMP_DECIMALS),
        "model": printable_name(result.model),
        "resolution": [int(res_h), int(res_w)],
        "image_size": [int(image_h), int(image_w)],
        "latency_ms": {
            str(stage): round(float(ms), LATENCY_DECIMALS) for stage, ms in result.latency_ms.items()
        },
        "instances": instances_to_dicts(result.instances, mask_format, track_ids),
    }
