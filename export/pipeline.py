"""``edgeseg export``: from an ONNX model to a flashable engine bundle.

    model.onnx ─► per resolution: pin shape ─► simplify + fold BN ─► check vs source ─► fp32.onnx
                                    │                                   ├─► Q/DQ int8.onnx (TensorRT form)
                                    │                                   └─► QOperator int8.onnx (CPU form)
                                    └─► TensorRT present: fp16 / int8 .engine from those ONNX files
    --batch N: every ONNX form rebatched (symbolic batch, export.rebatch), plans profiled 1/N/N
    --openvino: per resolution an fp32 OpenVINO IR and (int8) an NNCF int8 IR with the decode head in
                float (export.openvino_quant, gated against the fp32 ONNX: refused, not shipped, when out)
    calibration images ─► selftest/: the fp32 ONNX's decoded instances per resolution; every
                          file above judged against them, a failing form not shipped
    every file ─► latency here (+ accuracy on a validation set) ─► manifest.json + report.md

Everything that can be refused (model, resolutions, precisions, calibration and validation
folders) is checked before the first long step; the bundle is staged and only moved into place
once complete (BundleWriter).
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from tqdm import tqdm

from edgeseg.backends.base import Backend
from edgeseg.bundle.manifest import (
    MAX_ENGINE_BATCH,
    BuilderRecord,
    EngineRecord,
    Manifest,
    ModelRecord,
    NormalizationRecord,
    Quantization,
    ir_weights,
)
from edgeseg.bundle.selftest import SELFTEST_IMAGES, Form, form_of
from edgeseg.bundle.verify import sha256_file
from edgeseg.errors import ExportError
from edgeseg.model import MAX_INPUT_SIZE, MIN_INPUT_SIZE, Model, ModelSpec, bundle_metadata, spec_from_network
from export import onnx_prep
from export.bundle_writer import BundleWriter
from export.measure import measure_accuracy, measure_latency
from export.report import write_report
from export.selftest_reference import FormToCheck, References, write_references

log = logging.getLogger(__name__)

ExportPrecision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[ExportPrecision, ...] = ("fp32", "fp16", "int8")
#: Resolutions exported from a dynamic model when none are requested (the picker's ladder).
DEFAULT_RESOLUTIONS = (320, 416, 512, 640)
DEFAULT_PRECISIONS: tuple[ExportPrecision, ...] = ("fp16", "int8")


@dataclass(frozen=True)
class ExportOptions:
    """What to export; mirrors the command's flags and the recipe file's keys."""

    model: Path
    out: Path
    resolutions: tuple[int, ...] = ()
    precisions: tuple[ExportPrecision, ...] = DEFAULT_PRECISIONS
    calibration: Path | None = None
    calibration_limit: int = 0
    val_images: Path | None = None
    val_annotations: Path | None = None
    workspace_mib: int = 1024
    threads: int = 0
    latency_runs: int = 20
    progress: bool = True
    #: Images of the engine self-test's reference (from --calibration, else the validation
    #: images); 0 writes none (the runtime then warns that the engines serve untested).
    selftest_images: int = SELFTEST_IMAGES
    #: Most frames one inference call takes (--batch): above 1 the ONNX files get a symbolic
    #: batch dimension and TensorRT plans the profile min 1 / opt N / max N.
    batch: int = 1
    #: Add OpenVINO IR engines (--openvino): fp32 per resolution, and NNCF int8 with the decode
    #: head in float where int8 is asked. Batch 1 (OpenVINO runs several cameras as streams).
    openvino: bool = False


@dataclass
class ExportResult:
    manifest: Manifest
    bundle: Path
    report: Path
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """Validated inputs: what will be built, decided before any long step runs."""

    source: onnx_prep.SourceModel
    sizes: tuple[int, ...]
    precisions: tuple[ExportPrecision, ...]
    calibration_images: tuple[Path, ...]
    #: Where the self-test images are chosen from (calibration, else validation images).
    selftest_candidates: tuple[Path, ...]
    tensorrt: bool
    notes: tuple[str, ...]
    #: OpenVINO's version where --openvino asked for its engines (checked importable), else None.
    openvino: str | None = None


def parse_precisions(text: str | Sequence[str]) -> tuple[ExportPrecision, ...]:
    items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise ExportError(f"precision {','.join(unknown) or '(none)'}: expected a list of {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in items)


def parse_resolutions(text: str | Sequence[int]) -> tuple[int, ...]:
    try:
        items = [int(r) for r in (text.split(",") if isinstance(text, str) else text) if str(r).strip()]
    except ValueError:
        raise ExportError(f"resolutions {text!r}: expected comma-separated integers such as 320,416,512,640") from None
    return tuple(sorted(set(items)))


def _plan(opts: ExportOptions) -> _Plan:
    from edgeseg.backends.trt_build import tensorrt_available  # noqa: PLC0415 - keeps tensorrt optional

    source = onnx_prep.load_source(opts.model)
    spec = source.spec
    notes: list[str] = []
    if not 1 <= opts.batch <= MAX_ENGINE_BATCH:
        raise ExportError(f"batch {opts.batch}: expected 1 to {MAX_ENGINE_BATCH}")
    bad = [r for r in opts.resolutions if not MIN_INPUT_SIZE <= r <= MAX_INPUT_SIZE or r % spec.stride]
    if bad:
        raise ExportError(
            f"resolution {bad[0]}: expected a multiple of {spec.stride} from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"
        )
    if source.dynamic:
        sizes = opts.resolutions or DEFAULT_RESOLUTIONS
    else:
        own = max(spec.input_size)
        if opts.resolutions and set(opts.resolutions) != {own}:
            notes.append(f"{opts.model.name} has a static {own}x{own} input: it yields its one resolution, {own} "
                         f"(requested {','.join(map(str, opts.resolutions))})")
        sizes = (own,)
    precisions = opts.precisions
    tensorrt = tensorrt_available()
    if not tensorrt:
        forms = "fp32" + (", int8 Q/DQ and int8 QOperator" if "int8" in precisions else "")
        notes.append(f"TensorRT not found: built an ONNX Runtime bundle ({forms}); "
                     "build TensorRT engines on the device from its ONNX files")
        if "fp16" in precisions:
            notes.append("fp16 needs TensorRT; the ONNX Runtime bundle carries fp32 instead")
    from export.calibration import calibration_images  # noqa: PLC0415 - pulls onnxruntime.quantization

    images: tuple[Path, ...] = ()
    if "int8" in precisions and opts.calibration is None:
        raise ExportError("precision int8 needs --calibration DIR (images from the deployment, never evaluation)")
    if opts.calibration is not None:
        images = tuple(calibration_images(opts.calibration, opts.calibration_limit or None))
    if (opts.val_images is None) != (opts.val_annotations is None):
        raise ExportError("a validation set needs both --val-images DIR and --val-annotations COCO.json")
    if opts.val_images is not None and not opts.val_images.is_dir():
        raise ExportError(f"validation images folder not found: {opts.val_images}")
    if opts.val_annotations is not None and not opts.val_annotations.is_file():
        raise ExportError(f"validation annotations not found: {opts.val_annotations}")
    candidates: tuple[Path, ...] = ()
    if opts.selftest_images > 0:
        if images:
            candidates = images
        elif opts.val_images is not None:
            candidates = tuple(calibration_images(opts.val_images))
        else:
            notes.append("no --calibration or validation images: the bundle has no self-test reference, "
                         "its engines will serve untested")
    openvino = _openvino_version("int8" in precisions) if opts.openvino else None
    return _Plan(source, tuple(sizes), precisions, images, candidates, tensorrt, tuple(notes), openvino)


def _openvino_version(int8: bool) -> str:
    """OpenVINO's version for --openvino, or a one-line ExportError naming what is missing."""
    try:
        import openvino  # noqa: PLC0415 - only --openvino needs it

        if int8:
            import nncf  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ExportError(f"--openvino needs {exc.name or 'openvino'} (pip install 'edgeseg[openvino]' nncf)") from None
    return str(openvino.__version__).split("-")[0]


