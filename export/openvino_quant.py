"""INT8 for OpenVINO: NNCF post-training quantisation with the decode head kept in float.

Why not the Q/DQ ONNX that ``export.quantize`` makes for TensorRT: OpenVINO runs the 640
yolov8n-seg's Q/DQ file fast and decodes nothing from it (class scores collapse, mask mAP 0.000
on the 158 COCO images, issue 15). NNCF quantises OpenVINO's own graph instead and honours an
ignored scope, so::

    fp32 ONNX ─► openvino.convert_model ─► nncf.quantize(calibration images, ignored scope)
        ─► IR (.xml + .bin, weights not compressed to fp16) ─► accuracy gate ─► kept or refused

* The ignored scope is found from the ONNX graph's structure (``export.graph.decode_head``, the
  same analysis that keeps ``export.quantize``'s head in float): the DFL, the box arithmetic, the
  score Sigmoid, the final Concats and the prototype activation; plus the *output layers*, the
  last convolution on every path to an output (box, class and mask-coefficient convolutions per
  scale, and the prototype branch's last convolution), whose outputs are decoded values rather
  than features. Those ONNX nodes are then named as OpenVINO names them (see ``ov_names``).
* Calibration tensors come from the runtime's own ``Preprocessor`` with the normalisation the
  model's metadata declares (``export.calibration``), at the input size being exported.
* The gate: the fp32 ONNX (ONNX Runtime) and the INT8 IR (OpenVINO) decode the same images
  through the runtime's frame path (``edgeseg.bundle.selftest.decode_instances``) and the IR's
  instances must meet the self-test's int8 tolerances against the fp32 ones, or it is refused
  with its figures in one line and no file is left behind. The gate images are the calibration
  folder's images with most fp32 instances (as the bundle self-test picks its own).

Measured on the 640 yolov8n-seg (80 COCO train images, 158 val images, fp32 box/mask mAP
0.372/0.307): symmetric activations (NNCF's ``performance`` preset) with the output layers in
float 0.372/0.307 with the float parts in f32 and 0.370/0.306 in bf16; asymmetric (``mixed``)
0.369/0.303; the decode head alone in float 0.368/0.305. Symmetric is also the faster form.

    python -m export.openvino_quant SRC.onnx OUT.xml --images DIR [--imgsz N] [--count N]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import onnx
from google.protobuf.message import DecodeError

from edgeseg.bundle.selftest import (
    SELFTEST_IMAGES,
    Form,
    SelfTestResult,
    SettingsRecord,
    compare,
    decode_instances,
    judge,
)
from edgeseg.errors import EdgesegError, ExportError
from edgeseg.model import Model, load_model, spec_from_network
from edgeseg.sources.images import decode_image
from edgeseg.structures import ImageArray
from export.calibration import CalibrationInput, PreprocessedReader, calibration_images
from export.graph import WEIGHTED_OPS, decode_convolutions, decode_head, name_nodes

log = logging.getLogger(__name__)

#: Calibration images used when the folder has that many (NNCF's own default subset size).
DEFAULT_COUNT = 300
#: Images the gate decodes with both models: twice the self-test's four, so that the 320 input
#: of yolov8n-seg (13 instances above the floor on four images) still gives enough to judge.
GATE_IMAGES = 2 * SELFTEST_IMAGES
#: The tolerance row the gate applies: the self-test's int8 bounds (both int8 forms share them).
GATE_FORM: Final[Form] = "int8-qoperator"
#: OpenVINO rt_info section holding the ONNX metadata_props (names, stride, normalisation ...).
RT_INFO_SECTION = "framework"
#: Key recording how the IR was quantised (JSON), next to the model's metadata.
QUANTIZATION_KEY = "edgeseg.quantization"
#: Ops that never carry a quantiser and need no place in the ignored scope.
_STRUCTURAL_OV_OPS = frozenset({"Constant", "Parameter", "Result"})


@dataclass(frozen=True)
class HeadScope:
    """The nodes kept in float, in ONNX names.

    Attributes:
        decode: the decode head (``export.graph.decode_head``).
        output_layers: the last weighted layer on each path to an output.
        tensors: every output tensor name of those nodes (how OpenVINO's ops are matched to them).
    """

    decode: frozenset[str]
    output_layers: frozenset[str]
    tensors: frozenset[str]

    @property
    def nodes(self) -> frozenset[str]:
        return self.decode | self.output_layers


@dataclass(frozen=True)
class QuantResult:
    """What ``quantize_openvino`` made and how it compared with fp32."""

    path: Path
    size: tuple[int, int]
    images: int
    ignored: int
    gate: SelfTestResult
    seconds: float


def read_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX graph at ``path`` (no external data), or a one-line ExportError."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise ExportError(f"model {path}: not a readable ONNX file ({exc})") from None


def find_head(model: onnx.ModelProto, origin: str = "model") -> HeadScope:
    """The decode head and output layers of a prototype-mask network, to keep in float.

    The head must decode: it must produce the rank-3 prediction output and hold a Sigmoid (the
    class scores). A graph whose head holds neither is not a network this module knows how to
    quantise safely, and is refused in one line rather than quantised whole.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())  # name_nodes works in place
    name_nodes(model)
    head = decode_head(model)
    nodes = {n.name: n for n in model.graph.node}
    producers = {out: n for n in model.graph.node for out in n.output}
    outputs = {o.name: len(o.type.tensor_type.shape.dim) for o in model.graph.output}
    prediction = [name for name, rank in outputs.items() if rank == 3]
    decodes = bool(prediction) and all(producers.get(p) is not None and producers[p].name in head for p in prediction)
    if not decodes or not any(nodes[n].op_type == "Sigmoid" for n in head):
        raise ExportError(
            f"{origin}: cannot find the decode head (expected a Sigmoid of class scores in float decoding nodes "
            f"that produce a [1, 4+nc+k, N] output); refusing to quantise it without one"
        )
    decode_convs = decode_convolutions(model)
    users: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.name)
    layers = set()
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.name in decode_convs or node.name in head:
            continue
        readers = [u for out in node.output for u in users.get(out, ())]
        if set(node.output) & set(outputs) or (readers and all(u in head for u in readers)):
            layers.add(node.name)
    tensors = {t for name in head | layers for t in nodes[name].output}
    return HeadScope(frozenset(head), frozenset(layers), frozenset(tensors))


