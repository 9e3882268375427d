"""Make a static batch-1 ONNX accept any batch: ``python -m export.rebatch SRC DST``.

The export stage pins every resolution to a static [1, 3, H, W] graph (onnxsim folds the shape
arithmetic into constants, which TensorRT and the quantisers want), and those constants bake the
batch of 1 into every Reshape target, e.g. ``[1, 32, -1]``. Batched inference (several cameras
per call) needs the batch dimension symbolic while height and width stay fixed, so this module
rewrites such a graph in place of re-exporting it:

* the image input and every output get the symbolic leading dimension ``batch``;
* a Reshape whose target is a constant starting with 1, applied to a tensor whose leading
  dimension is 1, gets 0 there instead: ONNX's "copy this dimension from the input" (with
  ``allowzero`` 0), so the frame axis passes through whatever its size. A leading 1 on a tensor
  that does not lead with 1 (a bias reshaped to [1, C, 1, 1]) is left alone;
* the stale ``value_info`` shapes are dropped and inferred again.

The same surgery applies to the fp32, Q/DQ and QOperator forms (quantisation adds no op that
fixes the batch). Everything else is trusted to broadcast over the batch, and that trust is
checked rather than assumed: the result is run under ONNX Runtime at batches 1, 2 and 4 on
different frames, and every frame's outputs must equal what the batch-1 source gives for that
frame alone. A graph that fails (a Resize with constant ``sizes``, an Expand to a baked shape,
frames mixed by a Reshape that moves the batch) is refused in one line naming what differs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgeseg.errors import ExportError

#: The name of the symbolic batch dimension (as the Ultralytics and torch exports call it).
BATCH_DIM = "batch"
#: Batches the rewritten graph is run at, each frame compared with the source at batch 1.
CHECK_BATCHES = (1, 2, 4)
#: Largest difference allowed between a frame's outputs in a batch and alone, relative to the
#: output's magnitude. Batched kernels may sum in another order (float rounding, ~1e-6); a graph
#: that mixes frames or drops one differs by the size of the values themselves.
CHECK_RTOL = 1e-4
#: Ops that carry a subgraph; a batch fixed inside one cannot be seen from here.
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
#: Ops whose result depends on the whole tensor, so on every frame of a batch: dynamic
#: quantisation takes one scale over the batch (ONNX Runtime's ``quantize_dynamic`` output).
_BATCH_MIXING_OPS = {
    "DynamicQuantizeLinear": "it is dynamically quantised (DynamicQuantizeLinear takes one scale over the whole "
                             "batch, so frames would change each other's results); rebatch the fp32 model and "
                             "quantise statically",
}


@dataclass(frozen=True)
class RebatchResult:
    """What ``rebatch_file`` did: the Reshapes rewritten and the worst difference it measured."""

    source: Path
    target: Path
    reshapes: int
    worst: float
    already: bool = False

    def one_line(self) -> str:
        if self.already:
            return f"{self.source} already has a symbolic batch dimension; copied unchanged to {self.target}"
        batches = ",".join(str(b) for b in CHECK_BATCHES)
        return (f"wrote {self.target}: any batch ({self.reshapes} Reshape target(s) rewritten); every frame at "
                f"batch {batches} matches batch 1 within {self.worst:.1e} (limit {CHECK_RTOL:.0e})")


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return out


def _shape_text(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def batch_is_symbolic(proto: onnx.ModelProto) -> bool:
    """The graph's one input already has a symbolic (or unknown) leading dimension."""
    inputs = _graph_inputs(proto)
    return len(inputs) == 1 and bool(_dims(inputs[0])) and not isinstance(_dims(inputs[0])[0], int)