def _model_record(spec: ModelSpec, source: Path) -> ModelRecord:
    n = spec.normalization
    return ModelRecord(
        family=spec.family,
        class_names=list(spec.class_names),
        num_masks=spec.num_masks,
        stride=spec.stride,
        normalization=NormalizationRecord(scale=n.scale, mean=n.mean, std=n.std, rgb=n.rgb, pad_value=n.pad_value),
        source=str(source),
        source_sha256=sha256_file(source),
    )


def _parameters(proto: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT))


@dataclass(frozen=True)
class _Built:
    """One file written to the staging directory, not yet measured."""

    file: str
    size: int
    precision: ExportPrecision
    builder: BuilderRecord
    quantization: Quantization | None = None
    max_batch: int = 1


class _Exporter:
    def __init__(self, opts: ExportOptions, plan: _Plan, writer: BundleWriter):
        self.opts, self.plan, self.writer = opts, plan, writer
        self.name = opts.out.name
        self.ort_builder = BuilderRecord(runtime="onnxruntime", version=_ort_version())
        self.notes: list[str] = list(plan.notes)

    def _file(self, size: int, precision: str, suffix: str, tag: str = "") -> str:
        return f"{self.name}-{size}-{precision}{'-' + tag if tag else ''}{suffix}"

    def build_size(self, size: int) -> list[_Built]:
        """Every file of one resolution: ONNX forms always, TensorRT engines where present."""
        from export import quantize  # noqa: PLC0415

        src = self.plan.source
        proto = onnx_prep.prepare_static(src, size)
        diff = onnx_prep.check_against_source(src, proto, size)
        log.info("%d: simplified, BN folded, outputs within %.1e of the source", size, diff)
        fp32 = self._file(size, "fp32", ".onnx")
        onnx_prep.save(proto, self.writer.path(fp32))
        built = [_Built(fp32, size, "fp32", self.ort_builder)]
        qdq: str | None = None
        if "int8" in self.plan.precisions:
            images = list(self.plan.calibration_images)
            qdq = self._file(size, "int8", ".onnx", "qdq")
            quantize.quantize_for_tensorrt(self.writer.path(fp32), self.writer.path(qdq), images)
            cpu = self._file(size, "int8", ".onnx", "qoperator")
            quantize.quantize_for_cpu(self.writer.path(fp32), self.writer.path(cpu), images)
            built += [
                _Built(qdq, size, "int8", self.ort_builder, "qdq-symmetric"),
                _Built(cpu, size, "int8", self.ort_builder, "qoperator"),
            ]
        ov = self._openvino(size, fp32) if self.plan.openvino is not None else []
        if self.opts.batch > 1:
            self._rebatch([b.file for b in built])
            built = [replace(b, max_batch=self.opts.batch) for b in built]
        built += ov
        if self.plan.tensorrt:
            built += self._tensorrt(size, fp32, qdq)
        return built

    def _openvino(self, size: int, fp32: str) -> list[_Built]:
        """The OpenVINO IR forms of one resolution, from its static fp32 ONNX (before rebatching).

        fp32: the network as it is (the device computes it at its default precision, bf16 on a
        CPU with bf16). int8: NNCF with the decode head in float, calibrated on the export's
        calibration images through the runtime's preprocessing and gated against the fp32 ONNX
        on decoded instances; a form outside the bound is refused in one line (a note) and not
        written, and the bundle ships without it.
        """
        from export import openvino_quant  # noqa: PLC0415 - imports openvino, nncf

        assert self.plan.openvino is not None
        builder = BuilderRecord(runtime="openvino", version=self.plan.openvino)
        ir = self._file(size, "fp32", ".xml")
        openvino_quant.save_ir(self.writer.path(fp32), self.writer.path(ir), (size, size))
        out = [_Built(ir, size, "fp32", builder)]
        if "int8" in self.plan.precisions:
            int8 = self._file(size, "int8", ".xml", "nncf")
            try:
                result = openvino_quant.quantize_openvino(self.writer.path(fp32), self.writer.path(int8),
                                                          list(self.plan.calibration_images), threads=self.opts.threads)
            except ExportError as exc:
                self.notes.append(f"{exc}; not shipped")
                log.warning("%s; not shipped", exc)
            else:
                log.info("%s: %s", int8, result.gate.one_line())
                out.append(_Built(int8, size, "int8", builder, "nncf-int8"))
        return out

    def _rebatch(self, files: list[str]) -> None:
        """Give every ONNX form of one resolution a symbolic batch dimension, in place.

        After quantisation (which wants static shapes) and before the TensorRT builds (which
        profile the batch): each form is rewritten and checked at batches 1, 2, 4 against itself
        at batch 1 (``export.rebatch``), so a form that would mix frames stops the export.
        """
        from export.rebatch import rebatch_proto  # noqa: PLC0415

        for file in files:
            path = self.writer.path(file)
            proto, count, worst = rebatch_proto(onnx.load(str(path)), file)
            onnx_prep.save(proto, path)
            log.info("%s: any batch (%d Reshape target(s) rewritten; frames within %.1e of batch 1)", file, count,
                     worst)

    def _tensorrt(self, size: int, fp32: str, qdq: str | None) -> list[_Built]:
        import tensorrt  # noqa: PLC0415 - present: _plan checked

        from edgeseg.backends.trt_build import build_engine  # noqa: PLC0415
        from edgeseg.backends.trt_plan import TrtVersion, build_decisions  # noqa: PLC0415

        version = TrtVersion.parse(str(tensorrt.__version__))
        out: list[_Built] = []
        cache = self.writer.staging.parent / f".{self.name}.timing-cache"
        for precision in self.plan.precisions:
            onnx_file = qdq if precision == "int8" else fp32
            if onnx_file is None:
                continue
            if build_decisions(version, precision).requires_fp16_onnx:
                note = f"TensorRT {version} has no FP16 builder flag; fp16 engines need an FP16 ONNX: not built"
                if note not in self.notes:
                    self.notes.append(note)
                continue
            engine = self._file(size, precision, ".engine")
            record = build_engine(self.writer.path(onnx_file), self.writer.path(engine), precision,
                                  workspace_mib=self.opts.workspace_mib, timing_cache=cache,
                                  resolution=(size, size), max_batch=self.opts.batch)
            out.append(_Built(engine, size, precision, record, "qdq-symmetric" if precision == "int8" else None,
                              self.opts.batch))
        return out

    def load(self, b: _Built, meta: dict[str, str]) -> Model:
        path = self.writer.path(b.file)
        backend: Backend
        if b.builder.runtime == "tensorrt":
            from edgeseg.backends.tensorrt import TensorRTBackend  # noqa: PLC0415

            backend = TensorRTBackend(path, resolution=(b.size, b.size), metadata=meta)
        elif b.builder.runtime == "openvino":
            from edgeseg.backends.openvino import OpenVinoBackend  # noqa: PLC0415

            # As the runtime serves it: the CPU's default precision (bf16 where it has bf16).
            backend = OpenVinoBackend(path, device="CPU", precision="auto", threads=self.opts.threads, cache_dir=None)
        else:
            from edgeseg.backends.onnxruntime import OnnxRuntimeBackend  # noqa: PLC0415

            backend = OnnxRuntimeBackend(path, threads=self.opts.threads)
        backend.info = replace(backend.info, metadata={**backend.info.metadata, **meta})
        return Model(spec_from_network(backend.info, self.name, b.size), backend)

    def selftest(self, built: list[_Built], meta: dict[str, str]) -> tuple[list[_Built], References | None]:
        """Stage the self-test reference and judge every built file against it.

        A failing form is not shipped (its file removed from the staging directory, its one-line
        figures in the notes); a failing fp32 ONNX, which made the reference, means the runtime
        is not deterministic here and stops the export.
        """
        if not self.plan.selftest_candidates:
            return built, None
        by_file = {b.file: b for b in built}
        fp32 = {b.size: b.file for b in built if b.precision == "fp32" and b.builder.runtime == "onnxruntime"}

        def load(file: str, size: int) -> Model:
            return self.load(by_file[file], meta)

        forms = [FormToCheck(b.file, b.size, _form(b)) for b in built]
        refs = write_references(self.writer, fp32, forms, load, self.plan.selftest_candidates,
                                f"onnxruntime {_ort_version()}", self.opts.selftest_images)
        bad = {r.engine: r for r in refs.failed}
        if any(f in fp32.values() for f in bad):
            raise ExportError("; ".join(r.one_line() for r in bad.values()) +
                              " (the fp32 ONNX made the reference: ONNX Runtime is not deterministic here)")
        for r in bad.values():
            self.writer.path(r.engine).unlink()
            if by_file[r.engine].builder.runtime == "openvino":
                self.writer.path(ir_weights(r.engine)).unlink()
            self.notes.append(f"{r.one_line()}; not shipped")
        return [b for b in built if b.file not in bad], refs

    def record(self, b: _Built, meta: dict[str, str]) -> EngineRecord:
        """Measure one built file and describe it for the manifest."""
        model = self.load(b, meta)
        try:
            latency = measure_latency(model.backend, b.size, self.opts.threads, self.opts.latency_runs)
            if b.builder.runtime == "openvino":  # "OpenVINO 2026.4.1 CPU bf16": the precision that ran
                where = f"{model.backend.info.provider} {platform.machine()}, {self.opts.threads or 'all'} threads"
                latency = latency.model_copy(update={"device": where})
            accuracy = None
            if self.opts.val_images is not None and self.opts.val_annotations is not None:
                accuracy = measure_accuracy(model, self.opts.val_images, self.opts.val_annotations)
        finally:
            model.close()
        sha, nbytes = self.writer.describe(b.file)
        return EngineRecord(
            file=b.file, sha256=sha, bytes=nbytes, resolution=(b.size, b.size), precision=b.precision,
            quantization=b.quantization, builder=b.builder, latency=latency, accuracy=accuracy,
            max_batch=b.max_batch,
        )