def ov_names(ov_model: Any, scope: HeadScope) -> list[str]:
    """The OpenVINO operations that implement the ONNX nodes of ``scope``, by friendly name.

    OpenVINO's ONNX frontend names the last operation of a node's decomposition after the node
    (a Conv becomes ``<name>/WithoutBiases`` and an Add ``<name>``), or after its output tensor
    where that is a graph output (the final Concat becomes ``output0``), and fuses some pairs
    (Sigmoid and Mul into Swish, named after the Mul). An operation is in the scope when its name
    is a scope node's name or lies under it, or when one of its output tensors is a scope node's.
    """
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in _STRUCTURAL_OV_OPS:
            continue
        name = op.get_friendly_name()
        tensors = {t for out in op.outputs() for t in out.get_names()}
        if name in scope.nodes or name.rsplit("/", 1)[0] in scope.nodes or tensors & scope.tensors:
            found.append(name)
    return found


def _input_spec(src: Path, imgsz: int | None, threads: int) -> tuple[CalibrationInput, Model]:
    """The fp32 reference model through ONNX Runtime, and the input its calibration tensors take."""
    try:
        model = load_model(src, imgsz=imgsz, threads=threads, device="cpu")
    except EdgesegError as exc:
        raise ExportError(f"quantise for OpenVINO: {exc}") from None
    return CalibrationInput(model.backend.info.inputs[0].name, model.spec.input_size, model.spec.normalization), model


class _Tensors:
    """Calibration images as NNCF reads them: decoded and preprocessed on each pass, so that
    300 images at 640 (1.5 GB of float tensors) are never held at once."""

    def __init__(self, images: Sequence[Path], spec: CalibrationInput) -> None:
        self.images = list(images)
        self._reader = PreprocessedReader(self.images, spec, progress=False)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Any:
        for path in self.images:
            image, reason = decode_image(path)
            if image is None:  # checked by calibration_images; a file changed since is skipped
                log.warning("calibration: skipping %s: %s", path, reason)
                continue
            yield self._reader.tensor(image)


