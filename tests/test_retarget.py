"""export.retarget: the demo student's static 320 ONNX re-targeted to 640 is the same network."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.errors import ExportError
from edgeseg.model import load_model
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.structures import Frame, Instances
from export.retarget import anchor_grid, retarget

ROOT = Path(__file__).resolve().parents[1]
DEMO_320 = ROOT / "engines" / "demo" / "demo-320-fp32.onnx"
IMAGE = sorted((ROOT / "engines" / "demo" / "selftest").glob("*.jpg"))[0]


def _instances(model_path: Path, image: np.ndarray) -> Instances:
    model = load_model(model_path, threads=1)
    try:
        processor = FrameProcessor(model, Postprocessor(PostprocessSettings(conf_threshold=0.3),
                                                        model.spec.class_names))
        work = processor.prepare(Frame(image, 0, "test", 0.0))
        assert work is not None
        return processor.finish(processor.infer(work)).instances
    finally:
        model.close()


def test_the_demo_export_bakes_the_grid_this_computes() -> None:
    model = onnx.load(str(DEMO_320))
    grids = [numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"]
    assert any(g.shape == (1, 2, 2100) and np.array_equal(g, anchor_grid(320)) for g in grids)


def test_retargeted_to_640_finds_the_same_objects_where_the_frame_repeats_the_image(tmp_path: Path) -> None:
    """A 640 frame tiling the 320 self-test image 2x2: in each tile, the 640 network finds what the
    320 one finds in the image itself (a wrong anchor grid would put the boxes elsewhere)."""
    target = retarget(DEMO_320, tmp_path / "demo-640.onnx", 640)
    image = cv2.imread(str(IMAGE))
    assert image.shape[:2] == (320, 320)
    alone = _instances(DEMO_320, image)
    tiled = _instances(target, np.tile(image, (2, 2, 1)))
    assert len(alone) >= 3
    for dx, dy in ((0, 0), (320, 0), (0, 320), (320, 320)):
        shifted = alone.boxes + np.array([dx, dy, dx, dy], np.float32)
        for box, cls in zip(shifted, alone.class_ids):
            same = tiled.boxes[tiled.class_ids == cls]
            assert len(same) and np.abs(same - box).max(axis=1).min() < 6.0, (dx, dy, box)


@pytest.mark.parametrize("size", [0, 100, -32])
def test_sizes_that_are_not_multiples_of_32_are_refused(tmp_path: Path, size: int) -> None:
    with pytest.raises(ExportError, match="multiple of 32"):
        retarget(DEMO_320, tmp_path / "x.onnx", size)


def test_a_model_without_the_baked_grid_is_refused(tmp_path: Path) -> None:
    model = onnx.load(str(DEMO_320))
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.shape == (1, 2, 2100):
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(value + 1, node.attribute[0].t.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    with pytest.raises(ExportError, match="expected one baked anchor grid for 320x320"):
        retarget(other, tmp_path / "x.onnx", 640)