def _form(b: _Built) -> Form:
    """The self-test tolerance row of a built file. An fp32 IR is judged as fp16: the runtime
    serves it at the device's default precision, bf16 on a CPU with bf16 (f16 on a GPU), and
    judges it with the fp16 row there (``edgeseg.model.openvino_selftest_record``)."""
    if b.builder.runtime == "openvino" and b.precision == "fp32":
        return "fp16"
    return form_of(b.precision, b.quantization)


def _ort_version() -> str:
    import onnxruntime  # noqa: PLC0415

    return str(onnxruntime.__version__)


#: Torch checkpoints accepted as --model; they are exported to a dynamic ONNX first.
CHECKPOINT_SUFFIXES = (".pt", ".pth")


def export_bundle(opts: ExportOptions) -> ExportResult:
    """Build, measure and publish the bundle described by ``opts``."""
    if opts.model.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return _export_onnx(opts, opts.model)
    if not opts.model.is_file():
        raise ExportError(f"model file not found: {opts.model}")
    try:
        from export.torch_export import checkpoint_to_onnx  # noqa: PLC0415 - needs torch
    except ImportError as exc:
        raise ExportError(f"{opts.model}: a torch checkpoint needs torch ({exc.name} is missing)") from None
    with tempfile.TemporaryDirectory(prefix="edgeseg-export-") as tmp:
        onnx_path = checkpoint_to_onnx(opts.model, Path(tmp) / f"{opts.model.stem}.onnx", dynamic=True)
        log.info("%s: exported to a dynamic ONNX for the bundle", opts.model)
        return _export_onnx(opts, onnx_path)


