"""Measure what the engine self-test should tolerate: every precision form against the fp32 reference.

The self-test (``edgeseg.bundle.selftest``) compares an engine's decoded instances with those of
the bundle's fp32 ONNX run by ONNX Runtime. Its tolerances must pass every correct engine and
refuse broken ones, so they are set from this table:

- the real yolov8n-seg (``../shared/realdata``) at 320 and 640: fp32 again (ORT with 1 thread
  instead of 2, ORT without graph optimisation, the dynamic-shape file instead of the static
  one), int8 Q/DQ (``quantize_for_tensorrt``, the file TensorRT builds INT8 engines from, run
  by ORT on the CPU), int8 QOperator (``quantize_for_cpu``) and, at 320, the dynamically
  quantised ``yolov8n-seg_int8.onnx``; calibration on the 80 COCO train2017 images;
- the demo bundle (engines/demo): its fp32, int8-qdq and int8-qoperator ONNX at 320;
- broken engines, which must fail: one convolution's weights noised, one int8 activation scale
  a tenth of the calibrated one, and the colour channels swapped (a preprocessing mismatch).

Each is compared on the self-test images the export would choose (4, from the calibration set)
and, for stability, on 32 evaluation images (val2017, or synthetic val images for the demo),
with the self-test's own settings, matching and figures. Prints one Markdown table.

    .venv/bin/python benchmarks/selftest_tolerances.py [--work out/selftest] [--threads 2]
    .venv/bin/python benchmarks/selftest_tolerances.py --write-demo-reference   # engines/demo

``--write-demo-reference`` (re)writes engines/demo's self-test reference from 16 synthetic
training images (the demo's calibration stream) and changes nothing else in the bundle.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeseg.backends.base import Backend
from edgeseg.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.bundle.manifest import load_manifest
from edgeseg.bundle.selftest import (
    TOLERANCES,
    Figures,
    InstanceRecord,
    SettingsRecord,
    compare,
    decode_instances,
    read_images,
    shortfalls,
)
from edgeseg.model import Model, load_model, spec_from_network
from edgeseg.structures import ImageArray
from export import onnx_prep
from export.calibration import calibration_images
from export.data.synthetic import generate_image
from export.quantize import quantize_for_cpu, quantize_for_tensorrt
from export.selftest_reference import add_selftest_reference, choose_images, selftest_image_bytes

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
MODEL_DYNAMIC = REALDATA / "models" / "yolov8n-seg-dynamic-fp32-reconstructed.onnx"
MODEL_INT8_320 = REALDATA / "models" / "yolov8n-seg_int8.onnx"
CALIBRATION = REALDATA / "coco_train2017_subset" / "images"
VAL_IMAGES = REALDATA / "coco_val2017_subset" / "images"
DEMO = ROOT / "engines" / "demo"
#: The demo's calibration stream: synthetic train images (stream 0, seed 0), 64 spread over 1000.
DEMO_SEED, DEMO_TRAIN_IMAGES, DEMO_CALIBRATION = 0, 1000, 64
#: Evaluation images per model, for figures steadier than four images give.
EVAL_IMAGES = 32
#: Noise on the broken model's weights, relative to that weight tensor's standard deviation.
BROKEN_NOISE = 1.0
#: The broken int8 model's activation scale, relative to the calibrated one.
BROKEN_SCALE = 0.1

Images = Sequence[tuple[str, ImageArray]]
Loader = Callable[[], Model]


@dataclass(frozen=True)
class Variant:
    form: str  # the TOLERANCES row it is judged by
    model: str
    what: str
    size: int
    load: Loader
    broken: bool = False


@dataclass(frozen=True)
class Row:
    variant: Variant
    images: str
    figures: Figures


class _PlainOrt(Backend):
    """ONNX Runtime with graph optimisation off: the unfused graph, another kernel order."""

    def __init__(self, path: Path, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.info = OnnxRuntimeBackend(path, threads=1, device="cpu").info
        self._input = self.info.inputs[0].name

    def infer(self, inputs: np.ndarray) -> list[np.ndarray]:  # type: ignore[override]
        return list(self._session.run(None, {self._input: inputs}))


def ort_model(path: Path, size: int, threads: int) -> Loader:
    return lambda: load_model(path, imgsz=size, threads=threads, device="cpu")


def plain_model(path: Path, size: int, threads: int) -> Loader:
    def load() -> Model:
        backend = _PlainOrt(path, threads)
        return Model(spec_from_network(backend.info, path.stem, size), backend)
    return load


def swapped_channels(path: Path, size: int, threads: int) -> Loader:
    def load() -> Model:
        model = load_model(path, imgsz=size, threads=threads, device="cpu")
        norm = replace(model.spec.normalization, rgb=not model.spec.normalization.rgb)
        return Model(replace(model.spec, normalization=norm), model.backend)
    return load


def noised_weights(fp32: Path, out: Path) -> Path:
    """``fp32`` with the weights of its middle convolution noised (a corrupted build)."""
    proto = onnx.load(str(fp32))
    inits = {t.name: t for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    tensor = inits[convs[len(convs) // 2].input[1]]
    w = onnx.numpy_helper.to_array(tensor)
    noised = w + np.random.default_rng(0).normal(0, BROKEN_NOISE * float(w.std()), w.shape).astype(w.dtype)
    tensor.CopyFrom(onnx.numpy_helper.from_array(noised, tensor.name))
    onnx.save(proto, str(out))
    return out


def fp16_emulated(fp32: Path, out: Path) -> Path:
    """``fp32`` with fp16 numerics where an fp16 engine has them: every Conv / ConvTranspose weight
    and bias rounded to fp16, and its input and output rounded to fp16 (Cast there and back);
    accumulation stays fp32, as in TensorRT's fp16 kernels. TF32 (TensorRT's fp32 on Ampere and
    later) rounds the same inputs to the same 10-bit mantissa, so this stands for both."""
    proto = onnx.load(str(fp32))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            nodes.append(node)
            continue
        for name in node.input[1:]:
            if name in inits:
                t = inits[name]
                w = onnx.numpy_helper.to_array(t)
                t.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float16).astype(np.float32), name))
        x = node.input[0]
        nodes += [onnx.helper.make_node("Cast", [x], [f"{x}__h_{node.name}"], to=onnx.TensorProto.FLOAT16),
                  onnx.helper.make_node("Cast", [f"{x}__h_{node.name}"], [f"{x}__r_{node.name}"],
                                        to=onnx.TensorProto.FLOAT)]
        node.input[0] = f"{x}__r_{node.name}"
        y = node.output[0]
        node.output[0] = f"{y}__f_{node.name}"
        nodes += [node,
                  onnx.helper.make_node("Cast", [node.output[0]], [f"{y}__h"], to=onnx.TensorProto.FLOAT16),
                  onnx.helper.make_node("Cast", [f"{y}__h"], [y], to=onnx.TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(proto, str(out))
    return out


def wrong_scale(qdq: Path, out: Path) -> Path:
    """``qdq`` with the activation scale of its middle quantised convolution input a tenth of the
    calibrated one (a calibration that went wrong: the activation clips)."""
    proto = onnx.load(str(qdq))
    inits = {t.name: t for t in proto.graph.initializer}
    quants = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    tensor = inits[quants[len(quants) // 2].input[1]]
    scale = onnx.numpy_helper.to_array(tensor) * np.float32(BROKEN_SCALE)
    tensor.CopyFrom(onnx.numpy_helper.from_array(scale.astype(np.float32), tensor.name))
    onnx.save(proto, str(out))
    return out


def stored(paths: Sequence[Path], folder: Path) -> Images:
    """Images as a bundle stores them (re-encoded, at most 640), read back."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for p in paths:
        (folder / p.name).write_bytes(selftest_image_bytes(p))
        names.append(p.name)
    return read_images(folder, names)


