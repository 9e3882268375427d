"""Where a prototype-mask network stops being a feature extractor and starts decoding.

INT8 suits the convolutional trunk: its activations are feature maps with a few hundred
distinct magnitudes worth keeping. It does not suit the decode head that follows the last
convolution on each path to an output: there box coordinates in input pixels (0..640) meet
class scores (0..1) in one Concat, and one int8 scale for both rounds every score to 0. The
DFL box decoder is the other trap: a Softmax over 16 bins followed by a fixed 1x1 convolution
with weights 0..15 (an expectation), where 8-bit probabilities and 8-bit weights move a box
edge by a pixel or more. So the head is found from the graph's structure, not from node names,
and kept in float:

* a *decode convolution* is a Conv whose data input comes, through layout-only ops (Reshape,
  Transpose, ...), from a Softmax: it computes an expectation over a distribution rather than
  a feature map (the DFL of YOLOv8/YOLO11; a Softmax inside an attention block feeds a MatMul,
  not a Conv, so attention backbones are not caught);
* the head is every node from which no other convolution is reachable downstream, with decode
  convolutions not counted as convolutions, which takes the final Concat, the box arithmetic,
  the score Sigmoid, the prototype activation and the DFL chain, and nothing of the trunk.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import onnx

#: Ops whose output is a learned feature map (the ones INT8 is for).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Ops that only move or regroup values; a decode convolution may sit behind them.
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
#: Ops that turn logits into a distribution.
DISTRIBUTION_OPS = frozenset({"Softmax"})


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name, in place: quantisers select nodes by name."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def decode_convolutions(model: onnx.ModelProto) -> set[str]:
    """Names of the Convs that compute an expectation over a Softmax (see the module notes)."""
    producers = _producers(model)
    found = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or not node.input:
            continue
        source = producers.get(node.input[0])
        while source is not None and source.op_type in LAYOUT_OPS:
            source = producers.get(source.input[0]) if source.input else None
        if source is not None and source.op_type in DISTRIBUTION_OPS:
            found.add(node.name)
    return found


def decode_head(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that decode rather than extract features; to be kept in float.

    The graph is walked from the outputs backwards (ONNX graphs are topologically sorted):
    a node belongs to the head unless some consumer of its outputs is a weighted op that is
    not a decode convolution, or a node that is itself outside the head.
    """
    decode_convs = decode_convolutions(model)
    users = _consumers(model)
    feeds_trunk: dict[str, bool] = {}
    for node in reversed(model.graph.node):
        feeds_trunk[node.name] = any(
            (user.op_type in WEIGHTED_OPS and user.name not in decode_convs) or feeds_trunk.get(user.name, False)
            for out in node.output
            for user in users.get(out, ())
        )
    head = {name for name, feeds in feeds_trunk.items() if not feeds}
    trunk_weighted = {n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS} - decode_convs
    return head - trunk_weighted


def op_counts(model: onnx.ModelProto, names: Iterable[str] | None = None) -> dict[str, int]:
    """How many nodes of each op type the model has (only ``names`` when given); for reports."""
    wanted = set(names) if names is not None else None
    counts: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if wanted is None or node.name in wanted:
            counts[node.op_type] += 1
    return dict(counts)