def _quantize(src: Path, spec: CalibrationInput, images: Sequence[Path], scope: HeadScope, preset: str) -> Any:
    import nncf  # noqa: PLC0415 - heavy; only this path needs it
    import openvino as ov  # noqa: PLC0415

    ov_model = ov.convert_model(str(src))
    ov_model.reshape({ov_model.inputs[0]: [1, 3, *spec.size]})
    names = ov_names(ov_model, scope)
    if not names:
        raise ExportError(f"model {src}: none of the {len(scope.nodes)} decode-head nodes is in OpenVINO's graph; "
                          f"refusing to quantise it without its head in float")
    log.info("OpenVINO INT8: %d operations kept in float (%d head nodes, %d output layers)", len(names),
             len(scope.decode), len(scope.output_layers))
    tensors = _Tensors(images, spec)
    quantized = nncf.quantize(
        ov_model,
        nncf.Dataset(tensors),
        preset=nncf.QuantizationPreset(preset),
        subset_size=len(tensors),
        ignored_scope=nncf.IgnoredScope(names=names),
    )
    for key, value in _metadata(src, spec, len(tensors), len(names), preset).items():
        quantized.set_rt_info(value, [RT_INFO_SECTION, key])
    return quantized, len(names)


def _metadata(src: Path, spec: CalibrationInput, images: int, ignored: int, preset: str) -> dict[str, str]:
    """The rt_info entries the IR carries besides the ONNX metadata: its size and how it was made."""
    return {
        "imgsz": json.dumps(list(spec.size)),
        QUANTIZATION_KEY: json.dumps({"tool": "nncf", "preset": preset, "calibration_images": images,
                                      "float_operations": ignored, "source": src.name}),
    }


def _save(model: Any, out: Path) -> None:
    import openvino as ov  # noqa: PLC0415

    ov.save_model(model, str(out), compress_to_fp16=False)


def _load_ir(path: Path, size: tuple[int, int], threads: int, precision: str) -> Model:
    """The IR through the runtime's OpenVINO backend, as ``edgeseg`` would run it."""
    from edgeseg.backends.openvino import OpenVinoBackend  # noqa: PLC0415 - imports openvino

    backend = OpenVinoBackend(path, device="CPU", precision=precision, threads=threads, cache_dir=None)
    try:
        spec = replace(spec_from_network(backend.info, path.stem, max(size)), max_batch=backend.max_batch)
    except Exception:
        backend.close()
        raise
    return Model(spec, backend)


def gate(reference: Model, candidate: Model, images: Sequence[tuple[str, ImageArray]], file: str) -> SelfTestResult:
    """The candidate's decoded instances on ``images`` judged against the reference's (int8 bounds)."""
    settings = SettingsRecord.default()
    expected = decode_instances(reference, images, settings.postprocess())
    found = decode_instances(candidate, images, settings.postprocess())
    figures = compare(expected, found, settings.score_floor, settings.match_iou)
    return judge(file, max(candidate.spec.input_size), GATE_FORM, figures)


def gate_images(reference: Model, candidates: Sequence[Path], count: int = GATE_IMAGES) -> list[tuple[str, ImageArray]]:
    """``count`` images of ``candidates`` with most fp32 instances (the self-test's choice)."""
    from export.selftest_reference import choose_images  # noqa: PLC0415 - imports cv2 for JPEG only

    out = []
    for path in choose_images(reference, candidates, count):
        image, _ = decode_image(path)
        if image is not None:
            out.append((str(path), image))
    return out