def _check_image_graph(proto: onnx.ModelProto, origin: str) -> None:
    """Refuse, in one line, what is not a static [1, 3, H, W] image network with batch-led outputs."""
    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise ExportError(f"{origin}: cannot rebatch: expected one image input, found {len(inputs)}")
    dims = _dims(inputs[0])
    image = len(dims) == 4 and dims[1] == 3 and all(isinstance(d, int) and d > 0 for d in dims[2:])
    if not image:
        raise ExportError(f"{origin}: cannot rebatch: not an image network (input {inputs[0].name!r} is "
                          f"{_shape_text(dims)}; expected [1, 3, H, W] with a static height and width)")
    if dims[0] != 1:
        raise ExportError(f"{origin}: cannot rebatch: input {inputs[0].name!r} is {_shape_text(dims)}; "
                          f"rebatching starts from a batch of 1")
    for output in proto.graph.output:
        odims = _dims(output)
        if not odims or odims[0] != 1:
            raise ExportError(f"{origin}: cannot rebatch: output {output.name!r} is {_shape_text(odims)}; every "
                              f"output must lead with the batch of 1")
    mixing = next((n.op_type for n in proto.graph.node if n.op_type in _BATCH_MIXING_OPS), None)
    if mixing is not None:
        raise ExportError(f"{origin}: cannot rebatch: {_BATCH_MIXING_OPS[mixing]}")
    nested = sorted({n.op_type for n in proto.graph.node if n.op_type in _SUBGRAPH_OPS})
    if nested:
        raise ExportError(f"{origin}: cannot rebatch: the graph holds {', '.join(nested)} (subgraphs are not "
                          f"rewritten)")


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _leading_dims(proto: onnx.ModelProto) -> dict[str, int | str | None]:
    """Every tensor's leading dimension as ONNX shape inference sees it in the batch-1 graph."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - onnx raises InferenceError and friends; declared shapes remain
        inferred = proto
    graph = inferred.graph
    lead: dict[str, int | str | None] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(value)
        if dims:
            lead[value.name] = dims[0]
    for init in graph.initializer:
        lead[init.name] = int(init.dims[0]) if init.dims else None
    return lead


def _set_leading(value: onnx.ValueInfoProto, name: str) -> None:
    dim = value.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = name


def rebatch(proto: onnx.ModelProto, origin: str) -> tuple[onnx.ModelProto, int]:
    """A copy of the static batch-1 ``proto`` whose batch dimension is symbolic, and the count of
    Reshape targets rewritten. Not yet checked: ``check_rebatched`` runs it."""
    _check_image_graph(proto, origin)
    out = onnx.ModelProto.FromString(proto.SerializeToString())
    constants = _constants(out)
    lead = _leading_dims(out)
    rewritten: dict[str, str] = {}  # old target name -> rewritten initializer name
    count = 0
    for node in out.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = constants.get(node.input[1])
        if target is None or target.ndim != 1 or not target.size or int(target[0]) != 1:
            continue
        if lead.get(node.input[0]) != 1:
            continue  # a tensor that does not lead with 1 (a bias to [1, C, 1, 1]): no frame axis
        allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
        if allowzero:
            raise ExportError(f"{origin}: cannot rebatch: Reshape {node.name or node.output[0]!r} has allowzero=1, "
                              f"so 0 cannot copy the batch dimension")
        old = node.input[1]
        if old not in rewritten:
            new_target = target.copy()
            new_target[0] = 0
            name = f"{old}__rebatched"
            out.graph.initializer.append(numpy_helper.from_array(new_target.astype(target.dtype), name))
            rewritten[old] = name
        node.input[1] = rewritten[old]
        count += 1
    _set_leading(_graph_inputs(out)[0], BATCH_DIM)
    for output in out.graph.output:
        _set_leading(output, BATCH_DIM)
    del out.graph.value_info[:]  # batch-1 shapes; inferred again below
    try:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=False)
    except Exception:  # noqa: BLE001 - value_info is optional; ONNX Runtime and TensorRT infer shapes themselves
        pass
    return out, count


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def check_rebatched(
    source: onnx.ModelProto, rebatched: onnx.ModelProto, origin: str, batches: Sequence[int] = CHECK_BATCHES,
    seed: int = 0,
) -> float:
    """Run ``rebatched`` at each batch of ``batches`` on distinct random frames and compare every
    frame's outputs with ``source`` run on that frame alone; the worst relative difference.

    ExportError (one line) when a batch does not run or a frame's outputs differ by more than
    CHECK_RTOL: the graph fixes or mixes the batch somewhere the surgery did not reach.
    """
    try:
        single, batched = _session(source), _session(rebatched)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise ExportError(f"{origin}: cannot rebatch: ONNX Runtime refuses the rewritten graph "
                          f"({_first_line(exc)})") from None
    name = single.get_inputs()[0].name
    shape = [int(d) for d in single.get_inputs()[0].shape[1:]]
    outputs = [o.name for o in single.get_outputs()]
    rng = np.random.default_rng(seed)
    frames = rng.random((max(batches), *shape), dtype=np.float32)
    alone = [single.run(outputs, {name: frames[i : i + 1]}) for i in range(len(frames))]
    worst = 0.0
    for n in batches:
        try:
            got = batched.run(outputs, {name: frames[:n]})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise ExportError(f"{origin}: cannot rebatch: at batch {n} the rewritten graph fails in ONNX Runtime "
                              f"({_first_line(exc)})") from None
        for out_name, value in zip(outputs, got):
            if value.shape[0] != n:
                raise ExportError(f"{origin}: cannot rebatch: output {out_name!r} has {value.shape[0]} frame(s) at "
                                  f"batch {n} (a batch fixed inside the graph)")
            for i in range(n):
                ref = alone[i][outputs.index(out_name)]
                if value[i : i + 1].shape != ref.shape:
                    raise ExportError(f"{origin}: cannot rebatch: output {out_name!r} of frame {i} is "
                                      f"{value[i:i + 1].shape} at batch {n}, {ref.shape} alone")
                scale = max(float(np.abs(ref).max()), 1.0) if ref.size else 1.0
                diff = float(np.abs(value[i : i + 1] - ref).max()) / scale if ref.size else 0.0
                if diff > CHECK_RTOL:
                    raise ExportError(f"{origin}: cannot rebatch: output {out_name!r} of frame {i} at batch {n} "
                                      f"differs from the frame alone by {diff:.1e} (limit {CHECK_RTOL:.0e}); the "
                                      f"graph mixes frames")
                worst = max(worst, diff)
    return worst


def rebatch_proto(proto: onnx.ModelProto, origin: str) -> tuple[onnx.ModelProto, int, float]:
    """``rebatch`` and ``check_rebatched`` together: the checked graph, Reshapes rewritten, worst diff."""
    out, count = rebatch(proto, origin)
    return out, count, check_rebatched(proto, out, origin)


def rebatch_file(source: Path, target: Path) -> RebatchResult:
    """Rewrite the ONNX file ``source`` to take any batch and write it to ``target`` once checked."""
    if not source.is_file():
        raise ExportError(f"{source}: ONNX file not found")
    try:
        proto = onnx.load(str(source))
    except Exception as exc:  # noqa: BLE001 - DecodeError and friends for a file that is not ONNX
        raise ExportError(f"{source}: not a readable ONNX file ({type(exc).__name__})") from None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if batch_is_symbolic(proto):
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            return RebatchResult(source, target, 0, 0.0, already=True)
        out, count, worst = rebatch_proto(proto, str(source))
        onnx.save(out, str(target))
    except OSError as exc:
        raise ExportError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return RebatchResult(source, target, count, worst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.rebatch", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="static batch-1 ONNX (fp32, Q/DQ or QOperator)")
    parser.add_argument("target", type=Path, help="ONNX file to write, batch dimension symbolic")
    args = parser.parse_args(argv)
    try:
        result = rebatch_file(args.source, args.target)
    except ExportError as exc:
        print(f"rebatch: {exc}", file=sys.stderr)
        return 2
    print(f"rebatch: {result.one_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