def spread(paths: Sequence[Path], n: int) -> list[Path]:
    picks = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [paths[i] for i in sorted(set(picks.tolist()))]


def decode(load: Loader, images: Images) -> dict[str, list[InstanceRecord]]:
    model = load()
    try:
        return decode_instances(model, images, SettingsRecord.default().postprocess())
    finally:
        model.close()


def measure(reference: Loader, variants: Sequence[Variant], sets: dict[str, Images]) -> list[Row]:
    rows = []
    s = SettingsRecord.default()
    for set_name, images in sets.items():
        ref = decode(reference, images)
        for v in variants:
            figures = compare(ref, decode(v.load, images), s.score_floor, s.match_iou)
            rows.append(Row(v, set_name, figures))
            print(f"  {v.model} {v.size} {v.what} on {set_name}: {figures}", file=sys.stderr, flush=True)
    return rows


def realdata_rows(work: Path, threads: int, calibration_limit: int) -> list[Row]:
    source = onnx_prep.load_source(MODEL_DYNAMIC)
    calib = calibration_images(CALIBRATION, calibration_limit or None)
    val = spread(calibration_images(VAL_IMAGES), EVAL_IMAGES)
    rows: list[Row] = []
    selftest_images: Images | None = None
    for size in (640, 320):  # 640 first: the export chooses the self-test images at the largest size
        fp32 = work / f"yolov8n-seg-{size}-fp32.onnx"
        if not fp32.is_file():
            onnx_prep.save(onnx_prep.prepare_static(source, size), fp32)
        qdq, qop = work / f"yolov8n-seg-{size}-int8-qdq.onnx", work / f"yolov8n-seg-{size}-int8-qoperator.onnx"
        if not qdq.is_file():
            quantize_for_tensorrt(fp32, qdq, calib, progress=False)
        if not qop.is_file():
            quantize_for_cpu(fp32, qop, calib, progress=False)
        if selftest_images is None:
            model = load_model(fp32, threads=threads, device="cpu")
            try:
                chosen = choose_images(model, calib, 4)
            finally:
                model.close()
            selftest_images = stored(chosen, work / "selftest-images")
        broken_fp32 = noised_weights(fp32, work / f"broken-{size}-noised.onnx")
        broken_qdq = wrong_scale(qdq, work / f"broken-{size}-scale.onnx")
        name = "yolov8n-seg"
        variants = [
            Variant("fp32", name, "ORT 1 thread", size, ort_model(fp32, size, 1)),
            Variant("fp32", name, "ORT no graph optimisation", size, plain_model(fp32, size, threads)),
            Variant("fp32", name, "dynamic-shape file", size, ort_model(MODEL_DYNAMIC, size, threads)),
            Variant("fp16", name, "emulated: fp16 weights, Conv inputs and outputs", size,
                    ort_model(fp16_emulated(fp32, work / f"fp16-{size}.onnx"), size, threads)),
            Variant("int8-qdq", name, "quantize_for_tensorrt", size, ort_model(qdq, size, threads)),
            Variant("int8-qoperator", name, "quantize_for_cpu", size, ort_model(qop, size, threads)),
        ]
        if size == 320:
            variants.append(Variant("int8-qoperator", name, "realdata yolov8n-seg_int8.onnx (dynamic)", size,
                                    ort_model(MODEL_INT8_320, size, threads)))
        variants += [
            Variant("fp32", name, "BROKEN: middle conv weights noised", size, ort_model(broken_fp32, size, threads),
                    broken=True),
            Variant("int8-qdq", name, "BROKEN: one activation scale x0.1", size, ort_model(broken_qdq, size, threads),
                    broken=True),
            Variant("fp32", name, "BROKEN: colour channels swapped", size, swapped_channels(fp32, size, threads),
                    broken=True),
        ]
        sets = {"self-test 4": selftest_images, f"val {len(val)}": stored(val, work / "val-images")}
        rows += measure(ort_model(fp32, size, threads), variants, sets)
    return rows