def _export_onnx(opts: ExportOptions, onnx_model: Path) -> ExportResult:
    """The bundle from ``onnx_model``; the manifest names ``opts.model`` (ONNX or checkpoint) as source."""
    plan = _plan(replace(opts, model=onnx_model))
    for note in plan.notes:
        log.warning("%s", note)
    spec = plan.source.spec
    model_record = _model_record(spec, opts.model)
    meta = bundle_metadata(model_record)
    with BundleWriter(opts.out) as writer:
        exporter = _Exporter(opts, plan, writer)
        built: list[_Built] = []
        for size in tqdm(plan.sizes, desc="build", unit="resolution", disable=not opts.progress or None):
            built += exporter.build_size(size)
        built, refs = exporter.selftest(built, meta)
        records = [exporter.record(b, meta)
                   for b in tqdm(built, desc="measure", unit="file", disable=not opts.progress or None)]
        # An IR's .bin weights are hashed as extra files (the manifest refuses an IR without them).
        weights = {ir_weights(r.file): writer.describe(ir_weights(r.file))[0]
                   for r in records if r.runtime == "openvino"}
        manifest = Manifest(
            name=opts.out.name,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            model=model_record,
            engines=records,
            extra_files=weights,
        )
        report = write_report(manifest, writer.staging, exporter.notes, _parameters(plan.source.proto))
        docs = [report.name] + [p.name for p in writer.staging.glob("*.png")]
        extra = {**weights, **{name: writer.describe(name)[0] for name in docs}}
        if refs is not None:
            extra.update(refs.files)
        manifest = manifest.model_copy(update={"extra_files": extra, "selftest": refs.record if refs else None})
        bundle = writer.commit(manifest)
    return ExportResult(manifest, bundle, bundle / report.name, exporter.notes)

