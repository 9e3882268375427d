"""The one JSON form of a frame result (schema ``edgeseg/frame-result`` version 1).

JSONL files, MQTT payloads and the dashboard all publish this dict, so it is built by one pure
function: same input, same output, no I/O. The contract it follows is the JSON Schema in
``edgeseg/schemas/frame_result.v1.json`` (:func:`load_schema`); tests validate against it.
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

from edgeseg.package_data import package_text
from edgeseg.sinks.base import MaskFormat
from edgeseg.sinks.mask_codec import polygons_from_crop, rle_from_crop
from edgeseg.sources.fsnames import printable_name
from edgeseg.structures import FrameResult, Instances

SCHEMA_NAME = "edgeseg/frame-result"
SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "schemas/frame_result.v1.json"

BOX_DECIMALS = 1
"""Boxes to a tenth of a pixel: finer than any detector's localisation error."""
SCORE_DECIMALS = 4
POLYGON_DECIMALS = 1
LATENCY_DECIMALS = 3
"""Microsecond resolution for stage latencies in milliseconds."""
TIMESTAMP_DECIMALS = 6
"""Microsecond resolution for capture times in seconds."""


def load_schema() -> dict[str, Any]:
    """The frame-result JSON Schema (draft 2020-12), read from the installed package."""
    schema: dict[str, Any] = json.loads(package_text("edgeseg", SCHEMA_RESOURCE))
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


def instances_to_dicts(instances: Instances, mask_format: MaskFormat) -> list[dict[str, Any]]:
    """The ``instances`` list of a frame result: one dict per instance, in order."""
    boxes = np.round(instances.boxes.astype(np.float64), BOX_DECIMALS).tolist()
    scores = np.round(instances.scores.astype(np.float64), SCORE_DECIMALS).tolist()
    areas = instances.areas.tolist()
    names = instances.names
    return [
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


def frame_result_to_dict(result: FrameResult, mask_format: MaskFormat) -> dict[str, Any]:
    """A frame result as a JSON-ready dict following schema ``edgeseg/frame-result`` v1."""
    frame = result.frame
    image_h, image_w = result.instances.image_size
    res_h, res_w = result.resolution
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
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
        "instances": instances_to_dicts(result.instances, mask_format),
    }