def demo_candidates(folder: Path) -> list[Path]:
    """16 synthetic train images from the demo's calibration stream (every 4th of its 64)."""
    folder.mkdir(parents=True, exist_ok=True)
    picks = np.linspace(0, DEMO_TRAIN_IMAGES - 1, DEMO_CALIBRATION).round().astype(int)[::4]
    out = []
    for i in picks:
        p = folder / f"{int(i) + 1:06d}.jpg"
        if not p.is_file():
            p.write_bytes(generate_image(DEMO_SEED, int(i), 320, 0).encode())
        out.append(p)
    return out


def demo_rows(work: Path, threads: int) -> list[Row]:
    manifest = load_manifest(DEMO)
    files = {(e.precision, e.quantization): DEMO / e.file for e in manifest.engines}
    fp32, qdq, qop = files[("fp32", None)], files[("int8", "qdq-symmetric")], files[("int8", "qoperator")]
    if manifest.selftest is not None:
        selftest_images = read_images(DEMO, manifest.selftest.images)
    else:
        model = load_model(fp32, threads=threads, device="cpu")
        try:
            selftest_images = stored(choose_images(model, demo_candidates(work / "demo-candidates"), 4),
                                     work / "demo-selftest")
        finally:
            model.close()
    val_folder = work / "demo-val"
    val_folder.mkdir(parents=True, exist_ok=True)
    for i in range(EVAL_IMAGES):
        p = val_folder / f"{i + 1:06d}.jpg"
        if not p.is_file():
            p.write_bytes(generate_image(DEMO_SEED, i, 320, 1).encode())
    val = read_images(val_folder, [f"{i + 1:06d}.jpg" for i in range(EVAL_IMAGES)])
    variants = [
        Variant("fp32", "demo", "ORT 1 thread", 320, ort_model(fp32, 320, 1)),
        Variant("fp32", "demo", "ORT no graph optimisation", 320, plain_model(fp32, 320, threads)),
        Variant("fp16", "demo", "emulated: fp16 weights, Conv inputs and outputs", 320,
                ort_model(fp16_emulated(fp32, work / "demo-fp16.onnx"), 320, threads)),
        Variant("int8-qdq", "demo", "bundle's Q/DQ file", 320, ort_model(qdq, 320, threads)),
        Variant("int8-qoperator", "demo", "bundle's QOperator file", 320, ort_model(qop, 320, threads)),
        Variant("fp32", "demo", "BROKEN: middle conv weights noised", 320,
                ort_model(noised_weights(fp32, work / "demo-broken-noised.onnx"), 320, threads), broken=True),
        Variant("int8-qdq", "demo", "BROKEN: one activation scale x0.1", 320,
                ort_model(wrong_scale(qdq, work / "demo-broken-scale.onnx"), 320, threads), broken=True),
        Variant("fp32", "demo", "BROKEN: colour channels swapped", 320, swapped_channels(fp32, 320, threads),
                broken=True),
    ]
    return measure(ort_model(fp32, 320, threads), variants, {"self-test 4": selftest_images, f"val {len(val)}": val})