def save_ir(src: Path, out: Path, size: tuple[int, int]) -> None:
    """The fp32 ONNX ``src`` as an fp32 OpenVINO IR ``out`` (.xml, its .bin beside it), its input
    fixed at ``size``: the IR form of a bundle's fp32 engine. Weights stay fp32 (no fp16
    compression): the device's inference precision decides what it computes in (bf16 on a CPU
    with bf16), and the ONNX metadata (class names, normalisation) is carried into the IR."""
    import openvino as ov  # noqa: PLC0415

    ov_model = ov.convert_model(str(src))
    ov_model.reshape({ov_model.inputs[0]: [1, 3, *size]})
    ov_model.set_rt_info(json.dumps(list(size)), [RT_INFO_SECTION, "imgsz"])
    _save(ov_model, Path(out))


def quantize_openvino(
    src: Path,
    out: Path,
    images: Path | Sequence[Path],
    imgsz: int | None = None,
    count: int = DEFAULT_COUNT,
    threads: int = 0,
    preset: str = "performance",
    precision: str = "auto",
) -> QuantResult:
    """Quantise ``src`` into the IR ``out`` (.xml, with its .bin) calibrated on ``images``; gated.

    ``imgsz`` fixes a dynamic model's input size (one IR per resolution); ``precision`` is the
    OpenVINO inference precision the gate runs the IR's float parts at ("auto": the device's
    default, as the runtime runs it). ``images`` is a folder (``count`` images of it) or the
    images themselves (``edgeseg export`` passes those its ONNX Runtime int8 forms used).
    Raises ExportError (one line) when the head cannot be found or the IR falls outside the int8
    bounds; then nothing is written at ``out``.
    """
    src, out = Path(src), Path(out)
    if out.suffix.lower() != ".xml":
        raise ExportError(f"output {out}: expected an OpenVINO IR path ending in .xml")
    t0 = time.perf_counter()
    scope = find_head(read_onnx(src), f"model {src}")
    paths = calibration_images(images, count) if isinstance(images, Path) else list(images)
    spec, reference = _input_spec(src, imgsz, threads)
    try:
        chosen = gate_images(reference, paths)
        quantized, ignored = _quantize(src, spec, paths, scope, preset)
        with tempfile.TemporaryDirectory(prefix="edgeseg-ov-") as work:
            staged = Path(work) / out.name
            _save(quantized, staged)
            candidate = _load_ir(staged, spec.size, threads, precision)
            try:
                verdict = gate(reference, candidate, chosen, out.name)
            finally:
                candidate.close()
            if not verdict.passed:
                raise ExportError(f"OpenVINO INT8 of {src.name} refused: {verdict.one_line()}")
            out.parent.mkdir(parents=True, exist_ok=True)
            for part in (staged, staged.with_suffix(".bin")):
                shutil.move(str(part), str(out.parent / part.name))
    finally:
        reference.close()
    return QuantResult(out, spec.size, len(paths), ignored, verdict, time.perf_counter() - t0)


def _quiet_nncf() -> None:
    """NNCF logs every operation it leaves unquantised at INFO (hundreds of lines); keep warnings."""
    try:
        import nncf  # noqa: PLC0415
    except ImportError:
        return
    nncf.set_log_level(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.openvino_quant", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="fp32 ONNX (static, or dynamic with --imgsz)")
    p.add_argument("out", type=Path, help="OpenVINO IR to write (.xml; the .bin goes beside it)")
    p.add_argument("--images", type=Path, required=True, help="folder of calibration images")
    p.add_argument("--imgsz", type=int, default=None, help="input size of a dynamic model (default: its metadata)")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help="calibration images (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="inference threads of the gate (0: all cores)")
    p.add_argument("--preset", choices=("performance", "mixed"), default="performance",
                   help="NNCF preset: performance = symmetric activations (default), mixed = asymmetric")
    p.add_argument("--precision", choices=("auto", "f32", "bf16"), default="auto",
                   help="precision the gate runs the IR's float parts at (default: the CPU's)")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_nncf()
    try:
        result = quantize_openvino(args.src, args.out, args.images, args.imgsz, args.count, args.threads,
                                   args.preset, args.precision)
    except (EdgesegError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    h, w = result.size
    print(f"wrote {result.path} ({w}x{h}, {result.images} calibration images, {result.ignored} operations in "
          f"float, {result.seconds:.0f} s); {result.gate.one_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
