"""Re-target a static EdgeSeg ONNX to another square input size, same weights.

An EdgeSeg model is fully convolutional except for one constant: its export bakes the anchor
centres of the decode head for the input size it was exported at (a ``(1, 2, N)`` grid of cell
centres over strides 8, 16 and 32). Replacing that grid with the one for another size, and the
declared input and output shapes, gives the same network at that size, without its training
checkpoint. That matters where the scene's scale differs from the training images': the demo
student was trained on 320x320 images, and the 640x360 demo video, letterboxed into a 320 input,
shows it every shape at half the size it learned (docs/events.md, the tracking figures).

    python -m export.retarget engines/demo/demo-320-fp32.onnx /tmp/demo-640-fp32.onnx --size 640
    edgeseg export --model /tmp/demo-640-fp32.onnx --out engines/demo-640 --precision fp32 ...

The grid found in the file must equal the one computed for its current size, or the file is
refused in one line: anything else is not the layout this knows how to change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from edgeseg.errors import ExportError

STRIDES = (8, 16, 32)


def anchor_grid(size: int, strides: tuple[int, ...] = STRIDES) -> npt.NDArray[np.float32]:
    """Cell centres (x, y) of every level, row by row, as the EdgeSeg head exports them: (1, 2, N)."""
    levels = []
    for stride in strides:
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        levels.append(np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride]))
    return np.concatenate(levels, axis=1)[None].astype(np.float32)


def _input_size(model: onnx.ModelProto, path: Path) -> int:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] != dims[3] or dims[2] <= 0:
        raise ExportError(f"{path}: expected a static square NCHW input, found {dims}")
    return int(dims[2])


def retarget(source: Path, target: Path, size: int) -> Path:
    """Write ``source`` re-targeted to ``size`` x ``size`` at ``target``; ``ExportError`` otherwise."""
    if size <= 0 or size % max(STRIDES):
        raise ExportError(f"--size {size}: expected a positive multiple of {max(STRIDES)}")
    model = onnx.load(str(source))
    current = _input_size(model, source)
    old, new = anchor_grid(current), anchor_grid(size)
    found = 0
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.attribute or not node.attribute[0].HasField("t"):
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if value.shape == old.shape and np.allclose(value, old):
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(new, node.attribute[0].t.name))
            found += 1
    if found != 1:
        raise ExportError(f"{source}: expected one baked anchor grid for {current}x{current} (an EdgeSeg export), "
                          f"found {found}")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size
    pred, proto = model.graph.output[0], model.graph.output[1]
    pred.type.tensor_type.shape.dim[2].dim_value = new.shape[2]
    proto.type.tensor_type.shape.dim[2].dim_value = proto.type.tensor_type.shape.dim[3].dim_value = size // 4
    del model.graph.value_info[:]  # shapes of the old size; ONNX Runtime infers them again
    for prop in model.metadata_props:
        if prop.key == "imgsz":
            prop.value = json.dumps([size, size])
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.retarget", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="static EdgeSeg ONNX (fp32)")
    parser.add_argument("target", type=Path, help="ONNX file to write")
    parser.add_argument("--size", type=int, required=True, help="new square input size (multiple of 32)")
    args = parser.parse_args(argv)
    try:
        retarget(args.source, args.target, args.size)
    except (ExportError, OSError, onnx.checker.ValidationError) as exc:
        print(f"retarget: {exc}", file=sys.stderr)
        return 2
    print(f"retarget: wrote {args.target} ({args.size}x{args.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