def verdict(row: Row) -> str:
    """The current tolerances' verdict by the row of the form the engine claims to be; for a
    broken fp32 engine also by the loosest (int8) row, to show what int8's noise would hide."""
    missed = shortfalls(row.figures, TOLERANCES[row.variant.form])
    text = "fails" if missed else "passes"
    if row.variant.broken and not row.variant.form.startswith("int8"):
        text += " (int8 row: " + ("fails" if shortfalls(row.figures, TOLERANCES["int8-qoperator"]) else "passes") + ")"
    return text


def table(rows: Sequence[Row]) -> str:
    head = ("| form | model | what | res | images | ref inst. | recall | precision | box IoU | mask IoU "
            "| score diff mean / max | verdict |")
    lines = [head, "| " + " | ".join(["---"] * 12) + " |"]
    for r in rows:
        f, v = r.figures, r.variant
        lines.append(
            f"| {v.form} | {v.model} | {v.what} | {v.size} | {r.images} | {f.reference_instances} | {f.recall:.3f} "
            f"| {f.precision:.3f} | {f.box_iou:.3f} | {f.mask_iou:.3f} | {f.score_diff:.3f} / {f.score_diff_max:.3f} "
            f"| {verdict(r)} |"
        )
    return "\n".join(lines)


def worst(rows: Sequence[Row]) -> str:
    """Per form, the worst figure over every correct engine measured and the best over the broken
    ones judged by that row, beside the tolerance in force."""
    lines = ["| form | recall | precision | box IoU | mask IoU | score diff mean |",
             "| --- | --- | --- | --- | --- | --- |"]
    for form, t in TOLERANCES.items():
        good = [r.figures for r in rows if r.variant.form == form and not r.variant.broken]
        bad = [r.figures for r in rows if r.variant.form == form and r.variant.broken]
        if good:
            lines.append(f"| {form}: worst correct | {min(f.recall for f in good):.3f} "
                         f"| {min(f.precision for f in good):.3f} | {min(f.box_iou for f in good):.3f} "
                         f"| {min(f.mask_iou for f in good):.3f} | {max(f.score_diff for f in good):.3f} |")
        if bad:
            lines.append(f"| {form}: best broken | {max(f.recall for f in bad):.3f} "
                         f"| {max(f.precision for f in bad):.3f} | {max(f.box_iou for f in bad):.3f} "
                         f"| {max(f.mask_iou for f in bad):.3f} | {min(f.score_diff for f in bad):.3f} |")
        lines.append(f"| **{form} tolerance** | >= {t.min_recall:.2f} | >= {t.min_precision:.2f} "
                     f"| >= {t.min_box_iou:.2f} | >= {t.min_mask_iou:.2f} | <= {t.max_score_diff:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the quantised models (reused)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--calibration-limit", type=int, default=0, help="calibration images (0: all 80)")
    parser.add_argument("--skip-realdata", action="store_true", help="the demo bundle only")
    parser.add_argument("--write-demo-reference", action="store_true",
                        help="(re)write engines/demo's self-test reference and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="edgeseg-selftest-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.write_demo_reference:
            manifest, refs = add_selftest_reference(DEMO, demo_candidates(work / "demo-candidates"),
                                                    threads=args.threads)
            for r in refs.results.values():
                print(r.one_line())
            print(f"wrote {DEMO}/{manifest.selftest.reference if manifest.selftest else '?'}")
            return 0
        rows = demo_rows(work, args.threads)
        if not args.skip_realdata:
            if not MODEL_DYNAMIC.is_file():
                print(f"real material missing: {MODEL_DYNAMIC} (expected ../shared/realdata)", file=sys.stderr)
                return 1
            rows = realdata_rows(work, args.threads, args.calibration_limit) + rows
    print(table(rows))
    print()
    print(worst(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
