"""``edgeseg eval``: COCO box and mask mAP of a model on an annotated image folder.

The images run through the same pipeline as ``edgeseg run`` (only the postprocessing defaults
differ: the COCO protocol wants nearly every candidate, so conf 0.001, hard NMS at IoU 0.7,
300 detections, multi-label, as Ultralytics' validator does), into the COCO results sink, and
pycocotools' COCOeval scores the file. Model classes are matched to the dataset's categories
by name, so a model trained with other class ids still evaluates correctly.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.app import build_processor, open_model, pipeline_options
from edgeseg.config import Config
from edgeseg.errors import EvalError
from edgeseg.evaluation.coco_json import read_coco_json
from edgeseg.model import Model
from edgeseg.pipeline.runner import Pipeline
from edgeseg.progress import progress_bar
from edgeseg.sinks.coco import CocoResultsSink
from edgeseg.sources.fsnames import is_dir_or_raise, is_file_or_false, printable_name
from edgeseg.sources.images import ImageSource

log = logging.getLogger(__name__)

#: Postprocessing of the COCO protocol, applied unless the user sets these fields.
EVAL_POSTPROCESS: dict[str, Any] = {
    "conf_threshold": 0.001,
    "iou_threshold": 0.7,
    "nms": "hard",
    "max_detections": 300,
    "multi_label": True,
}


@dataclass(frozen=True)
class EvalReport:
    """The scores of one evaluation (COCOeval stats[0] and stats[1] per task)."""

    images: int
    detections: int
    box_map: float
    box_map50: float
    mask_map: float
    mask_map50: float
    results_path: str

    def summary_line(self) -> str:
        return (
            f"eval: {self.images} images, {self.detections} detections; "
            f"box mAP50-95 {self.box_map:.3f} mAP50 {self.box_map50:.3f}; "
            f"mask mAP50-95 {self.mask_map:.3f} mAP50 {self.mask_map50:.3f}; wrote {self.results_path}"
        )


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def _load_annotations(path: Path) -> Any:
    from pycocotools.coco import COCO

    doc = read_coco_json(path, "annotations")
    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def category_mapping(class_names: tuple[str, ...], categories: list[dict[str, Any]]) -> dict[str, int]:
    """Model class name -> dataset category id, matched by normalised name."""
    by_name = {_normalise(c["name"]): int(c["id"]) for c in categories}
    return {n: by_name[_normalise(n)] for n in class_names if _normalise(n) in by_name}


def _score(gt: Any, results: list[dict[str, Any]], task: str, image_ids: list[int]) -> tuple[float, float]:
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, task)
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def evaluate(
    config: Config,
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    model: Model | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run the model of ``config`` (or an already loaded ``model``) over the images and score it."""
    images, annotations = Path(images), Path(annotations)
    if not is_dir_or_raise(images, EvalError, "images folder"):
        raise EvalError(f"images folder not found: {printable_name(str(images))}")
    gt = _load_annotations(annotations)
    entries = sorted(gt.dataset["images"], key=lambda im: str(im.get("file_name", "")))
    present = [im for im in entries if is_file_or_false(images / str(im.get("file_name", "")))]
    if not present:
        raise EvalError(f"none of the {len(entries)} images of {annotations} is in {images}")
    if len(present) < len(entries):
        log.warning("%d of %d annotated images are missing from %s; scoring the %d present",
                    len(entries) - len(present), len(entries), images, len(present))

    owned = model is None
    model = open_model(config) if model is None else model
    try:
        mapping = category_mapping(model.spec.class_names, gt.dataset["categories"])
        if not mapping:
            raise EvalError(f"model {model.spec.name}: none of its class names matches a category of {annotations}")
        unmapped = len(model.spec.class_names) - len(mapping)
        if unmapped:
            log.warning(
                "%d model classes have no category in %s; their detections are not scored", unmapped, annotations
            )
        image_ids = {str(im["file_name"]): int(im["id"]) for im in present}
        sink = CocoResultsSink(out, image_ids=image_ids, category_ids=mapping)
        source = ImageSource(str(images), [images / str(im["file_name"]) for im in present], config.source_options())
        processor = build_processor(config, model)
        with progress_bar(len(present) if progress else 0, "eval") as bar:
            Pipeline(source, processor, [sink], on_result=lambda _r: bar.update(1), **pipeline_options(config)).run()
        sink.close()
        source.close()
    finally:
        if owned:
            model.close()
    ids = list(image_ids.values())
    box = _score(gt, sink.results, "bbox", ids)
    mask = _score(gt, sink.results, "segm", ids)
    return EvalReport(len(present), len(sink.results), box[0], box[1], mask[0], mask[1], str(out))
